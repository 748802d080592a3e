"""The LSTM / GRU time loop as one autograd node with a hand-written backward over the whole sequence.

Autograd over the plain loop records ~20 nodes per step (addmm, split, sigmoid, tanh, mul, ...) and runs
their backward one by one, each with its own temporaries and a zero-filled or concatenated gradient. Here
the forward runs the loop without recording, writing every step's activated gates, cell state and output
into preallocated (T, B, .) buffers; the backward walks the steps in reverse with a few in-place ops per
step (``sigmoid_backward`` / ``tanh_backward`` give a gate's pre-activation gradient in one op) and a single
``addmm`` for dL/dh_{t-1}, and then forms dL/dU as ONE (H x T*B) @ (T*B x G) product.

Exactness: the forward computes the same expressions as ``RecurrentLayer.cell`` in the same order of
operations (tests compare it in float64 with torch.nn.LSTM / torch.nn.GRU and run gradcheck), and only
plain torch ops are used, so it runs on any device. The layer uses it when the loop has no ``lengths``,
no autocast and sigmoid gates; everything else takes the general autograd loop.

Inputs (all per layer): xw (T, B, G) the projected inputs with the bias folded in; U (H, G); the initial
state; an optional recurrent-dropout mask (B, H) applied to h_{t-1} before U; for the reset-after GRU the
recurrent-side bias ``bias_hu`` = [0, 0, b_hn] (G,) added inside h U.
"""

from __future__ import annotations

import torch

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
        if W.device.type == "cpu" and W.dtype == torch.float32 and rows > 0 and W.numel() > 0 and _onednn_ok():
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


_ONEDNN: list[bool] = []


def _onednn_ok() -> bool:
    """Whether the packed oneDNN linear runs here and agrees with a plain matmul (checked once)."""
    if not _ONEDNN:
        ok = False
        try:
            if torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
                g = torch.Generator().manual_seed(0)
                w = torch.randn(8, 16, generator=g)
                x = torch.randn(3, 8, generator=g)
                packed = torch.ops.mkldnn._reorder_linear_weight(w.t().contiguous(), 3)
                y = torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
                ok = torch.allclose(y, x @ w, atol=1e-5)
        except (RuntimeError, AttributeError):
            ok = False
        _ONEDNN.append(ok)
    return _ONEDNN[0]


def _zeros_if_none(g: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if g is None else g


def _time_major(gys: torch.Tensor | None, ys: torch.Tensor) -> torch.Tensor:
    """The (B, T, H) output gradient as a contiguous (T, B, H) tensor (zeros when None)."""
    if gys is None:
        return ys.new_zeros(ys.shape[1], ys.shape[0], ys.shape[2])
    return gys.transpose(0, 1).contiguous()


class LSTMSequence(torch.autograd.Function):
    """(xw, U, h0, c0, mask) -> (ys (B, T, H), c_T (B, H)); gate order i, f, g, o as in torch.nn.LSTM."""

    @staticmethod
    def forward(ctx, xw, U, h0, c0, mask):  # noqa: D102
        T, B, G = xw.shape
        H = G // 4
        acts = []  # activated gates per step (B, G)
        cs = xw.new_empty(T, B, H)
        tcs = xw.new_empty(T, B, H)  # tanh(c_t)
        ys = xw.new_empty(B, T, H)  # batch-first output; ys[:, t] is a strided (B, H) view
        h, c = h0, c0
        hU = StepMatmul(U, B)
        for t in range(T):
            a = hU(h if mask is None else h * mask, xw[t])
            acts.append(a)
            # one sigmoid over all gates; g = tanh(x) = 2 sigmoid(2x) - 1 (torch's tanh costs ~4 sigmoids here)
            g = a[:, 2 * H : 3 * H]
            g.mul_(2.0)
            a.sigmoid_()
            g.mul_(2.0).sub_(1.0)
            # c = f * c + i * g, h = o * tanh(c): the order of RecurrentLayer.cell
            torch.mul(a[:, H : 2 * H], c, out=cs[t])
            cs[t].addcmul_(a[:, :H], g)
            torch.mul(cs[t], 2.0, out=tcs[t]).sigmoid_().mul_(2.0).sub_(1.0)
            torch.mul(a[:, 3 * H :], tcs[t], out=ys[:, t])
            h, c = ys[:, t], cs[t]
        ctx.save_for_backward(cs, tcs, ys, U, h0, c0, mask)
        ctx.acts = acts  # internal tensors, never handed out
        return ys, cs[T - 1].clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gys, gc):  # noqa: D102
        cs, tcs, ys, U, h0, c0, mask = ctx.saved_tensors
        acts = ctx.acts
        T, B, H = cs.shape
        G = 4 * H
        # time-major and contiguous: each step's dL/dh_t is added inside the step product, which reads a strided
        # (B, H) slice of the batch-first gradient ~7% slower than a contiguous slab (one copy here)
        gys = _time_major(gys, ys)
        dc = _zeros_if_none(gc, c0).clone()
        da_all = cs.new_empty(T, B, G)  # dL/d(pre-activation gates) = dL/dxw
        tmp = cs.new_empty(B, 2 * H)
        dh = gys[T - 1]
        dU = StepMatmul(U.t(), B)  # da -> da @ U^T
        for t in range(T - 1, -1, -1):
            a, da = acts[t], da_all[t]
            i, f, g, o = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
            c_prev = cs[t - 1] if t > 0 else c0
            # o: dh * tanh(c) through the sigmoid; c: dc += dh * o through the tanh
            torch.mul(dh, tcs[t], out=tmp[:, :H])
            _sig_bwd(tmp[:, :H], o, grad_input=da[:, 3 * H :])
            torch.mul(dh, o, out=tmp[:, :H])
            dc.add_(_tanh_bwd(tmp[:, :H], tcs[t]))
            # i and f in one sigmoid_backward: (dc * g, dc * c_{t-1})
            torch.mul(dc, g, out=tmp[:, :H])
            torch.mul(dc, c_prev, out=tmp[:, H:])
            _sig_bwd(tmp, a[:, : 2 * H], grad_input=da[:, : 2 * H])
            torch.mul(dc, i, out=tmp[:, :H])
            _tanh_bwd(tmp[:, :H], g, grad_input=da[:, 2 * H : 3 * H])
            dc.mul_(f)
            if t > 0:
                dh = dU(da, gys[t - 1]) if mask is None else torch.addcmul(gys[t - 1], dU(da), mask)
            else:
                dh = dU(da) if mask is None else dU(da) * mask
        gU = None
        if ctx.needs_input_grad[1]:
            hs = torch.cat([h0.unsqueeze(0), ys[:, :-1].transpose(0, 1)])  # (T, B, H), the rows of da
            if mask is not None:
                hs = hs * mask
            gU = hs.reshape(-1, H).t() @ da_all.reshape(-1, G)
        return da_all, gU, dh, dc, None


