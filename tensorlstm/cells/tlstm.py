"""Tensorized LSTM (He et al., NIPS 2017) and its baseline, the stacked LSTM with shared parameters.

tLSTM (``cell=tlstm``): the hidden state is a tensor H_t of P x M (2D) or P1 x P2 x M (3D). Per step

    H^cat = [x_t W^x + b^x ; H_{t-1}]                   the input stacked as an extra location
    A_t   = H^cat (*) {W^h, b^h}                        cross-layer convolution, K taps per location axis,
                                                        zero padding, weights shared by all locations
    [A^g, A^i, A^f, A^o, A^q] = A_t                     G = tanh, I, F, O = sigmoid; A^q: K^(D-1) taps
    C_t   = G * I + conv(C_{t-1}, softmax(A^q)) * F     memory-cell convolution (tLSTM-M: C_{t-1} * F)
    H_t   = tanh(C_t) * O

and the output for step t is the hidden vector of the last location at step t + L - 1 (depth by delay).
Geometry, depth derivation and normalisation choices: ``tensorlstm.cells.tlstm_ops``.

Parameters (independent of P): W^x (I x M) + b^x (M) + W^h (K^(D-1) x M x M^o) + b^h (M^o), with
M^o = 4M + K^(D-1) (memory_conv) or 4M, plus 10M for ln/cn (gain and bias of the 4 gate groups and of C_t).

sLSTM (``cell=slstm``): x projected to H (W^x, b^x), then L LSTM layers that all use the same weights
(W_ih: H x 4H, W_hh: H x 4H, b: 4H), run by torch's fused LSTM kernel with the shared weights repeated.
Parameters: I*H + H + 8H^2 + 4H, independent of L.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from tensorlstm import native
from tensorlstm.cells.base import RecurrentNet, State, select_state
from tensorlstm.cells.tlstm_fused import TLSTMSequence
from tensorlstm.cells.tlstm_ops import (
    NORMS,
    Geometry,
    causal_normalize,
    cross_layer_table,
    diagonal_sum_table,
    location_depths,
    make_geometry,
    memory_table,
    normalize,
)
from tensorlstm.errors import UserError


class TensorizedLSTM(RecurrentNet):
    """tLSTM over sequences; ``delay = L - 1`` blank steps are appended inside ``forward``.

    State: (H, C), each (B, N, M) with the N locations flattened row-major; the output is location N - 1.
    """

    def __init__(
        self,
        input_size: int,
        channels: int,
        geometry: Geometry,
        memory_conv: bool = True,
        norm: str = "none",
        forget_bias: float = 1.0,
        dropout: float = 0.0,
        gate_kernels: str = "native",
    ) -> None:
        super().__init__()
        self.gate_kernels = native.check_mode(gate_kernels)  # cell.gates: the fused loop's step kernels (norm=none)
        if norm not in NORMS:
            raise UserError(f"unknown cell.norm {norm!r}; choose one of: {', '.join(NORMS)}")
        if norm in ("cn", "ccn") and geometry.locations < 2:
            raise UserError(f"cell.norm={norm} normalises over locations and needs >= 2; raise cell.P or use ln")
        if channels < 1:
            raise UserError(f"cell.M must be >= 1, got {channels}")
        self.geo, self.M, self.memory_conv, self.norm = geometry, channels, memory_conv, norm
        self.depth = geometry.depth
        self.delay = self.depth - 1
        self.output_size = channels
        M, taps = channels, geometry.taps
        out_channels = 4 * M + (taps if memory_conv else 0)
        self.input_proj = nn.Linear(input_size, M)  # W^x, b^x
        self.weight = nn.Parameter(torch.empty(taps, M, out_channels))  # W^h in R^{K^(D-1) x M x M^o}
        self.bias = nn.Parameter(torch.zeros(out_channels))  # b^h
        bound = 1.0 / math.sqrt(M * taps)
        nn.init.uniform_(self.weight, -bound, bound)
        with torch.no_grad():
            self.bias[2 * M : 3 * M] = forget_bias  # gate order G, I, F, O, Q
        if norm != "none":
            self.gate_gain = nn.Parameter(torch.ones(4, M))
            self.gate_shift = nn.Parameter(torch.zeros(4, M))
            self.cell_gain = nn.Parameter(torch.ones(1, M))
            self.cell_shift = nn.Parameter(torch.zeros(1, M))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # Cross-layer taps: the hidden ones gather from [H_{t-1}; a zero row]; the (location, tap) pairs that
        # read the input location are computed for all steps at once (``_input_terms``) and added per step.
        table = cross_layer_table(geometry)
        N = geometry.locations
        reads_input = table == N
        self.register_buffer("hidden_table", table.clamp(max=N), persistent=False)  # N: the zero row
        self.register_buffer("input_locations", reads_input.nonzero()[:, 0], persistent=False)
        self.register_buffer("input_taps", reads_input.nonzero()[:, 1], persistent=False)
        self.register_buffer("memory_table", memory_table(geometry), persistent=False)
        # the fused sequence node's tables (``tlstm_fused``): the cross-layer gather row-major, and each memory
        # tap's place in the flattened (N, N) kernel matrix of its location
        self.register_buffer("hidden_index", self.hidden_table.flatten(), persistent=False)
        self.register_buffer("memory_index", (torch.arange(N).unsqueeze(1) * N + self.memory_table).flatten(),
                             persistent=False)
        if norm == "ccn":  # causal channel norm: depth of each location, and how depths sum along diagonals
            self.register_buffer("location_depths", location_depths(geometry), persistent=False)
            self.register_buffer("diagonal_table", diagonal_sum_table(self.depth), persistent=False)

    # -- state ---------------------------------------------------------------------------------------------
    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        dtype = dtype or self.weight.dtype
        device = device or self.weight.device
        zeros = torch.zeros(batch_size, self.geo.locations, self.M, device=device, dtype=dtype)
        if self.norm == "ccn":  # + the per-depth moments of the last L - 1 steps (none yet: counts 0)
            past = torch.zeros(batch_size, self.depth - 1, self.depth, 3, 5, self.M, device=device, dtype=dtype)
            return (zeros, zeros.clone(), past)
        return (zeros, zeros.clone())

    # -- one step ------------------------------------------------------------------------------------------
    def _input_terms(self, xp: torch.Tensor) -> torch.Tensor:
        """Input location's share of A_t: xp (..., M) -> (..., pairs, M^o), one term per input-reading tap."""
        return torch.einsum("...m,pmo->...po", xp, self.weight[self.input_taps])

    def _cell(self, x_terms: torch.Tensor, h: torch.Tensor, c: torch.Tensor, past: torch.Tensor | None = None
              ) -> State:
        """x_terms: (B, pairs, M^o) from ``_input_terms``; h, c: (B, N, M) -> new (h, c) (ccn: and ``past``,
        the per-depth moments of the last L - 1 steps, see ``causal_normalize``)."""
        B, N, M = h.shape
        patches = self._patches(h)
        weight = self.weight.view(-1, self.weight.shape[-1])
        if self.norm != "none" and torch.is_autocast_enabled(h.device.type):
            # the normalisation cancels the common part of A_t, leaving bf16/fp16 rounding as the signal
            # (measured on CPU bf16: 20-100% gradient error for cn, 5-15% for ln); so A_t stays fp32 there
            with torch.autocast(h.device.type, enabled=False):
                a = torch.addmm(self.bias, patches.float(), weight.float()).view(B, N, -1)
                a = a.index_add(1, self.input_locations, x_terms.float())
        else:
            a = torch.addmm(self.bias, patches, weight).view(B, N, -1)
            a = a.index_add(1, self.input_locations, x_terms)  # (B, N, M^o) = A_t
        return self._update(a, c, past)

    def _patches(self, h: torch.Tensor) -> torch.Tensor:
        """im2col of H_{t-1}: (B N, taps * M), zero padding."""
        B, N, _ = h.shape
        source = F.pad(h, (0, 0, 0, 1))  # H_{t-1} and a zero row
        return source[:, self.hidden_table].view(B * N, -1)

    def _update(self, a: torch.Tensor, c: torch.Tensor, past: torch.Tensor | None = None) -> State:
        """The gates and the new state from A_t (B, N, M^o)."""
        M = self.M
        gates = a[..., : 4 * M].unflatten(-1, (4, M))  # (B, N, 4, M)
        if self.norm == "ccn":
            past = past.to(gates.dtype)
            gates, gate_moments = causal_normalize(gates, past[..., :4, :], self.location_depths,
                                                   self.diagonal_table, self.gate_gain, self.gate_shift)
        elif self.norm != "none":
            gates = normalize(gates, self.norm, self.gate_gain, self.gate_shift)
        g = torch.tanh(gates[:, :, 0])
        i, f, o = torch.sigmoid(gates[:, :, 1:]).unbind(2)
        if self.memory_conv:  # dynamic kernel per location: softmax over its taps, replicate padding
            kernel = torch.softmax(a[..., 4 * M :], dim=-1)  # (B, N, taps)
            c = (kernel.unsqueeze(-1) * c[:, self.memory_table]).sum(2)  # (B, N, M)
        c = g * i + c * f
        c_out = c
        if self.norm == "ccn":
            c_out, cell_moments = causal_normalize(c.unsqueeze(2), past[..., 4:, :], self.location_depths,
                                                   self.diagonal_table, self.cell_gain, self.cell_shift)
            now = torch.cat([gate_moments, cell_moments], dim=3).unsqueeze(1)  # (B, 1, L, 3, 5, M)
            h = torch.tanh(c_out.squeeze(2)) * o
            return h, c, torch.cat([now, past], dim=1)[:, : past.shape[1]]  # newest first, the oldest dropped
        if self.norm != "none":
            c_out = normalize(c.unsqueeze(2), self.norm, self.cell_gain, self.cell_shift).squeeze(2)
        h = torch.tanh(c_out) * o
        return h, c

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One step; returns the raw top output of this step (the output for input step t - delay)."""
        state = self._cell(self._input_terms(self.input_proj(x_t)), *state)
        return state[0][:, -1], state

    # -- sequences -----------------------------------------------------------------------------------------
    def forward(
        self, x: torch.Tensor, state: State = None, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        B, T, _ = x.shape
        state = self.init_state(B, x.device, x.dtype) if state is None else state
        xp = self.input_proj(x)  # all B x T rows at once, before the time loop
        if self.delay:  # blank (zero) inputs after the last step: their projection is b^x
            xp = torch.cat([xp, self.input_proj.bias.to(xp.dtype).expand(B, self.delay, self.M)], dim=1)
        # The input's share of A for all steps at once; unbind (not x[:, s]) so that backward stacks the
        # per-step gradients once instead of filling a full-size zero tensor per step.
        x_terms = self._input_terms(xp)  # (B, T + delay, pairs, M^o)
        last = None if lengths is None else lengths.to(x.device) - 1
        if self._fused(x) and T > 0:
            return self._fused_forward(x_terms, state, last)
        final = state
        outputs = []
        fast = self._batched_weight_grad(x)
        if fast:  # A_t = (b^h + input terms)_t + patches_t W^h, the first part for all steps at once
            a_in, weight, record = self._input_part(x_terms.transpose(0, 1))
        else:  # under autocast the general step (its norms keep A_t in fp32)
            x_steps = x_terms.unbind(1)
        for s in range(T + self.delay):
            if fast:
                h = state[0]
                patches = self._patches(h)
                if record is not None:
                    record.append(patches.detach())
                a = torch.addmm(a_in[s], patches, weight).view(h.shape[0], h.shape[1], -1)
                state = self._update(a, *state[1:])
            else:
                state = self._cell(x_steps[s], *state)
            if s >= self.delay:
                outputs.append(state[0][:, -1])
            if s < T:
                final = state if last is None else select_state(last == s, state, final)
        if not outputs:
            return x.new_zeros(B, 0, self.M), final
        return self.dropout(torch.stack(outputs, dim=1)), final

    def _fused(self, x: torch.Tensor) -> bool:
        """Whether ``forward`` runs the whole loop as one node (``tlstm_fused``): norm=none, outside autocast."""
        return self.norm == "none" and not torch.is_autocast_enabled(x.device.type)

    def _fused_forward(self, x_terms: torch.Tensor, state: State, last: torch.Tensor | None):
        """The loop of ``forward`` as ``TLSTMSequence``: outputs and the final state (at ``last`` with lengths)."""
        B, S = x_terms.shape[:2]
        N, Mo = self.geo.locations, self.weight.shape[-1]
        T = S - self.delay
        h0, c0 = state
        memory = self.memory_index if self.memory_conv else None
        k = native.kernels(x_terms) if self.gate_kernels == "native" else None  # None: torch ops
        hs, cs = TLSTMSequence.apply(self.bias.to(x_terms.dtype), x_terms.transpose(0, 1), self.input_locations,
                                     self.weight.view(-1, Mo), h0, c0, self.hidden_index, memory, k)
        y = hs[self.delay :, :, N - 1].transpose(0, 1).contiguous()
        if last is None:
            final = (hs[T - 1], cs[T - 1])
        else:  # each sequence's state after its last step; the initial state where that is outside 0..T-1
            pick = torch.where((last >= 0) & (last < T), last + 1, 0)
            rows = torch.arange(B, device=pick.device)
            final = tuple(torch.cat([s0.unsqueeze(0), seq[:T]])[pick, rows] for s0, seq in ((h0, hs), (c0, cs)))
        return self.dropout(y), final

    def _batched_weight_grad(self, x: torch.Tensor) -> bool:
        """Whether the loop takes ``_input_part`` (everywhere but under autocast, whose norms keep A_t fp32)."""
        return not torch.is_autocast_enabled(x.device.type)

    def _input_part(self, x_terms: torch.Tensor):
        """x_terms (S, B, pairs, M^o) -> S tensors (B N, M^o): the bias plus input terms of A per step (unbound, so
        that backward stacks their gradients once), the weight
        the loop multiplies by, and the list the loop records its patches in (None without autograd).

        With autograd, W^h enters the loop detached and ``_ConvWeightGrad`` forms dL/dW^h after it as ONE
        (taps M x S B N) @ (S B N x M^o) product instead of S small ones (one per step)."""
        S, B = x_terms.shape[:2]
        N, Mo = self.geo.locations, self.weight.shape[-1]
        a_in = self.bias.to(x_terms.dtype).expand(S, B, N, Mo).index_add(2, self.input_locations, x_terms)
        weight = self.weight.view(-1, Mo)
        record = None
        if torch.is_grad_enabled() and weight.requires_grad:
            record = []
            a_in = _ConvWeightGrad.apply(a_in, weight, record)
            weight = weight.detach()
        return a_in.reshape(S, B * N, Mo).unbind(0), weight, record

    # -- reporting -----------------------------------------------------------------------------------------
    def input_map_params(self) -> int:
        return self.input_proj.weight.numel()

    def describe(self) -> dict:
        g = self.geo
        return {
            "model": f"{g.order}D tLSTM",
            "depth": self.depth,
            "delay": self.delay,
            "P": list(g.sizes),
            "M": self.M,
            "K": g.kernel,
            "kernel_offsets": [-g.lower, g.upper],
            "feedback": g.feedback,
            "memory_conv": self.memory_conv,
            "norm": self.norm,
            "locations": g.locations,
            "hidden_units": g.locations * self.M,
            "conv_out_channels": self.weight.shape[-1],
            "params": sum(p.numel() for p in self.parameters()),
        }


class _ConvWeightGrad(torch.autograd.Function):
    """Identity on the per-step additive part of A (S, B, N, M^o) that also owns dL/dW^h.

    Each step computes A_t = a_in_t + patches_t W^h with W^h detached, so dL/da_in_t = dL/dA_t and
    dL/dW^h = sum_t patches_t^T dL/dA_t: one product over the patches ``record`` collects in the loop."""

    @staticmethod
    def forward(ctx, a_in: torch.Tensor, weight: torch.Tensor, record: list) -> torch.Tensor:  # noqa: D102
        ctx.record = record
        return a_in.view_as(a_in)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        patches = torch.cat(ctx.record)  # (S B N, taps M), rows in (step, batch, location) order like grad
        return grad, patches.t() @ grad.reshape(patches.shape[0], -1), None


class SharedStackedLSTM(RecurrentNet):
    """sLSTM: x -> W^x -> L LSTM layers sharing one set of weights (He et al.'s baseline)."""

    delay = 0

    def __init__(
        self, input_size: int, hidden_size: int, layers: int, forget_bias: float = 1.0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        if layers < 1 or hidden_size < 1:
            raise UserError(f"cell.layers and the hidden size must be >= 1, got {layers} and {hidden_size}")
        H = hidden_size
        self.H, self.layers, self.output_size = H, layers, H
        self.input_proj = nn.Linear(input_size, H)
        bound = 1.0 / math.sqrt(H)
        self.weight_ih = nn.Parameter(torch.empty(4 * H, H).uniform_(-bound, bound))
        self.weight_hh = nn.Parameter(torch.empty(4 * H, H).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(4 * H))
        with torch.no_grad():
            self.bias[H : 2 * H] = forget_bias  # torch gate order i, f, g, o
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        dtype = dtype or self.weight_ih.dtype
        device = device or self.weight_ih.device
        zeros = torch.zeros(batch_size, self.layers, self.H, device=device, dtype=dtype)
        return (zeros, zeros.clone())

    def _flat_weights(self) -> list[torch.Tensor]:
        zero = torch.zeros_like(self.bias)
        return [self.weight_ih, self.weight_hh, self.bias, zero] * self.layers

    def forward(
        self, x: torch.Tensor, state: State = None, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        B, T, _ = x.shape
        h0, c0 = self.init_state(B, x.device, x.dtype) if state is None else state
        hx = (h0.transpose(0, 1).contiguous(), c0.transpose(0, 1).contiguous())  # (L, B, H)
        xp = self.input_proj(x)
        with warnings.catch_warnings():  # cuDNN copies the repeated (shared) weights into one buffer
            warnings.filterwarnings("ignore", message=".*contiguous chunk of memory.*")
            if lengths is None:
                y, hn, cn = torch.lstm(xp, hx, self._flat_weights(), True, self.layers, 0.0, self.training,
                                       False, True)
            else:
                packed = pack_padded_sequence(xp, lengths.cpu(), batch_first=True, enforce_sorted=False)
                order, unorder = packed.sorted_indices, packed.unsorted_indices
                hx = tuple(s.index_select(1, order) for s in hx)
                data, hn, cn = torch.lstm(packed.data, packed.batch_sizes, hx, self._flat_weights(), True,
                                          self.layers, 0.0, self.training, False)
                hn, cn = hn.index_select(1, unorder), cn.index_select(1, unorder)
                out = packed._replace(data=data)
                y, _ = pad_packed_sequence(out, batch_first=True, total_length=T)
        return self.dropout(y), (hn.transpose(0, 1), cn.transpose(0, 1))

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        h, c = state
        inp = self.input_proj(x_t)
        hs, cs = [], []
        for layer in range(self.layers):
            gates = inp @ self.weight_ih.T + h[:, layer] @ self.weight_hh.T + self.bias
            i, f, g, o = gates.chunk(4, dim=1)
            c_l = torch.sigmoid(f) * c[:, layer] + torch.sigmoid(i) * torch.tanh(g)
            inp = torch.sigmoid(o) * torch.tanh(c_l)
            hs.append(inp)
            cs.append(c_l)
        return inp, (torch.stack(hs, 1), torch.stack(cs, 1))

    def input_map_params(self) -> int:
        return self.input_proj.weight.numel()

    def describe(self) -> dict:
        return {
            "model": "sLSTM (stacked LSTM, weights shared across layers)",
            "depth": self.layers,
            "delay": 0,
            "hidden_size": self.H,
            "layers": self.layers,
            "params": sum(p.numel() for p in self.parameters()),
        }


def _positive_int(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 1:
        raise UserError(f"{key} must be a positive integer, got {value!r}")
    return int(value)


def build_tlstm(
    cfg: dict,
    input_size: int,
    hidden_size: int,
    in_modes: Sequence[int] | None = None,
    hidden_modes: Sequence[int] | None = None,
) -> TensorizedLSTM:
    """Build a tLSTM from a ``cell=tlstm`` config; M null means the task's hidden size."""
    geometry = make_geometry(cfg["P"], cfg["K"], bool(cfg["feedback"]))
    M = _positive_int(cfg["M"] or hidden_size, "cell.M")
    return TensorizedLSTM(
        input_size,
        M,
        geometry,
        memory_conv=bool(cfg["memory_conv"]),
        norm=str(cfg["norm"]),
        forget_bias=float(cfg["forget_bias"]),
        dropout=float(cfg["dropout"]),
        gate_kernels=cfg["gates"],  # saved before the key: gates=torch (engine.checkpoint.upgrade_config)
    )


def build_slstm(
    cfg: dict,
    input_size: int,
    hidden_size: int,
    in_modes: Sequence[int] | None = None,
    hidden_modes: Sequence[int] | None = None,
) -> SharedStackedLSTM:
    """Build the sLSTM baseline from a ``cell=slstm`` config (``layers`` = depth L)."""
    H = _positive_int(cfg["hidden_size"] or hidden_size, "cell.hidden_size")
    return SharedStackedLSTM(
        input_size,
        H,
        _positive_int(cfg["layers"], "cell.layers"),
        forget_bias=float(cfg["forget_bias"]),
        dropout=float(cfg["dropout"]),
    )
