"""Geometry and per-step operations of the Tensorized LSTM (He et al., NIPS 2017).

Layout. The hidden tensor H_t and the memory C_t are stored as ``(B, N, M)`` with the N = P (2D) or
N = P1 * P2 (3D) locations flattened row-major. Both convolutions are gathers through a precomputed
(N, K^(D-1)) neighbour table: the cross-layer convolution is one gather (im2col) and one GEMM of
(B N, K^(D-1) M) x (K^(D-1) M, M^o) per step, the memory-cell convolution one gather and one weighted sum
over the taps; there is no loop over locations, and 2D and 3D share the code. (On 2 CPU cores this is
faster than F.conv1d/conv2d at these small sizes, whose oneDNN calls cost more than the arithmetic.)

Stacking the input. The projected input ``x_t W^x + b^x`` (M channels) is an extra location placed
*before* location 0 along every location axis: the concatenated tensor has ``P_a + 1`` positions per axis,
the input sits at the corner (0, .., 0) and, in 3D, the rest of the new row and column are zeros. The
output ``y_t`` is read at the opposite corner, the last location (P1 - 1, P2 - 1). Since the input does not
depend on the recurrence, the terms of the taps that read it (the first ``lower`` locations per axis) are
computed for all steps in one contraction before the time loop and added to A_t per step.

The 3D choice is ours (docs/papers.md does not fix it): one input location at a corner keeps the input
projection and the parameter count the same as in 2D.

Kernel offsets. A tap set ``-lower .. +upper`` along every location axis, ``lower + upper + 1 = K``:
with feedback the kernel is centred (``lower = K // 2``, K = 3 gives -1, 0, +1); without feedback it is
one-sided (``lower = K - 1, upper = 0``: a location only hears itself and the locations below it; K = 2 is
the paper's tLSTM-F). The memory-cell convolution uses the same taps (K per axis, K^(D-1) per location),
with a dynamic kernel per location normalised by a softmax over its taps and border-value padding.

Depth (derived from the receptive field). At step t the input reaches the first ``lower`` locations of each
axis; every further step advances ``lower`` locations along every axis at once (the kernel is a full box,
so a diagonal move costs one step); the memory-cell convolution has the same reach, so it adds no speed.
The last location ``P_a - 1`` of axis a is reached after ``ceil(P_a / lower) - 1`` more steps, hence

    L = max_a ceil(P_a / lower),   delay = L - 1,

i.e. L = P for the paper's choices (K = 3 with feedback, K = 2 without) in 2D, and L = max(P1, P2) in 3D.
The output for step t is the top location at step t + L - 1; no input after step t reaches it (tests).

Normalisation ("norm"), applied to the gate pre-activations (each of G, I, F, O separately) and to C_t
before the tanh; gain and bias per channel, shared over locations (so P adds no parameters):
  * ``ln``: statistics over the M channels at each location (each location is one layer of the implicit
    deep net, so this is Ba et al.'s layer norm applied layer by layer). Causal: keeps the delay semantics.
  * ``cn``: channel normalisation as docs/papers.md describes the paper's CN [unverified axes]: statistics per
    channel over all locations. NOTE: at one step the locations hold different "layers" that have seen the
    input up to different times, so these statistics let the output for step t depend (through two numbers
    per channel) on inputs up to step t + L - 1. A test pins this look-ahead; prefer ``ln`` for language
    modelling where the next input is the target.
  * ``ccn``: causal channel normalisation (ours). Location n at step s has seen the inputs up to step
    s - d(n), d(n) its depth (``location_depths``). cn pools every location m at step s; for the shallower
    ones (d(m) < d(n)) that state has seen later inputs. ccn pools every location too, each at its most recent
    step that has seen no input after n's: deeper and equal-depth m at step s (older inputs), shallower m at
    step s - (d(n) - d(m)), when it had seen exactly n's newest input (the diagonal of the implicit deep net).
    So every location is pooled, as in cn, and none of them looks ahead: y_t depends on x_1..x_t only. The
    per-depth moments of the last L - 1 steps travel in the state (a third tensor), so truncated BPTT windows
    and variable lengths give the same outputs as one pass; before the first step only what exists is pooled.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tensorlstm.errors import UserError

NORMS = ("none", "ln", "cn", "ccn")


@dataclass(frozen=True)
class Geometry:
    """Location grid and kernel taps of a tLSTM; the source of its depth."""

    sizes: tuple[int, ...]  # locations per axis: (P,) for 2D, (P1, P2) for 3D
    kernel: int  # K taps per axis
    feedback: bool

    @property
    def axes(self) -> int:
        return len(self.sizes)

    @property
    def order(self) -> int:
        """Order of the hidden tensor: 2 for P x M, 3 for P1 x P2 x M."""
        return self.axes + 1

    @property
    def lower(self) -> int:
        """Taps reaching locations below (towards the input)."""
        return self.kernel // 2 if self.feedback else self.kernel - 1

    @property
    def upper(self) -> int:
        """Taps reaching locations above (feedback)."""
        return self.kernel - 1 - self.lower

    @property
    def taps(self) -> int:
        """Kernel taps per location: K^(D-1)."""
        return self.kernel**self.axes

    @property
    def locations(self) -> int:
        return math.prod(self.sizes)

    @property
    def depth(self) -> int:
        """L: steps from an input to the output location (see the module docstring)."""
        return max(math.ceil(p / self.lower) for p in self.sizes)


def make_geometry(P: int | Sequence[int], K: int | None, feedback: bool) -> Geometry:
    """Validate the config's P, K, feedback (UserError on bad values); K None: 3 with feedback, 2 without."""
    if isinstance(P, (bool, str)) or not isinstance(P, (int, Sequence)) or \
            (not isinstance(P, int) and not all(isinstance(p, int) and not isinstance(p, bool) for p in P)):
        raise UserError(f"cell.P must be an int (2D tLSTM) or a list of two ints (3D), got {P!r}")
    sizes = (int(P),) if isinstance(P, int) else tuple(int(p) for p in P)
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise UserError(f"cell.P must be an int >= 1 or a list of two (e.g. cell.P=[3,3]), got {P!r}")
    if K is None:
        K = 3 if feedback else 2
    K = int(K)
    if K < 2:
        raise UserError(f"cell.K must be >= 2 (K=1 connects no locations), got {K}")
    if feedback and K < 3:
        raise UserError("cell.feedback=true needs a centred kernel (K >= 3); use cell.K=3 or feedback=false")
    return Geometry(sizes, K, bool(feedback))


