"""LSTM and GRU layers over any input map (dense, TT, BT, CP, Tucker), stacked into a RecurrentNet.

The input projection ``x_t W`` does not depend on the recurrence, so it is computed for all B x T rows
in one call of the input map before the time loop; only ``h_{t-1} U`` and the gate math run per step.
Dense cells with plain options have ``torch.nn.LSTM`` / ``torch.nn.GRU``'s parameters and run on torch.nn or, with
``cell.kernel=auto`` (the YAML default), on our fused time loop where that is faster for the device and shape
(``loop_is_faster``); ``cell.kernel=loop`` is the factorized cells' own code with a dense input map.

Gate order: LSTM [i, f, g, o]; GRU [r, z, n] (the order of torch.nn). GRU comes in two forms:
``reset_after=True`` (cuDNN / torch.nn.GRU: n = tanh(x W_n + b_n + r * (h U_n + b_hn)), one extra bias)
and ``reset_after=False`` (Cho et al. / Keras / Tjandra: n = tanh(x W_n + b_n + (r * h) U_n)).
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Sequence

import torch
from torch import nn

from tensorlstm import native
from tensorlstm.cells.base import RecurrentNet, State, select_state
from tensorlstm.cells.fused_loop import GRUBeforeSequence, GRUSequence, LSTMSequence, alive_mask
from tensorlstm.errors import UserError
from tensorlstm.tensor import build_map, kernels
from tensorlstm.tensor.amp import compute_dtype
from tensorlstm.tensor.base import LinearMap
from tensorlstm.tensor.shapes import check_modes, factorize, gate_modes

GATES = {"lstm": 4, "gru": 3}


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Keras' hard sigmoid: clip(0.2 x + 0.5, 0, 1)."""
    return torch.clamp(0.2 * x + 0.5, 0.0, 1.0)


ACTIVATIONS = {"sigmoid": torch.sigmoid, "hard_sigmoid": hard_sigmoid}


