"""The causal conv1d and its decode step for CPU.

Prefill: the K shifted slices are accumulated in place into one fp32 buffer started from the bias
(addcmul_), then SiLU in place; channel-last throughout, so no transposes (a depthwise F.conv1d needs
channel-first copies in and out). Decode: the shifted window is written into one fresh tensor and the
K-tap dot is one vecdot.
"""

import torch
import torch.nn.functional as F


def causal_conv1d_cpu(x, weight, bias, lengths):
    b, L, dim = x.shape
    K = weight.shape[1]
    padded = F.pad(x, (0, 0, K, 0))  # padded by K, so the window gather below reads it too
    inputs = padded.float()
    weight = weight.float()
    out = x.new_zeros((b, L, dim), dtype=torch.float32) if bias is None else bias.float().expand(b, L, dim).clone()
    for k in range(K):
        out.addcmul_(inputs[:, k + 1 : k + 1 + L], weight[:, k])
    index = lengths[:, None] + torch.arange(K, device=x.device)
    window = padded.gather(1, index[..., None].expand(-1, -1, dim))
    return F.silu(out, inplace=True).to(x.dtype), window.transpose(1, 2).contiguous()


def causal_conv1d_update_cpu(window, x, weight, bias):
    new_window = torch.empty_like(window)
    new_window[..., :-1] = window[..., 1:]
    new_window[..., -1] = x
    out = torch.linalg.vecdot(new_window.float(), weight.float())
    if bias is not None:
        out.add_(bias.float())
    return F.silu(out, inplace=True).to(x.dtype), new_window