def _offsets(geo: Geometry) -> list[tuple[int, ...]]:
    """Tap offsets of the box kernel, row-major: (-lower .. +upper) per axis."""
    return list(itertools.product(range(-geo.lower, geo.upper + 1), repeat=geo.axes))


def cross_layer_table(geo: Geometry) -> torch.Tensor:
    """(N, taps) indices into [H_{t-1} locations (N), the input, a zero row] for the cross-layer conv.

    Concatenated coordinates along each axis: 0 is the input row/column, 1..P_a the hidden locations. A tap
    landing on the corner (0, .., 0) reads the input (index N); one landing elsewhere on the input row or
    column, or outside the grid, reads zeros (index N + 1): zero padding.
    """
    N = geo.locations
    table = []
    for loc in itertools.product(*(range(p) for p in geo.sizes)):
        row = []
        for off in _offsets(geo):
            src = [i + 1 + o for i, o in zip(loc, off)]
            if any(s < 0 or s > p for s, p in zip(src, geo.sizes)):
                row.append(N + 1)
            elif all(s == 0 for s in src):
                row.append(N)
            elif any(s == 0 for s in src):
                row.append(N + 1)
            else:
                row.append(_flat([s - 1 for s in src], geo.sizes))
        table.append(row)
    return torch.tensor(table, dtype=torch.long)