def sequence_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Dropout with one mask per sequence, shared across time (x is (B, T, F) or (B, F))."""
    if not training or p == 0.0:
        return x
    shape = (x.shape[0], 1, x.shape[-1]) if x.dim() == 3 else x.shape
    mask = torch.empty(shape, device=x.device, dtype=x.dtype).bernoulli_(1 - p) / (1 - p)
    return x * mask


class RecurrentLayer(nn.Module):
    """One LSTM or GRU layer: gates = input_map(x) + b + recurrent(h_{t-1})."""

    def __init__(
        self,
        base: str,
        input_map: LinearMap,
        hidden_size: int,
        hidden_map: LinearMap | None = None,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        gate_activation: str = "sigmoid",
        reset_after: bool = True,
        gate_kernels: str = "native",
    ) -> None:
        super().__init__()
        if base not in GATES:
            raise UserError(f"unknown cell base {base!r}; choose lstm or gru")
        if gate_activation not in ACTIVATIONS:
            raise UserError(f"unknown gate_activation {gate_activation!r}; choose one of {sorted(ACTIVATIONS)}")
        self.base, self.hidden_size = base, hidden_size
        gates = GATES[base] * hidden_size
        if input_map.out_features != gates:
            raise UserError(f"input map gives {input_map.out_features} outputs, the {base} needs {gates}")
        self.input_map = input_map
        self.hidden_map = hidden_map
        if hidden_map is None:
            self.weight_hh = nn.Parameter(torch.empty(hidden_size, gates))
            self._init_recurrent()
        self.bias = nn.Parameter(torch.zeros(gates))
        if base == "lstm":  # forget-gate bias 1 (Jozefowicz et al. 2015)
            with torch.no_grad():
                self.bias[hidden_size : 2 * hidden_size] = 1.0
        self.reset_after = base == "gru" and reset_after
        self.bias_hn = nn.Parameter(torch.zeros(hidden_size)) if self.reset_after else None
        self.dropout, self.recurrent_dropout = dropout, recurrent_dropout
        self.gate = ACTIVATIONS[gate_activation]
        self.gate_kernels = native.check_mode(gate_kernels)  # cell.gates

    def _init_recurrent(self) -> None:
        """Orthogonal H x H block per gate, the usual recurrent init."""
        h = self.hidden_size
        with torch.no_grad():
            for g in range(GATES[self.base]):
                nn.init.orthogonal_(self.weight_hh[:, g * h : (g + 1) * h])

    def recurrent_weight(self) -> torch.Tensor:
        """U (H x G*H): the parameter, or the hidden map rebuilt once per sequence (never per step)."""
        return self.weight_hh if self.hidden_map is None else self.hidden_map.reconstruct()

    def init_state(self, batch_size: int, device=None, dtype=None) -> tuple[torch.Tensor, ...]:
        z = torch.zeros(batch_size, self.hidden_size, device=device, dtype=dtype)
        return (z, z.clone()) if self.base == "lstm" else (z,)

    def project(self, x: torch.Tensor, time_major: bool = False, bias: bool = True) -> torch.Tensor:
        """Input projection of all rows at once: (..., I) -> (..., G*H), the bias included unless `bias` is False
        (the fused loop adds it inside its steps). The dropout mask is drawn batch-first (one per sequence);
        time_major turns (B, T, I) into (T, B, G*H)."""
        x = sequence_dropout(x, self.dropout, self.training)
        xw = self.input_map(x.transpose(0, 1) if time_major else x)
        return xw + self.bias if bias else xw

    def cell(
        self, xw_t: torch.Tensor, state: tuple, U: torch.Tensor, h_mask, record: list | None = None,
        bias_hu: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple]:
        """One step from the projected input xw_t (B, G*H).

        ``record`` (used by ``forward``) collects the detached left operands of ``h U`` so that the
        gradient of U is one large matmul after the loop (see ``_RecurrentWeightGrad``); ``bias_hu``: the
        reset-after GRU's ``_bias_hu()``, built once per sequence."""
        h = state[0]
        hd = h if h_mask is None else h * h_mask
        H = self.hidden_size
        if self.base == "lstm":
            # split (one cat in backward), not slices (a zero-filled gradient each)
            i_f, g, o = torch.addmm(xw_t, hd, U).split((2 * H, H, H), dim=1)
            i, f = self.gate(i_f).split(H, dim=1)  # i, f in one call
            c = f * state[1] + i * torch.tanh(g)
            h = self.gate(o) * torch.tanh(c)
            if record is not None:
                record.append(hd.detach())
            return h, (h, c)
        xw_rz, xw_n = xw_t.split((2 * H, H), dim=1)
        if self.reset_after:
            b_hu = self._bias_hu() if bias_hu is None else bias_hu  # [0, 0, b_hn]
            hu_rz, hu_n = torch.addmm(b_hu, hd, U).split((2 * H, H), dim=1)
            r, z = self.gate(xw_rz + hu_rz).split(H, dim=1)
            n = torch.tanh(torch.addcmul(xw_n, r, hu_n))
        else:
            U_rz, U_n = U.split((2 * H, H), dim=1)
            r, z = self.gate(torch.addmm(xw_rz, hd, U_rz)).split(H, dim=1)
            rh = r * hd
            n = torch.tanh(torch.addmm(xw_n, rh, U_n))
        if record is not None:
            record.append((hd.detach(), (r if self.reset_after else rh).detach()))
        # (1 - z) * n + z * h; lerp does not promote, and under autocast n, z come out of addmm in the low
        # precision while the state keeps its own dtype
        h = torch.lerp(n.to(h.dtype), h, z.to(h.dtype))
        return h, (h,)

    def _bias_hu(self) -> torch.Tensor:
        """[0, 0, b_hn]: the recurrent-side bias of the reset-after GRU, added inside h U."""
        return torch.cat([self.bias_hn.new_zeros(2 * self.hidden_size), self.bias_hn])

    def _h_mask(self, batch: int, ref: torch.Tensor):
        if not self.training or self.recurrent_dropout == 0.0:
            return None
        p = self.recurrent_dropout
        return torch.empty(batch, self.hidden_size, device=ref.device, dtype=ref.dtype).bernoulli_(1 - p) / (1 - p)

    def forward(self, x: torch.Tensor, state: tuple | None = None, lengths: torch.Tensor | None = None):
        B, T = x.shape[:2]
        fused = self._fused_loop(x)
        # one contraction for all rows, time-major (T, B, G): each step reads a contiguous slab and the
        # backward of unbind(0) is a contiguous cat
        xw = self.project(x, time_major=True, bias=not fused)
        if state is None:
            state = self.init_state(B, x.device, xw.dtype)
        if T == 0:  # an empty sequence: no outputs, the state as it came in
            return xw.new_zeros(B, 0, self.hidden_size), state
        U = self.recurrent_weight()
        h_mask = self._h_mask(B, xw)
        if fused:
            return self._forward_fused(xw, U, state, h_mask, lengths)
        record = None
        if torch.is_grad_enabled() and U.requires_grad:
            # the loop sees a detached U; dL/dU = sum_t h_{t-1}^T dL/dgates_t is one matmul in backward
            record = []
            xw = _RecurrentWeightGrad.apply(xw, U, self, record)
            U = U.detach()
        bias_hu = self._bias_hu() if self.reset_after else None
        outputs = []
        for t, xw_t in enumerate(xw.unbind(0)):  # one cat in backward, not T zero-filled (T, B, G) grads
            h, new = self.cell(xw_t, state, U, h_mask, record, bias_hu)
            if lengths is not None:
                alive = lengths > t
                new = select_state(alive, new, state)
                h = h * alive.unsqueeze(1).to(h.dtype)
            state = new
            outputs.append(h)
        return torch.stack(outputs, dim=1), state

    def _fused_loop(self, x: torch.Tensor) -> bool:
        """The whole-sequence autograd nodes of fused_loop.py cover sigmoid gates, the LSTM and both GRU forms,
        with or without lengths, outside autocast (the general loop below handles the rest)."""
        return self.gate is torch.sigmoid and not torch.is_autocast_enabled(x.device.type) and x.shape[1] > 0

    def _forward_fused(self, xw: torch.Tensor, U: torch.Tensor, state: tuple, h_mask, lengths=None):
        alive = None if lengths is None else alive_mask(lengths, xw.shape[0], xw)
        k = native.kernels(xw) if self.gate_kernels == "native" else None  # None: torch ops
        if self.base == "lstm":
            ys, h, c = LSTMSequence.apply(xw, self.bias, U, state[0], state[1], h_mask, alive, k)
            return ys, (h, c)
        if self.reset_after:
            ys, h = GRUSequence.apply(xw, self.bias, U, self._bias_hu(), state[0], h_mask, alive, k)
        else:
            ys, h = GRUBeforeSequence.apply(xw, self.bias, U, state[0], h_mask, alive, k)
        return ys, (h,)

    def step(self, x_t: torch.Tensor, state: tuple | None) -> tuple[torch.Tensor, tuple]:
        xw = self.project(x_t)
        if state is None:
            state = self.init_state(x_t.shape[0], x_t.device, xw.dtype)
        return self.cell(xw, state, self.recurrent_weight(), self._h_mask(x_t.shape[0], xw))


