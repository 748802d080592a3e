"""The LSTM / GRU time loop as one autograd node with a hand-written backward over the whole sequence.

Autograd over the plain loop records ~20 nodes per step (addmm, split, sigmoid, tanh, mul, ...) and runs
their backward one by one, each with its own temporaries and a zero-filled or concatenated gradient. Here
the forward runs the loop without recording, writing every step's activated gates, cell state and output
into preallocated (T, B, .) buffers; the backward walks the steps in reverse with a few in-place ops per
step (``sigmoid_backward`` / ``tanh_backward`` give a gate's pre-activation gradient in one op) and a single
``addmm`` for dL/dh_{t-1}, and then forms dL/dU as ONE (H x T*B) @ (T*B x G) product, on torch's matmul (on an
AMD EPYC Zen 3 (AVX2) it beat oneDNN, which needs both operands transposed into copies, by 6-8% per training step
at the bench's sequence shape, 9 interleaved rounds).

Exactness: the forward computes the same expressions as ``RecurrentLayer.cell`` (tests compare it in float64 with
torch.nn.LSTM / torch.nn.GRU and with the general loop, and run gradcheck, with either gate kernels); the order of
a few operations differs (the input bias is added inside the step, tanh goes through the sigmoid), so float64
results agree to ~1e-15, not bit for bit. The layer uses it for sigmoid gates outside autocast (LSTM, reset-after
and reset-before GRU, with or without lengths); hard_sigmoid gates and autocast take the general autograd loop.

The elementwise part of each step is a "gate kernel" (forward and backward, one per cell form) of a `gates` object:
`native.Kernels` (tensorlstm/native.cpp compiled for this machine: one pass per step on a CPU in float32 /
float64, ``cell.gates=native``) or `TorchGates` below (the same formulas in plain torch ops: any device and dtype).

Inputs (all per layer): xw (T, B, G) = x W for all steps; the input bias b (G,), added inside the loop (the native
kernels add it in the step, TorchGates to all steps at once); U (H, G); the initial state; an optional
recurrent-dropout mask (B, H) applied to h_{t-1} before U; for the reset-after GRU the recurrent-side bias
``bias_hu`` = [0, 0, b_hn] (G,) added inside h U; an optional ``alive`` (T, B, 1) mask from the lengths
(``alive_mask``): a finished sequence outputs zeros and keeps its last state, as in the general loop.
"""

from __future__ import annotations

import torch

from tensorlstm.tensor.kernels import _linear, onednn_linear_ok, transposed_steps

_sig_bwd = torch.ops.aten.sigmoid_backward
_tanh_bwd = torch.ops.aten.tanh_backward


class StepMatmul:
    """``other + x @ W`` for the T products of one sequence with the same W (K, N).

    On a CPU in float32 the weight is packed once for oneDNN (``torch.ops.mkldnn``, what torch.compile's CPU
    backend emits for linear layers) and every step runs oneDNN's small-M GEMM: measured 0.70 ms against
    1.06 ms for ``torch.addmm`` at 32 x 512 @ 512 x 2048 on one thread, the gap by which torch.nn.LSTM's
    oneDNN cell beat this loop. Elsewhere (CUDA, float64, a torch without oneDNN) it is ``torch.addmm``.
    """

    def __init__(self, W: torch.Tensor, rows: int) -> None:
        self.W, self.packed = W, None
        cpu_float = W.device.type == "cpu" and W.dtype == torch.float32
        if cpu_float and rows > 0 and W.numel() > 0 and onednn_linear_ok(packed=True):
            try:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(W.t().contiguous(), rows)
            except RuntimeError:  # pragma: no cover - a build without the packed-linear kernels
                self.packed = None

    def __call__(self, x: torch.Tensor, other: torch.Tensor | None = None) -> torch.Tensor:
        if self.packed is None:
            return x @ self.W if other is None else torch.addmm(other, x, self.W)
        if other is None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")
        return torch.ops.mkldnn._linear_pointwise.binary(x, other, self.packed, None, "add")