class GRUSequence(torch.autograd.Function):
    """Reset-after GRU (torch.nn.GRU's form): (xw, U, bias_hu, h0, mask) -> ys (B, T, H); gates r, z, n.

    hu = h U + [0, 0, b_hn]; r, z = sigmoid(xw_rz + hu_rz); n = tanh(xw_n + r * hu_n); h' = lerp(n, h, z).
    """

    @staticmethod
    def forward(ctx, xw, U, bias_hu, h0, mask):  # noqa: D102
        T, B, G = xw.shape
        H = G // 3
        hus = []  # h U + bias_hu per step
        acts = torch.empty_like(xw)  # r, z, n
        ys = xw.new_empty(B, T, H)
        h = h0
        hU = StepMatmul(U, B)
        bias = bias_hu.expand(B, G)
        for t in range(T):
            a = acts[t]
            hu = hU(h if mask is None else h * mask, bias)
            hus.append(hu)
            torch.add(xw[t, :, : 2 * H], hu[:, : 2 * H], out=a[:, : 2 * H]).sigmoid_()
            # n = tanh(xw_n + r * hu_n), as 2 sigmoid(2x) - 1 (see LSTMSequence)
            torch.addcmul(xw[t, :, 2 * H :], a[:, :H], hu[:, 2 * H :], out=a[:, 2 * H :])
            a[:, 2 * H :].mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)
            torch.lerp(a[:, 2 * H :], h, a[:, H : 2 * H], out=ys[:, t])
            h = ys[:, t]
        ctx.save_for_backward(acts, ys, U, h0, mask)
        ctx.hus = hus  # internal tensors, never handed out
        return ys

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gys):  # noqa: D102
        acts, ys, U, h0, mask = ctx.saved_tensors
        hus = ctx.hus
        T, B, G = acts.shape
        H = G // 3
        dhu_all = torch.empty_like(acts)  # dL/d(h U + bias_hu)
        dn_all = acts.new_empty(T, B, H)  # dL/d(n pre-activation) = dL/dxw_n
        tmp = acts.new_empty(B, H)
        gys = _time_major(gys, ys)
        dh = gys[T - 1]
        dU = StepMatmul(U.t(), B)
        for t in range(T - 1, -1, -1):
            a, dhu, dn = acts[t], dhu_all[t], dn_all[t]
            r, z, n = a[:, :H], a[:, H : 2 * H], a[:, 2 * H :]
            h_prev = ys[:, t - 1] if t > 0 else h0
            # z: dh * (h_{t-1} - n); n: dh * (1 - z)
            torch.sub(h_prev, n, out=tmp).mul_(dh)
            _sig_bwd(tmp, z, grad_input=dhu[:, H : 2 * H])
            torch.addcmul(dh, dh, z, value=-1, out=tmp)
            _tanh_bwd(tmp, n, grad_input=dn)
            # r: dn * hu_n; hu_n: dn * r
            torch.mul(dn, hus[t][:, 2 * H :], out=tmp)
            _sig_bwd(tmp, r, grad_input=dhu[:, :H])
            torch.mul(dn, r, out=dhu[:, 2 * H :])
            g_next = gys[t - 1] if t > 0 else None
            if mask is None:  # dL/dh_{t-1} = g_{t-1} + dhu U^T + dh * z, the first sum inside the step product
                d_hd = dU(dhu, g_next)
                dh = d_hd.addcmul_(dh, z)
            else:
                d_hd = dU(dhu).mul_(mask)
                d_hd.addcmul_(dh, z)
                dh = d_hd if g_next is None else d_hd.add_(g_next)
        dxw = torch.cat([dhu_all[..., : 2 * H], dn_all], dim=-1)
        gU = gb = None
        if ctx.needs_input_grad[1]:
            hs = torch.cat([h0.unsqueeze(0), ys[:, :-1].transpose(0, 1)])  # (T, B, H), the rows of da
            if mask is not None:
                hs = hs * mask
            gU = hs.reshape(-1, H).t() @ dhu_all.reshape(-1, G)
        if ctx.needs_input_grad[2]:
            gb = dhu_all.reshape(-1, G).sum(0)
        return dxw, gU, gb, dh, None
