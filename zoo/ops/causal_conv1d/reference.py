"""Mamba-2's depthwise causal conv1d with SiLU (docs/algorithms.md §2.1 step 2, §2.3), for prefill and
for one decode step.

Layout: x is channel-last, (b, L, dim), as the in_proj output it comes from; weight is (dim, K) (the
Conv1d weight without its middle axis), bias (dim,) or None. The conv window, the decode state, is
(b, dim, K): the last K raw (pre-conv) inputs, oldest first, zeros before the sequence start.
    y[t, c] = silu(bias[c] + sum_k weight[c, k] x[t - K + 1 + k, c])
Arithmetic is in fp32; y is returned in x's dtype, the window in the dtype of the inputs it holds.
"""

import torch
import torch.nn.functional as F


def causal_conv1d_ref(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """x (b, L, dim), rows right-padded to lengths (b,) -> y (b, L, dim) and each row's window after
    its last real position (b, dim, K)."""
    L, K = x.shape[1], weight.shape[1]
    padded = F.pad(x.float(), (0, 0, K - 1, 0))
    out = sum(padded[:, k : k + L] * weight[:, k].float() for k in range(K))
    if bias is not None:
        out = out + bias.float()
    # the window holds positions [length - K, length); in coordinates padded by K they start at length
    index = lengths[:, None] + torch.arange(K, device=x.device)
    window = F.pad(x, (0, 0, K, 0)).gather(1, index[..., None].expand(-1, -1, x.shape[2]))
    return F.silu(out).to(x.dtype), window.transpose(1, 2).contiguous()


def causal_conv1d_update_ref(
    window: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """window (b, dim, K), x (b, dim) the new column -> y (b, dim) and the window shifted left by one with
    x in its last column."""
    new_window = torch.cat([window[:, :, 1:], x[:, :, None].to(window.dtype)], dim=-1)
    out = (new_window.float() * weight.float()).sum(-1)
    if bias is not None:
        out = out + bias.float()
    return F.silu(out).to(x.dtype), new_window
