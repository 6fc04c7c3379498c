"""Dynamic token pooling (docs/algorithms.md §6): segment boundaries, segment-mean downsampling, upsampling
by the inclusive cumsum, and the boundary predictor with its Gumbel-sigmoid training path.

Convention: boundaries b (B, L) with b_t = 1 when token t ENDS its segment. Token t belongs to segment
seg(t) = sum_{j<t} b_j (the exclusive cumsum). The shortened sequence is [null; mean of segment 0; mean of
segment 1; ...], so shortened index s + 1 holds segment s. Token t reads shortened index sum_{j<=t} b_j
(the inclusive cumsum): inside a segment it sees the previous closed segment (or the null group), and the
token that closes a segment sees that segment itself, which is causal because position t predicts t + 1.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def fixed_boundaries(positions: torch.Tensor, stride: int) -> torch.Tensor:
    """b_t = [t mod stride == 0], the reference's `b[:, ::stride] = 1` (token 0 is a segment of its own)."""
    return positions % stride == 0


def token_boundaries(input_ids: torch.Tensor, boundary_ids: tuple[int, ...]) -> torch.Tensor:
    """b_t = [x_t in boundary_ids] (whitespace pooling: a space ends the segment it belongs to)."""
    ends = input_ids == boundary_ids[0]
    for token_id in boundary_ids[1:]:
        ends = ends | (input_ids == token_id)
    return ends


def segment_means(hidden: torch.Tensor, boundaries: torch.Tensor, n_segments: int) -> torch.Tensor:
    """The mean hidden vector of segments 0..n_segments-1 (B, n_segments, d), in fp32, n_segments >= 1;
    empty segments are 0 and tokens of later segments are dropped (the reference drops the trailing
    unclosed segment).

    `boundaries` may be a straight-through float tensor: each token's weight has the value 1 and the
    gradient d/d seg(t) = 1, the gradient the reference's one-hot weights 1 - (s - seg(t)) carry, so the
    boundary predictor learns through the pooling.
    """
    B, L, d = hidden.shape
    ends = boundaries.to(torch.float32)
    segment = ends.cumsum(1) - ends  # exclusive cumsum, with the straight-through gradient
    kept = segment.detach() < n_segments
    weight = (1 + segment - segment.detach()) * kept
    index = segment.detach().long().clamp(max=n_segments - 1)  # dropped tokens add 0 to the last slot
    sums = hidden.new_zeros(B, n_segments, d, dtype=torch.float32)
    sums = sums.scatter_add(1, index[..., None].expand(B, L, d), weight[..., None] * hidden.float())
    counts = weight.new_zeros(B, n_segments).scatter_add(1, index, weight)
    return sums / counts.clamp(min=1)[..., None]  # an empty segment: 0 / 1 (the reference: 0 / (0 + 1e-9))


def upsample(shortened: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """(B, S + 1, d) shortened outputs [null; segments] -> (B, L, d): token t gets index sum_{j<=t} b_j.

    A plain gather: the reference's normalised one-hot weights w / (w + 1e-9) pass a gradient of about
    1e-9 to the boundaries, which is dropped here."""
    index = boundaries.detach().long().cumsum(1)
    return shortened.gather(1, index[..., None].expand(-1, -1, shortened.shape[-1]))


class BoundaryPredictor(nn.Module):
    """logit_t = Linear(GELU(Linear(h_t))): the reference's MLP d -> d_hidden -> 1; p_t = sigmoid(logit_t).

    At inference a token ends its segment when p_t > 0.5, i.e. logit_t > 0. (The reference samples the
    Gumbel noise in eval too; deterministic boundaries are a deliberate deviation.)"""

    def __init__(self, d_model: int, d_hidden: int):
        super().__init__()
        self.w_up = nn.Linear(d_model, d_hidden)
        self.w_out = nn.Linear(d_hidden, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.w_out(F.gelu(self.w_up(hidden))).squeeze(-1)


def gumbel_sigmoid_boundaries(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Training boundaries: a RelaxedBernoulli(temperature, logits) sample, thresholded at 0.5, with the
    straight-through estimator (the value is the hard 0/1, the gradient the soft sample's). fp32."""
    eps = torch.finfo(torch.float32).eps
    uniform = torch.rand(logits.shape, generator=generator, device=logits.device).clamp(eps, 1 - eps)
    soft = torch.sigmoid((logits.float() + uniform.log() - (-uniform).log1p()) / temperature)
    hard = (soft > 0.5).float()
    return hard - soft.detach() + soft


def binomial_prior_loss(boundaries: torch.Tensor, prior: float) -> torch.Tensor:
    """-log Binomial(k; n=L, p=prior) / L with k = sum_t b_t per row, averaged over rows (the reference's
    loss of the Gumbel predictor, which keeps the fraction of boundaries near `prior`)."""
    n = boundaries.shape[-1]
    k = boundaries.float().sum(-1)
    log_choose = math.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
    log_prob = log_choose + k * math.log(prior) + (n - k) * math.log1p(-prior)
    return -log_prob.mean() / n
