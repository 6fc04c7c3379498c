"""Gradients of a zoo op by autograd through its reference, recomputed in the backward: the reference has
the op's signature and static shapes, so this is exact and a compiled backward traces it too (at the
reference's cost: for the MoE ops, N/K times the work of the grouped forward)."""

import torch


def register_reference_autograd(op, reference, n_tensors: int) -> None:
    """Make `op` (a torch.library custom op whose first `n_tensors` arguments are tensors and the rest
    configuration) differentiable by autograd through `reference`."""

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:n_tensors])
        ctx.config = inputs[n_tensors:]

    def backward(ctx, grad_output):
        inputs = [t.detach().requires_grad_(need) for t, need in zip(ctx.saved_tensors, ctx.needs_input_grad)]
        wanted = [t for t in inputs if t.requires_grad]
        with torch.enable_grad():
            grads = iter(torch.autograd.grad(reference(*inputs, *ctx.config), wanted, grad_output))
        return *(next(grads) if t.requires_grad else None for t in inputs), *(None for _ in ctx.config)

    op.register_autograd(backward, setup_context=setup_context)