def memory_table(geo: Geometry) -> torch.Tensor:
    """(N, taps) indices into C_{t-1} locations: the same taps, border-value (replicate) padding."""
    table = []
    for loc in itertools.product(*(range(p) for p in geo.sizes)):
        offsets = _offsets(geo)
        clamped = ([min(max(i + o, 0), p - 1) for i, o, p in zip(loc, off, geo.sizes)] for off in offsets)
        table.append([_flat(src, geo.sizes) for src in clamped])
    return torch.tensor(table, dtype=torch.long)


def _flat(index: Sequence[int], sizes: Sequence[int]) -> int:
    flat = 0
    for i, p in zip(index, sizes):
        flat = flat * p + i
    return flat


def normalize(
    z: torch.Tensor, kind: str, gain: torch.Tensor, bias: torch.Tensor, eps: float = 1e-5
) -> torch.Tensor:
    """Normalise z of shape (B, N, G, M) (N locations, G groups of M channels); gain/bias of shape (G, M).

    ln: statistics over the M channels of a group at each location; cn: per channel over the N locations.
    Computed in at least fp32 (as autocast runs layer_norm): bf16/fp16 statistics lose the small gradients.
    """
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    dim = -1 if kind == "ln" else 1
    mean = z.mean(dim=dim, keepdim=True)
    var = z.var(dim=dim, keepdim=True, unbiased=False)
    return (z - mean) * torch.rsqrt(var + eps) * gain + bias


def location_depths(geo: Geometry) -> torch.Tensor:
    """(N,) steps from an input to each location: max over axes of index // lower (the box kernel)."""
    depths = [max(i // geo.lower for i in loc) for loc in itertools.product(*(range(p) for p in geo.sizes))]
    return torch.tensor(depths, dtype=torch.long)


def diagonal_sum_table(depth: int) -> torch.Tensor:
    """(L, L, L) with [i, k, j] = 1 where depth i pools depth j's moments from k steps ago: k = i - j for the
    shallower depths j < i (the step when they had seen depth i's newest input), k = 0 for j >= i."""
    table = torch.zeros(depth, depth, depth)
    for i in range(depth):
        for j in range(depth):
            table[i, max(i - j, 0), j] = 1.0
    return table


def depth_moments(z: torch.Tensor, depths: torch.Tensor, depth: int) -> torch.Tensor:
    """z (B, N, G, M) -> (B, L, 3, G, M): per depth the count, sum and sum of squares over its locations."""
    B, _, G, M = z.shape
    out = z.new_zeros(B, depth, 3, G, M)
    out[:, :, 0] = torch.bincount(depths, minlength=depth).to(z.dtype).view(1, depth, 1, 1)
    out[:, :, 1] = out[:, :, 1].index_add(1, depths, z)
    out[:, :, 2] = out[:, :, 2].index_add(1, depths, z * z)
    return out


def causal_normalize(
    z: torch.Tensor,
    past: torch.Tensor,
    depths: torch.Tensor,
    table: torch.Tensor,
    gain: torch.Tensor,
    bias: torch.Tensor,
    eps: float = 1e-5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ccn of z (B, N, G, M); past (B, L - 1, L, 3, G, M): the moments of the last L - 1 steps (newest first).

    Returns (normalised z, this step's moments (B, L, 3, G, M) for the history)."""
    now = depth_moments(z, depths, table.shape[0])
    full = torch.cat([now.unsqueeze(1), past], dim=1)  # (B, lag k, depth j, 3, G, M)
    total = torch.einsum("bkjcgm,ikj->bicgm", full, table.to(z.dtype))[:, depths]  # (B, N, 3, G, M)
    count = total[:, :, 0].clamp(min=1.0)
    mean = total[:, :, 1] / count
    var = (total[:, :, 2] / count - mean * mean).clamp(min=0.0)
    return (z - mean) * torch.rsqrt(var + eps) * gain + bias, now