class _RecurrentWeightGrad(torch.autograd.Function):
    """Identity on the projected inputs xw (T, B, G) that also owns the gradient of U.

    In the loop, U enters every step as ``xw_t + h_{t-1} U`` (LSTM; GRU variants below), so
    dL/dU = sum_t h_{t-1}^T dL/dxw_t: one (H x B*T) @ (B*T x G) matmul here instead of T thin ones
    plus T accumulations of an H x G gradient. ``record`` gets the per-step detached left operands
    during the forward loop (hd for the LSTM; (hd, r) for the reset-after GRU, whose n columns see
    r * dn; (hd, r * hd) for the reset-before GRU, whose n columns multiply r * hd).
    """

    @staticmethod
    def forward(ctx, xw: torch.Tensor, U: torch.Tensor, layer: RecurrentLayer, record: list) -> torch.Tensor:
        ctx.layer, ctx.record = layer, record
        # the per-step h U runs in the autocast dtype (if any); the one large dL/dU product does too
        ctx.dtype = compute_dtype(xw, U)
        return xw.view_as(xw)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        layer, record = ctx.layer, ctx.record
        H, G = layer.hidden_size, grad.shape[-1]
        dtype = ctx.dtype  # one dtype for the products: under autocast the records may mix dtypes
        flat = grad.reshape(-1, G).to(dtype)  # rows in (T, B) order, like the stacked records
        if layer.base == "lstm":
            hd = torch.stack([r.to(dtype) for r in record]).reshape(-1, H)
            gU = hd.T @ flat
        else:
            hd = torch.stack([r[0].to(dtype) for r in record]).reshape(-1, H)
            aux = torch.stack([r[1].to(dtype) for r in record]).reshape(-1, H)
            if layer.reset_after:  # n columns: h^T (r * dn)
                gU = torch.cat([hd.T @ flat[:, : 2 * H], hd.T @ (aux * flat[:, 2 * H :])], dim=1)
            else:  # n columns: (r * h)^T dn
                gU = torch.cat([hd.T @ flat[:, : 2 * H], aux.T @ flat[:, 2 * H :]], dim=1)
        ctx.record = ctx.layer = None
        return grad, gU, None, None