class TransposedStep:
    """x -> (x @ W)^T, (N, B) for x (B, K) and W (K, N), by oneDNN with W^T as the left operand: the form of the
    LSTM loop's per-step products where `transposed_steps` holds (the gate kernels read the result transposed).

    Why: oneDNN's float32 GEMM ran (N x K) @ (K x B) faster than the packed B-row product of StepMatmul on an
    AVX2 CPU (AMD EPYC without AVX-512, 1 thread, medians of 30 interleaved rounds, three runs: 32 x 512 @ 512 x
    2048 7-17% faster, 1.02 against 1.11 ms in the steadiest run; the backward's 32 x 2048 @ 2048 x 512 7-17%, 0.97
    against 1.04 ms; at the GRU's 512 x 1536 only 5-6%, so the GRU loops keep StepMatmul)."""

    def __init__(self, W: torch.Tensor) -> None:
        self.Wt = W.t().contiguous()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _linear(self.Wt, x)


def _zeros_if_none(g: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if g is None else g


def _states(h0: torch.Tensor, T: int) -> torch.Tensor:
    """The loops' hidden states, time-major (T + 1, B, H) with h0 at 0: each step writes its output into a contiguous
    slab, which the next step's product reads as is (oneDNN copied a strided (B, H) column of a batch-first output
    at every step), and the rows of dL/dU are hs[:-1] without a cat (training steps at the sequence shape measured
    1.00-1.015x the batch-first buffer's, interleaved: within the noise)."""
    hs = h0.new_empty(T + 1, *h0.shape)
    hs[0] = h0
    return hs


def _batch_first(hs: torch.Tensor) -> torch.Tensor:
    """The (B, T, H) output the loops return: the states after each step, one copy."""
    return hs[1:].transpose(0, 1).contiguous()


def _step_inputs(hs: torch.Tensor, h0: torch.Tensor, alive, hst, mask) -> torch.Tensor:
    """(T, B, H): the state each step's product read (masked by the recurrent dropout), the rows of dL/dU."""
    rows = hs[:-1] if alive is None else torch.cat([h0.unsqueeze(0), hst[:-1]])
    return rows if mask is None else rows * mask


def _time_major(gys: torch.Tensor | None, hs: torch.Tensor) -> torch.Tensor:
    """The (B, T, H) output gradient as a contiguous (T, B, H) tensor (zeros when None); hs: the (T + 1, B, H)
    states."""
    if gys is None:
        return hs.new_zeros(hs.shape[0] - 1, *hs.shape[1:])
    return gys.transpose(0, 1).contiguous()


def alive_mask(lengths: torch.Tensor, T: int, like: torch.Tensor) -> torch.Tensor:
    """(T, B, 1) in like's dtype: 1 where step t < lengths[b] (the sequence still runs), else 0."""
    steps = torch.arange(T, device=like.device).unsqueeze(1)
    return (steps < lengths.to(like.device).unsqueeze(0)).to(like.dtype).unsqueeze(-1)


def _hold(alive: torch.Tensor, t: int, new: torch.Tensor, old: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The state after step t: `new` where the sequence runs, `old` (frozen) where it has ended."""
    return torch.where(alive[t].bool(), new, old, out=out)


class TorchGates:
    """native.cpp's kernels in torch ops, with the same operands (see there): the path on a GPU, in other dtypes,
    without a C++ compiler and under ``cell.gates=torch``."""

    @staticmethod
    def lstm_forward(H, a, bias, c_prev, c, tc, h) -> None:  # noqa: D102
        if bias is not None:
            a.add_(bias)
        # one sigmoid over all gates; g = tanh(x) = 2 sigmoid(2x) - 1 (torch's tanh costs ~4 sigmoids here)
        g = a[:, 2 * H : 3 * H]
        g.mul_(2.0)
        a.sigmoid_()
        g.mul_(2.0).sub_(1.0)
        # c = f * c + i * g, h = o * tanh(c): the order of RecurrentLayer.cell
        torch.mul(a[:, H : 2 * H], c_prev, out=c)
        c.addcmul_(a[:, :H], g)
        torch.mul(c, 2.0, out=tc).sigmoid_().mul_(2.0).sub_(1.0)
        torch.mul(a[:, 3 * H :], tc, out=h)

    @staticmethod
    def lstm_backward(H, dh, dc, a, c_prev, tc, da) -> None:  # noqa: D102
        i, f, g, o = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
        tmp = dh.new_empty(dh.shape[0], 2 * H)
        # o: dh * tanh(c) through the sigmoid; c: dc += dh * o through the tanh
        torch.mul(dh, tc, out=tmp[:, :H])
        _sig_bwd(tmp[:, :H], o, grad_input=da[:, 3 * H :])
        torch.mul(dh, o, out=tmp[:, :H])
        dc.add_(_tanh_bwd(tmp[:, :H], tc))
        # i and f in one sigmoid_backward: (dc * g, dc * c_{t-1})
        torch.mul(dc, g, out=tmp[:, :H])
        torch.mul(dc, c_prev, out=tmp[:, H:])
        _sig_bwd(tmp, a[:, : 2 * H], grad_input=da[:, : 2 * H])
        torch.mul(dc, i, out=tmp[:, :H])
        _tanh_bwd(tmp[:, :H], g, grad_input=da[:, 2 * H : 3 * H])
        dc.mul_(f)

    @staticmethod
    def lstm_forward_t(H, xw, bias, gT, c_prev, c, tc, h, a) -> None:  # noqa: D102
        torch.add(xw, gT.t(), out=a)
        TorchGates.lstm_forward(H, a, bias, c_prev, c, tc, h)

    @staticmethod
    def lstm_backward_t(H, dc, g, dhT, a, c_prev, tc, da) -> None:  # noqa: D102
        dh = torch.zeros_like(dc) if g is None else g.clone()
        if dhT is not None:
            dh.add_(dhT.t())
        TorchGates.lstm_backward(H, dh, dc, a, c_prev, tc, da)

    @staticmethod
    def gru_forward(H, xw, bias, hu, h_prev, a, h) -> None:  # noqa: D102
        if bias is not None:
            xw = xw + bias
        torch.add(xw[:, : 2 * H], hu[:, : 2 * H], out=a[:, : 2 * H]).sigmoid_()
        # n = tanh(xw_n + r * hu_n), as 2 sigmoid(2x) - 1 (see lstm_forward)
        torch.addcmul(xw[:, 2 * H :], a[:, :H], hu[:, 2 * H :], out=a[:, 2 * H :])
        a[:, 2 * H :].mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)
        torch.lerp(a[:, 2 * H :], h_prev, a[:, H : 2 * H], out=h)

    @staticmethod
    def gru_backward(H, dh, a, hu, h_prev, g, dhu, dn, carry) -> None:  # noqa: D102
        r, z, n = a[:, :H], a[:, H : 2 * H], a[:, 2 * H :]
        TorchGates.gru_before_backward_n(H, dh, z, n, h_prev, dhu[:, H : 2 * H], dn)  # z and n: as both forms
        tmp = torch.empty_like(dn)
        # r: dn * hu_n; hu_n: dn * r
        torch.mul(dn, hu[:, 2 * H :], out=tmp)
        _sig_bwd(tmp, r, grad_input=dhu[:, :H])
        torch.mul(dn, r, out=dhu[:, 2 * H :])
        torch.mul(dh, z, out=carry)
        if g is not None:
            carry.add_(g)

    @staticmethod
    def gru_before_rz(H, rz, hd, rh) -> None:  # noqa: D102
        rz.sigmoid_()
        torch.mul(rz[:, :H], hd, out=rh)

    @staticmethod
    def gru_before_n(H, n, h_prev, z, h) -> None:  # noqa: D102
        n.mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)  # tanh as 2 sigmoid(2x) - 1 (see lstm_forward)
        torch.lerp(n, h_prev, z, out=h)

    @staticmethod
    def gru_before_backward_n(H, dh, z, n, h_prev, dz, dn) -> None:  # noqa: D102
        tmp = torch.empty_like(dn)
        # z: dh * (h_{t-1} - n); n: dh * (1 - z)
        torch.sub(h_prev, n, out=tmp).mul_(dh)
        _sig_bwd(tmp, z, grad_input=dz)
        torch.addcmul(dh, dh, z, value=-1, out=tmp)
        _tanh_bwd(tmp, n, grad_input=dn)

    @staticmethod
    def gru_before_backward_r(H, drh, hd, r, dr, dh, z, g, carry) -> None:  # noqa: D102
        tmp = torch.empty_like(drh)
        torch.mul(drh, hd, out=tmp)
        _sig_bwd(tmp, r, grad_input=dr)
        if carry is not None:
            torch.mul(drh, r, out=carry).addcmul_(dh, z)
            if g is not None:
                carry.add_(g)


def _gates(gates, xw: torch.Tensor, bias: torch.Tensor | None, *state: torch.Tensor):
    """(kernels, xw, the bias operand of the forward kernels, *state): the native kernels add the bias inside the
    step (a row-stride-0 operand) and read rows with contiguous columns; TorchGates (also where `gates` is None)
    gets the bias added to all steps at once, in one op."""
    if gates is None or gates is TorchGates:
        return (TorchGates, xw if bias is None else xw + bias, None, *state)
    B, G = xw.shape[1], xw.shape[2]
    step_bias = None if bias is None else bias.contiguous().expand(B, G)
    return (gates, xw.contiguous(), step_bias, *(t.contiguous() for t in state))


def _bias_grad(needed: bool, dxw: torch.Tensor) -> torch.Tensor | None:
    """dL/d(bias): the sum of dL/dxw over all steps and rows."""
    return dxw.reshape(-1, dxw.shape[-1]).sum(0) if needed else None


def _lstm_backward_t(k, gys, gh, gc, acts, cs, tcs, c0, U, da_all):
    """LSTMSequence's backward loop with transposed step products (`TransposedStep`; no mask, no lengths): fills
    da_all, returns dL/dh0, dL/dc0. Each step's dL/dh_t = gys[t] + (U da_{t+1}^T)^T, the second part read
    transposed by the kernel."""
    T = cs.shape[0]
    H = cs.shape[2]
    dc = _zeros_if_none(gc, c0).clone(memory_format=torch.contiguous_format)
    g = gys[T - 1] if gh is None else gys[T - 1] + gh
    dhT = None
    Uh = TransposedStep(U.t())  # da -> (da U^T)^T = U da^T (H, B)
    for t in range(T - 1, -1, -1):
        k.lstm_backward_t(H, dc, g, dhT, acts[t], cs[t - 1] if t > 0 else c0, tcs[t], da_all[t])
        dhT = Uh(da_all[t])
        g = gys[t - 1] if t > 0 else None
    return dhT.t().contiguous(), dc


class LSTMSequence(torch.autograd.Function):
    """(xw, bias, U, h0, c0, mask, alive, gates) -> (ys (B, T, H), h_T, c_T); gate order i, f, g, o as in torch.nn.LSTM;
    xw = x W for all steps, the bias (G,) or None added inside the loop.

    ``alive`` (T, B, 1) or None (every sequence runs all T steps): variable lengths as in the general loop, where
    a finished sequence outputs zeros and keeps its last state (h_T, c_T are each sequence's last state).
    ``gates``: the gate kernels (see the module's docstring; None: TorchGates)."""

    @staticmethod
    def forward(ctx, xw, bias, U, h0, c0, mask, alive=None, gates=None):  # noqa: D102
        k, xw, step_bias, h0, c0 = _gates(gates, xw, bias, h0, c0)
        T, B, G = xw.shape
        H = G // 4
        acts = []  # activated gates per step (B, G)
        cs = xw.new_empty(T, B, H)
        tcs = xw.new_empty(T, B, H)  # tanh(c_t)
        hs = _states(h0, T)
        # with lengths the carried states differ from the step's new values: kept apart for the backward
        hst = cst = None
        if alive is not None:
            hst, cst = xw.new_empty(T, B, H), xw.new_empty(T, B, H)
        h, c = h0, c0
        # the transposed products: the native kernels, float32, no dropout mask or lengths
        flip = k is not TorchGates and xw.dtype == torch.float32 and mask is None and alive is None \
            and transposed_steps()
        hU = TransposedStep(U) if flip else StepMatmul(U, B)
        for t in range(T):
            if flip:
                a = xw.new_empty(B, G)
                k.lstm_forward_t(H, xw[t], step_bias, hU(h), c, cs[t], tcs[t], hs[t + 1], a)
                acts.append(a)
                h, c = hs[t + 1], cs[t]
                continue
            a = hU(h if mask is None else h * mask, xw[t])
            acts.append(a)
            k.lstm_forward(H, a, step_bias, c, cs[t], tcs[t], hs[t + 1])
            if alive is None:
                h, c = hs[t + 1], cs[t]
            else:
                h, c = _hold(alive, t, hs[t + 1], h, hst[t]), _hold(alive, t, cs[t], c, cst[t])
                hs[t + 1].mul_(alive[t])  # a finished sequence outputs zeros
        ctx.save_for_backward(cs, tcs, hs, U, h0, c0, mask, alive, hst, cst)
        ctx.acts, ctx.gates, ctx.flip = acts, k, flip  # internal tensors, never handed out
        return _batch_first(hs), h.clone(), c.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gys, gh, gc):  # noqa: D102
        cs, tcs, hs, U, h0, c0, mask, alive, hst, cst = ctx.saved_tensors
        acts, k = ctx.acts, ctx.gates
        T, B, H = cs.shape
        G = 4 * H
        # time-major and contiguous: each step's dL/dh_t is added inside the step product, which reads a strided
        # (B, H) slice of the batch-first gradient ~7% slower than a contiguous slab (one copy here)
        gys = _time_major(gys, hs)
        da_all = cs.new_empty(T, B, G)  # dL/d(pre-activation gates) = dL/dxw
        if ctx.flip:
            dh, dc = _lstm_backward_t(k, gys, gh, gc, acts, cs, tcs, c0, U, da_all)
        else:
            dU = StepMatmul(U.t(), B)  # da -> da @ U^T
            if alive is None:
                dc = _zeros_if_none(gc, c0).clone(memory_format=torch.contiguous_format)
                dh = gys[T - 1] if gh is None else gys[T - 1] + gh
            else:  # dH, dC: gradients of the carried state after step t
                dH, dC = _zeros_if_none(gh, h0).contiguous(), _zeros_if_none(gc, c0).contiguous()
            for t in range(T - 1, -1, -1):
                a, da = acts[t], da_all[t]
                if alive is None:
                    c_prev = cs[t - 1] if t > 0 else c0
                else:  # the step's own h and c get the gradient only while the sequence runs
                    c_prev = cst[t - 1] if t > 0 else c0
                    dh = (gys[t] + dH).mul_(alive[t])
                    dc = dC * alive[t]
                k.lstm_backward(H, dh, dc, a, c_prev, tcs[t], da)  # da; dc becomes dL/dc_{t-1} through f
                if alive is not None:  # a finished sequence hands its state's gradient on unchanged
                    held = 1.0 - alive[t]
                    dC = dc.addcmul_(dC, held)
                    through = dU(da) if mask is None else dU(da).mul_(mask)
                    dH = through.addcmul_(dH, held)
                    continue
                if t > 0:
                    dh = dU(da, gys[t - 1]) if mask is None else torch.addcmul(gys[t - 1], dU(da), mask)
                else:
                    dh = dU(da) if mask is None else dU(da) * mask
        gU = None
        if ctx.needs_input_grad[2]:
            rows = _step_inputs(hs, h0, alive, hst, mask)
            gU = rows.reshape(-1, H).t() @ da_all.reshape(-1, G)
        if alive is not None:
            dh, dc = dH, dC
        return da_all, _bias_grad(ctx.needs_input_grad[1], da_all), gU, dh, dc, None, None, None


class GRUSequence(torch.autograd.Function):
    """Reset-after GRU (torch.nn.GRU's form): (xw, bias, U, bias_hu, h0, mask, alive, gates) -> (ys (B, T, H), h_T);
    gates r, z, n.

    hu = h U + [0, 0, b_hn]; r, z = sigmoid(xw_rz + hu_rz); n = tanh(xw_n + r * hu_n); h' = lerp(n, h, z).
    ``alive``, ``gates``: as in LSTMSequence.
    """

    @staticmethod
    def forward(ctx, xw, bias, U, bias_hu, h0, mask, alive=None, gates=None):  # noqa: D102
        k, xw, step_bias, h0 = _gates(gates, xw, bias, h0)
        T, B, G = xw.shape
        H = G // 3
        hus = []  # h U + bias_hu per step
        acts = torch.empty_like(xw)  # r, z, n
        hs = _states(h0, T)
        hst = None if alive is None else xw.new_empty(T, B, H)  # carried states (lengths only)
        h = h0
        hU = StepMatmul(U, B)
        bias = bias_hu.expand(B, G)
        for t in range(T):
            hu = hU(h if mask is None else h * mask, bias)
            hus.append(hu)
            k.gru_forward(H, xw[t], step_bias, hu, h, acts[t], hs[t + 1])
            if alive is None:
                h = hs[t + 1]
            else:
                h = _hold(alive, t, hs[t + 1], h, hst[t])
                hs[t + 1].mul_(alive[t])
        ctx.save_for_backward(acts, hs, U, h0, mask, alive, hst)
        ctx.hus, ctx.gates = hus, k  # internal tensors, never handed out
        return _batch_first(hs), h.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gys, gh):  # noqa: D102
        acts, hs, U, h0, mask, alive, hst = ctx.saved_tensors
        hus, k = ctx.hus, ctx.gates
        T, B, G = acts.shape
        H = G // 3
        dhu_all = torch.empty_like(acts)  # dL/d(h U + bias_hu)
        dn_all = acts.new_empty(T, B, H)  # dL/d(n pre-activation) = dL/dxw_n
        carry = acts.new_empty(B, H)  # dh z (+ g_{t-1}): the part of dL/dh_{t-1} beside the step product
        gys = _time_major(gys, hs)
        if alive is None:
            dh = gys[T - 1] if gh is None else gys[T - 1] + gh
        else:
            dH = _zeros_if_none(gh, h0).contiguous()  # gradient of the carried state after step t
        dU = StepMatmul(U.t(), B)
        for t in range(T - 1, -1, -1):
            if alive is None:
                h_prev = hs[t]
            else:
                h_prev = hst[t - 1] if t > 0 else h0
                dh = (gys[t] + dH).mul_(alive[t])
            g_next = gys[t - 1] if alive is None and t > 0 else None
            k.gru_backward(H, dh, acts[t], hus[t], h_prev, g_next, dhu_all[t], dn_all[t], carry)
            if mask is None and alive is None:  # dL/dh_{t-1} = dhu U^T + carry in one product
                dh = dU(dhu_all[t], carry)
                continue
            d_hd = dU(dhu_all[t])
            if mask is not None:
                d_hd.mul_(mask)
            d_hd.add_(carry)
            if alive is None:
                dh = d_hd
            else:  # through the step, plus the held state's gradient where the sequence ended
                dH = d_hd.addcmul_(dH, 1.0 - alive[t])
        if alive is not None:
            dh = dH
        dxw = torch.cat([dhu_all[..., : 2 * H], dn_all], dim=-1)
        gU = None
        if ctx.needs_input_grad[2]:
            rows = _step_inputs(hs, h0, alive, hst, mask)
            gU = rows.reshape(-1, H).t() @ dhu_all.reshape(-1, G)
        return (dxw, _bias_grad(ctx.needs_input_grad[1], dxw), gU, _bias_grad(ctx.needs_input_grad[3], dhu_all),
                dh, None, None, None)


class GRUBeforeSequence(torch.autograd.Function):
    """Reset-before GRU (Cho et al. / Keras / Tjandra): (xw, bias, U, h0, mask, alive, gates) -> (ys (B, T, H), h_T).

    r, z = sigmoid(xw_rz + h U_rz); n = tanh(xw_n + (r * h) U_n); h' = lerp(n, h, z): two step products, the
    second on r * h. dL/dU is formed after the loop as h^T d(rz) and (r h)^T dn over all steps at once."""

    @staticmethod
    def forward(ctx, xw, bias, U, h0, mask, alive=None, gates=None):  # noqa: D102
        k, h0 = gates or TorchGates, h0.contiguous()  # the bias goes into the per-step slabs below
        T, B, G = xw.shape
        H = G // 3
        if bias is not None:  # added as the per-step slabs are made contiguous (one pass either way)
            xw_rz, xw_n = xw[..., : 2 * H] + bias[: 2 * H], xw[..., 2 * H :] + bias[2 * H :]
        else:
            xw_rz, xw_n = xw[..., : 2 * H].contiguous(), xw[..., 2 * H :].contiguous()
        rzs, ns = [], []  # activated r, z (B, 2H) and n (B, H) per step
        rhs = xw.new_empty(T, B, H)  # r * h_{t-1} (masked), the left operand of U_n
        hs = _states(h0, T)
        hst = None if alive is None else xw.new_empty(T, B, H)
        h = h0
        U_rz, U_n = StepMatmul(U[:, : 2 * H], B), StepMatmul(U[:, 2 * H :], B)
        for t in range(T):
            hd = h if mask is None else h * mask
            rz = U_rz(hd, xw_rz[t])
            k.gru_before_rz(H, rz, hd, rhs[t])
            rzs.append(rz)
            n = U_n(rhs[t], xw_n[t])
            k.gru_before_n(H, n, h, rz[:, H:], hs[t + 1])
            ns.append(n)
            if alive is None:
                h = hs[t + 1]
            else:
                h = _hold(alive, t, hs[t + 1], h, hst[t])
                hs[t + 1].mul_(alive[t])
        ctx.save_for_backward(rhs, hs, U, h0, mask, alive, hst)
        ctx.rzs, ctx.ns, ctx.gates = rzs, ns, k  # internal tensors, never handed out
        return _batch_first(hs), h.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gys, gh):  # noqa: D102
        rhs, hs, U, h0, mask, alive, hst = ctx.saved_tensors
        rzs, ns, k = ctx.rzs, ctx.ns, ctx.gates
        T, B, H = rhs.shape
        drz_all = rhs.new_empty(T, B, 2 * H)  # dL/d(r, z pre-activations)
        dn_all = rhs.new_empty(T, B, H)  # dL/d(n pre-activation)
        gys = _time_major(gys, hs)
        # without recurrent dropout or lengths, dL/dh_{t-1} = d(rz) U_rz^T + carry, carry = d(rh) r + dh z + g_{t-1}
        carry = rhs.new_empty(B, H) if mask is None and alive is None else None
        if alive is None:
            dh = gys[T - 1] if gh is None else gys[T - 1] + gh
        else:
            dH = _zeros_if_none(gh, h0).contiguous()
        dU_rz, dU_n = StepMatmul(U[:, : 2 * H].t(), B), StepMatmul(U[:, 2 * H :].t(), B)
        for t in range(T - 1, -1, -1):
            rz, n, drz, dn = rzs[t], ns[t], drz_all[t], dn_all[t]
            r, z = rz[:, :H], rz[:, H:]
            if alive is None:
                h_prev = hs[t]
            else:
                h_prev = hst[t - 1] if t > 0 else h0
                dh = (gys[t] + dH).mul_(alive[t])
            hd_prev = h_prev if mask is None else h_prev * mask
            k.gru_before_backward_n(H, dh, z, n, h_prev, drz[:, H:], dn)
            d_rh = dU_n(dn)  # dL/d(r h_{t-1})
            k.gru_before_backward_r(H, d_rh, hd_prev, r, drz[:, :H], dh, z, gys[t - 1] if t > 0 else None, carry)
            if carry is not None:
                dh = dU_rz(drz, carry)
                continue
            # dL/dh_{t-1} = (d(rz) U_rz^T + d(rh) r) * mask + dh * z (+ g_{t-1})
            through = dU_rz(drz).addcmul_(d_rh, r)
            if mask is not None:
                through.mul_(mask)
            through.addcmul_(dh, z)
            if alive is not None:
                dH = through.addcmul_(dH, 1.0 - alive[t])
            else:
                dh = through if t == 0 else through.add_(gys[t - 1])
        if alive is not None:
            dh = dH
        gU = None
        if ctx.needs_input_grad[2]:
            rows = _step_inputs(hs, h0, alive, hst, mask)
            gU = torch.cat([rows.reshape(-1, H).t() @ drz_all.reshape(-1, 2 * H),
                            rhs.reshape(-1, H).t() @ dn_all.reshape(-1, H)], dim=1)
        dxw = torch.cat([drz_all, dn_all], dim=-1)
        return dxw, _bias_grad(ctx.needs_input_grad[1], dxw), gU, dh, None, None, None
