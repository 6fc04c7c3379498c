"""The zoo ops' ONNX schemas: one per op, from its torch schema, under an op type no standard name has."""

import onnx
import pytest

from export.onnx_ops import OnnxExportError, arguments, check_op_type, op_type, translation_table
from zoo.ops.registry import zoo_ops


def test_every_zoo_op_has_a_schema_with_its_inputs_and_attributes():
    assert set(translation_table()) == {op.overload for op in zoo_ops().values()}  # registers every schema
    types = [op_type(name) for name in zoo_ops()]
    assert len(set(types)) == len(types)
    for name, op in zoo_ops().items():
        schema = onnx.defs.get_schema(op_type(name), op.version, "zoo")
        args = arguments(op)
        assert [p.name for p in schema.inputs] == [a.name for a in args if a.kind == "input"]
        assert set(schema.attributes) == {a.name for a in args if a.kind == "attribute"}
        assert len(schema.outputs) == len(op.overload._schema.returns)


def test_optional_tensors_and_size_arguments_are_inputs():
    translation_table()
    conv = onnx.defs.get_schema("CausalConv1d", 1, "zoo")
    bias = [p for p in conv.inputs if p.name == "bias"][0]
    assert bias.option == onnx.defs.OpSchema.FormalParameterOption.Optional
    dmc = onnx.defs.get_schema("DmcPrefillCache", 1, "zoo")
    assert "capacity" in [p.name for p in dmc.inputs] and set(dmc.attributes) == {"window"}
    scan = onnx.defs.get_schema("SsdChunkScan", 1, "zoo")
    assert set(scan.attributes) == {"chunk_size"}


@pytest.mark.parametrize("name", ["layer_normalization", "identity", "soft_max"])
def test_an_op_type_that_shadows_an_onnx_or_tensorrt_name_is_refused(name):
    with pytest.raises(OnnxExportError, match="collides"):
        check_op_type(name)