class StackedRecurrent(RecurrentNet):
    """Layers of RecurrentLayer; state is a tuple of per-layer states."""

    def __init__(self, layers: Sequence[RecurrentLayer], info: dict) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.output_size = layers[-1].hidden_size
        self.info = info

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        return tuple(layer.init_state(batch_size, device, dtype) for layer in self.layers)

    def forward(self, x: torch.Tensor, state: State = None, lengths: torch.Tensor | None = None):
        states = []
        for i, layer in enumerate(self.layers):
            x, s = layer(x, None if state is None else state[i], lengths)
            states.append(s)
        return x, tuple(states)

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        states = []
        for i, layer in enumerate(self.layers):
            x_t, s = layer.step(x_t, None if state is None else state[i])
            states.append(s)
        return x_t, tuple(states)

    def input_map_params(self) -> int:
        return self.layers[0].input_map.num_params

    def dense_input_map_params(self) -> int:
        m = self.layers[0].input_map
        return m.in_features * m.out_features

    def describe(self) -> dict:
        return self.info


class FusedRecurrent(RecurrentNet):
    """Dense LSTM / GRU with torch.nn.LSTM / torch.nn.GRU's parameters, run by torch.nn (cuDNN, oneDNN) or, with
    ``kernel="auto"``, by our fused time loop (fused_loop.py) on the same weights where that is faster for the
    tensor's device and the shape (`loop_is_faster`). Both run the same module, so a checkpoint, its parameter
    count and its optimizer state are the same whichever ran, on any machine.

    State is (h, c) for the LSTM and (h,) for the GRU, each (B, layers, H), batch first like every state.
    """

    def __init__(self, base: str, input_size: int, hidden_size: int, layers: int, dropout: float,
                 info: dict, kernel: str = "torch", gates: str = "native") -> None:
        super().__init__()
        rnn_cls = nn.LSTM if base == "lstm" else nn.GRU
        # torch applies `dropout` between layers; the input dropout is ours (one mask per sequence)
        self.rnn = rnn_cls(input_size, hidden_size, num_layers=layers, batch_first=True,
                           dropout=dropout if layers > 1 else 0.0)
        self.base, self.input_dropout = base, dropout
        self.kernel, self.gate_kernels = kernel, gates  # cell.kernel (torch | auto), cell.gates
        self.output_size = hidden_size
        self.info = info
        if base == "lstm":  # forget-gate bias 1, as in RecurrentLayer
            with torch.no_grad():
                for name, p in self.rnn.named_parameters():
                    if name.startswith("bias_ih"):
                        p[hidden_size : 2 * hidden_size] = 1.0

    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        z = torch.zeros(batch_size, self.rnn.num_layers, self.rnn.hidden_size, device=device, dtype=dtype)
        return (z, z.clone()) if self.base == "lstm" else (z,)

    def _to_torch(self, state: State):
        if state is None:
            return None
        t = tuple(s.transpose(0, 1).contiguous() for s in state)
        return t if self.base == "lstm" else t[0]

    def _from_torch(self, state) -> State:
        state = state if self.base == "lstm" else (state,)
        return tuple(s.transpose(0, 1) for s in state)

    def forward(self, x: torch.Tensor, state: State = None, lengths: torch.Tensor | None = None):
        x = sequence_dropout(x, self.input_dropout, self.training)
        if x.shape[1] == 0:  # an empty sequence (torch.nn refuses it): no outputs, the state as it came in
            state = self.init_state(x.shape[0], x.device, x.dtype) if state is None else state
            return x.new_zeros(x.shape[0], 0, self.output_size), state
        if self._runs_loop(x):
            return self._forward_loop(x, state, lengths)
        if lengths is None:
            y, s = self._run_torch(x, self._to_torch(state))
            return y, self._from_torch(s)
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        y, s = self._run_torch(packed, self._to_torch(state))
        y, _ = nn.utils.rnn.pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
        return y, self._from_torch(s)

    def _run_torch(self, inputs, state):
        """torch.nn's module; under CPU autocast where oneDNN's LSTM cannot run the autocast dtype
        (`onednn_autocast_lstm_ok`), with oneDNN off for the call, so torch runs its own LSTM kernels."""
        if self.base == "lstm" and torch.is_autocast_enabled("cpu") and self.rnn.weight_hh_l0.device.type == "cpu" \
                and not onednn_autocast_lstm_ok(torch.get_autocast_dtype("cpu")):
            with _onednn_off():
                return self.rnn(inputs, state)
        return self.rnn(inputs, state)

    def _layer_weights(self, i: int) -> tuple[torch.Tensor, ...]:
        """torch.nn's (weight_ih, weight_hh, bias_ih, bias_hh) of layer i."""
        return tuple(getattr(self.rnn, f"{n}_l{i}") for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))

    def _runs_loop(self, x: torch.Tensor) -> bool:
        """cell.kernel=auto: our fused loop where it is the faster for x's device and this shape, outside autocast
        (the loop's nodes run one dtype)."""
        return (self.kernel == "auto" and not torch.is_autocast_enabled(x.device.type)
                and loop_is_faster(self.base, self.rnn.input_size, self.rnn.hidden_size, x.device.type))

    def _forward_loop(self, x: torch.Tensor, state: State, lengths: torch.Tensor | None):
        """torch.nn's computation on its own weights by fused_loop.py's sequence nodes, layer by layer: x W_ih^T
        for all rows in one product (time-major), the two biases summed into one (the GRU's b_hn stays inside
        r * (h U_n + b_hn)), U = W_hh^T; torch.nn's dropout between layers."""
        B, T = x.shape[:2]
        H = self.rnn.hidden_size
        alive = None if lengths is None else alive_mask(lengths, T, x)
        if state is None:
            state = self.init_state(B, x.device, x.dtype)
        outs = []
        for i in range(self.rnn.num_layers):
            if i > 0:
                x = nn.functional.dropout(x, self.rnn.dropout, self.training)
            w_ih, w_hh, b_ih, b_hh = self._layer_weights(i)
            # time-major x W^T, transposing the narrower of input and output (no copy of UCF11's wide input)
            if w_ih.shape[0] < w_ih.shape[1]:
                xw = kernels.linear(x, w_ih).transpose(0, 1).contiguous()
            else:
                xw = kernels.linear(x.transpose(0, 1), w_ih)
            k = native.kernels(xw) if self.gate_kernels == "native" else None  # None: torch ops
            h0 = state[0][:, i].contiguous()
            if self.base == "lstm":
                ys, h, c = LSTMSequence.apply(xw, b_ih + b_hh, w_hh.t(), h0, state[1][:, i].contiguous(), None,
                                              alive, k)
                outs.append((h, c))
            else:  # b_hh's r, z parts join the input bias; its n part stays inside r * (h U_n + b_hn)
                bias = b_ih + torch.cat([b_hh[: 2 * H], b_hh.new_zeros(H)])
                bias_hu = torch.cat([b_hh.new_zeros(2 * H), b_hh[2 * H :]])
                ys, h = GRUSequence.apply(xw, bias, w_hh.t(), bias_hu, h0, None, alive, k)
                outs.append((h,))
            x = ys
        return x, tuple(torch.stack(parts, 1) for parts in zip(*outs))

    def step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One step with torch's fused single-step kernels (lstm_cell / gru_cell) on the same weights:
        several times faster than running nn.LSTM on a length-1 sequence (DRAW, beam search)."""
        x = sequence_dropout(x_t, self.input_dropout, self.training)
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        new_h, new_c = [], []
        for i in range(self.rnn.num_layers):
            if i > 0:
                x = nn.functional.dropout(x, self.rnn.dropout, self.training)
            w = self._layer_weights(i)
            if self.base == "lstm":
                h, c = torch.lstm_cell(x, (state[0][:, i], state[1][:, i]), *w)
                new_c.append(c)
            else:
                h = torch.gru_cell(x, state[0][:, i], *w)
            new_h.append(h)
            x = h
        s = (torch.stack(new_h, 1), torch.stack(new_c, 1)) if self.base == "lstm" else (torch.stack(new_h, 1),)
        return x, s

    def input_map_params(self) -> int:
        return self.rnn.weight_ih_l0.numel()

    def describe(self) -> dict:
        return self.info


def _modes(explicit, hint, size: int, d: int, what: str) -> list[int]:
    """The cell config's modes win, then the task's hint (if it multiplies to size), then d balanced factors."""
    if explicit is not None:
        return check_modes(list(explicit), size, what)
    if hint is not None and math.prod(hint) == size:
        return list(hint)
    return factorize(size, d)


KERNELS = ("auto", "torch", "loop")


def check_kernel(cfg: dict) -> str:
    """`cell.kernel` of a dense cell: torch (torch.nn.LSTM/GRU), auto (torch.nn's module, run by whichever of
    torch.nn and our fused loop is faster for the device and shape: `loop_is_faster`) or loop (our time loop with a
    dense input map, RecurrentLayer's parameters: the factorized cells' code with W dense)."""
    kernel = cfg["kernel"]  # configs saved before the key get kernel=torch from engine.checkpoint.upgrade_config
    if kernel not in KERNELS:
        raise UserError(f"cell.kernel={kernel!r}; choose one of: {', '.join(KERNELS)}")
    return kernel


@functools.cache
def onednn_autocast_lstm_ok(dtype: torch.dtype) -> bool:
    """Whether torch.nn.LSTM runs under CPU autocast to `dtype` here (checked once per dtype): on a full sequence it
    calls oneDNN's LSTM, which refuses bfloat16 on CPUs without AVX-512 ("could not create a primitive descriptor
    for the LSTM forward propagation primitive", on an AMD EPYC with AVX2)."""
    try:
        with torch.autocast("cpu", dtype):
            nn.LSTM(2, 2)(torch.zeros(1, 1, 2))
        return True
    except RuntimeError:
        return False


