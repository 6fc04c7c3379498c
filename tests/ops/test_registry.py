"""The op registry finds every op in its own folder, with the reference that folder defines."""

from zoo.ops.registry import op_folders, zoo_ops


def test_every_op_is_filed_under_the_folder_that_defines_its_reference():
    ops = zoo_ops()
    assert {op.folder for op in ops.values()} == set(op_folders())  # every folder registers an op
    for name, op in ops.items():
        assert op.reference.__module__ == f"zoo.ops.{op.folder}.reference", name
        assert op.reference.__name__ == f"{name}_ref"
    # a folder whose reference imports another op's reference (to compose it) does not take that op over
    assert ops["gated_rms_norm"].folder == "gated_rms_norm" and ops["mamba2_decode_step"].folder == "mamba2_decode_step"