@contextlib.contextmanager
def _onednn_off():
    """oneDNN disabled for the block (torch's own CPU kernels run instead), then restored."""
    was = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(was)


def loop_is_faster(base: str, input_size: int, hidden_size: int, device_type: str) -> bool:
    """Whether our fused loop beats torch.nn for a dense cell on this device, measured with `tlstm bench` (1 CPU
    thread, training step with fused Adam): on a CPU for the GRU (1.14-1.31x nn.GRU at B32 x T100, 256 -> 512, on an
    Intel Xeon and an AMD EPYC) and for an LSTM wider in than out (at UCF11's 57,600 -> 256 1.8x nn.LSTM + Adam on
    the AMD machine, 2.8x on the Intel one: oneDNN's LSTM also computes the input gradient nobody asked for), while
    nn.LSTM is as fast or ~5% ahead at 256 -> 512. On a GPU cuDNN runs the whole sequence in a few kernels:
    torch.nn."""
    return device_type == "cpu" and (base == "gru" or input_size > hidden_size)


def build_recurrent(cfg: dict, input_size: int, hidden_size: int, in_modes=None, hidden_modes=None) -> RecurrentNet:
    """Build the LSTM/GRU net of a cell config (`lstm`, `gru`, `tt`, `bt`, `cp`, `tucker`)."""
    base = cfg["base"]
    if base not in GATES:
        raise UserError(f"unknown cell.base {base!r}; choose lstm or gru")
    fmt = cfg["format"]
    H = int(cfg["hidden_size"] or hidden_size)
    n_layers = int(cfg["layers"])
    if n_layers < 1:
        raise UserError(f"cell.layers must be >= 1, got {n_layers}")
    dropout = float(cfg["dropout"])
    rec_dropout = float(cfg["recurrent_dropout"])
    activation = cfg["gate_activation"]
    factorize_hidden = bool(cfg["factorize_hidden"])
    reset_after = bool(cfg["reset_after"])
    gates = native.check_mode(cfg["gates"])  # saved before the key: gates=torch (engine.checkpoint.upgrade_config)
    G = GATES[base]
    info = {"base": base, "format": fmt, "hidden_size": H, "layers": n_layers}

    plain = rec_dropout == 0.0 and activation == "sigmoid" and not factorize_hidden
    kernel = check_kernel(cfg) if fmt == "dense" else None
    if plain and kernel in ("torch", "auto") and (base == "lstm" or reset_after):
        torch_nn = f"torch.nn.{base.upper()}"
        on_cpu = "our fused loop" if loop_is_faster(base, input_size, H, "cpu") else torch_nn
        name = torch_nn if kernel == "torch" else f"auto: on a CPU {on_cpu}, on a GPU {torch_nn} ({torch_nn}'s weights)"
        return FusedRecurrent(base, input_size, H, n_layers, dropout, info | {"kernel": name}, kernel, gates)

    d = int(cfg["d"])
    hm = _modes(cfg["hidden_modes"], hidden_modes, H, d, "cell.hidden_modes")
    out_modes = gate_modes(hm, G, cfg["gate_mode"])
    rank, blocks, forward = cfg["rank"], int(cfg["blocks"]), cfg["forward"]
    layers = []
    for i in range(n_layers):
        if i == 0:
            im = _modes(cfg["in_modes"], in_modes, input_size, d, "cell.in_modes")
            info.update(in_modes=im, hidden_modes=hm, out_modes=out_modes)
        else:
            im = hm
        imap = build_map(fmt, im, out_modes, rank=rank, blocks=blocks, forward=forward)
        hmap = build_map(fmt, hm, out_modes, rank=rank, blocks=blocks, forward=forward) if factorize_hidden else None
        layers.append(RecurrentLayer(base, imap, H, hmap, dropout, rec_dropout, activation, reset_after, gates))
    if fmt == "dense" and plain:
        info["kernel"] = "tensorlstm fused loop"
    if fmt != "dense":
        info.update(rank=rank, blocks=blocks if fmt == "bt" else None, gate_mode=cfg["gate_mode"],
                    factorize_hidden=factorize_hidden)
    return StackedRecurrent(layers, info)

