"""The LSTM / GRU time loop as one autograd node with a hand-written backward over the whole sequence.

Autograd over the plain loop records ~20 nodes per step (addmm, split, sigmoid, tanh, mul, ...) and runs
their backward one by one, each with its own temporaries and a zero-filled or concatenated gradient. Here
the forward runs the loop without recording, writing every step's activated gates, cell state and output
into preallocated (T, B, .) buffers; the backward walks the steps in reverse with a few in-place ops per
step (``sigmoid_backward`` / ``tanh_backward`` give a gate's pre-activation gradient in one op) and a single
``addmm`` for dL/dh_{t-1}, and then forms dL/dU as ONE (H x T*B) @ (T*B x G) product.

Exactness: the forward computes the same expressions as ``RecurrentLayer.cell`` in the same order of
operations (tests compare it in float64 with torch.nn.LSTM / torch.nn.GRU and run gradcheck), and only
plain torch ops are used, so it runs on any device. The layer uses it for sigmoid gates outside autocast
(LSTM, reset-after and reset-before GRU, with or without lengths); hard_sigmoid gates and autocast take the
general autograd loop.

Inputs (all per layer): xw (T, B, G) the projected inputs with the bias folded in; U (H, G); the initial
state; an optional recurrent-dropout mask (B, H) applied to h_{t-1} before U; for the reset-after GRU the
recurrent-side bias ``bias_hu`` = [0, 0, b_hn] (G,) added inside h U; an optional ``alive`` (T, B, 1) mask
from the lengths (``alive_mask``): a finished sequence outputs zeros and keeps its last state, as in the
general loop.
"""

from __future__ import annotations

import torch

from tensorlstm.tensor.kernels import onednn_linear_ok

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



def _zeros_if_none(g: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if g is None else g


def _time_major(gys: torch.Tensor | None, ys: torch.Tensor) -> torch.Tensor:
    """The (B, T, H) output gradient as a contiguous (T, B, H) tensor (zeros when None)."""
    if gys is None:
        return ys.new_zeros(ys.shape[1], ys.shape[0], ys.shape[2])
    return gys.transpose(0, 1).contiguous()


def alive_mask(lengths: torch.Tensor, T: int, like: torch.Tensor) -> torch.Tensor:
    """(T, B, 1) in like's dtype: 1 where step t < lengths[b] (the sequence still runs), else 0."""
    steps = torch.arange(T, device=like.device).unsqueeze(1)
    return (steps < lengths.to(like.device).unsqueeze(0)).to(like.dtype).unsqueeze(-1)


def _hold(alive: torch.Tensor, t: int, new: torch.Tensor, old: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """The state after step t: `new` where the sequence runs, `old` (frozen) where it has ended."""
    return torch.where(alive[t].bool(), new, old, out=out)


class LSTMSequence(torch.autograd.Function):
    """(xw, U, h0, c0, mask, alive) -> (ys (B, T, H), h_T, c_T); gate order i, f, g, o as in torch.nn.LSTM.

    ``alive`` (T, B, 1) or None (every sequence runs all T steps): variable lengths as in the general loop, where
    a finished sequence outputs zeros and keeps its last state (h_T, c_T are each sequence's last state)."""

    @staticmethod
    def forward(ctx, xw, U, h0, c0, mask, alive=None):  # noqa: D102
        T, B, G = xw.shape
        H = G // 4
        acts = []  # activated gates per step (B, G)
        cs = xw.new_empty(T, B, H)
        tcs = xw.new_empty(T, B, H)  # tanh(c_t)
        ys = xw.new_empty(B, T, H)  # batch-first output; ys[:, t] is a strided (B, H) view
        # with lengths the carried states differ from the step's new values: kept apart for the backward
        hst = cst = None
        if alive is not None:
            hst, cst = xw.new_empty(T, B, H), xw.new_empty(T, B, H)
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
            if alive is None:
                h, c = ys[:, t], cs[t]
            else:
                h, c = _hold(alive, t, ys[:, t], h, hst[t]), _hold(alive, t, cs[t], c, cst[t])
                ys[:, t].mul_(alive[t])  # a finished sequence outputs zeros
        ctx.save_for_backward(cs, tcs, ys, U, h0, c0, mask, alive, hst, cst)
        ctx.acts = acts  # internal tensors, never handed out
        return ys, h.clone(), c.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gys, gh, gc):  # noqa: D102
        cs, tcs, ys, U, h0, c0, mask, alive, hst, cst = ctx.saved_tensors
        acts = ctx.acts
        T, B, H = cs.shape
        G = 4 * H
        # time-major and contiguous: each step's dL/dh_t is added inside the step product, which reads a strided
        # (B, H) slice of the batch-first gradient ~7% slower than a contiguous slab (one copy here)
        gys = _time_major(gys, ys)
        da_all = cs.new_empty(T, B, G)  # dL/d(pre-activation gates) = dL/dxw
        tmp = cs.new_empty(B, 2 * H)
        dU = StepMatmul(U.t(), B)  # da -> da @ U^T
        if alive is None:
            dc = _zeros_if_none(gc, c0).clone()
            dh = gys[T - 1] if gh is None else gys[T - 1] + gh
        else:  # dH, dC: gradients of the carried state after step t
            dH, dC = _zeros_if_none(gh, h0), _zeros_if_none(gc, c0)
        for t in range(T - 1, -1, -1):
            a, da = acts[t], da_all[t]
            i, f, g, o = a[:, :H], a[:, H : 2 * H], a[:, 2 * H : 3 * H], a[:, 3 * H :]
            if alive is None:
                c_prev = cs[t - 1] if t > 0 else c0
            else:  # the step's own h and c get the gradient only while the sequence runs
                c_prev = cst[t - 1] if t > 0 else c0
                dh = (gys[t] + dH).mul_(alive[t])
                dc = dC * alive[t]
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
        if ctx.needs_input_grad[1]:
            prev = ys[:, :-1].transpose(0, 1) if alive is None else hst[:-1]
            hs = torch.cat([h0.unsqueeze(0), prev])  # (T, B, H), the rows of da
            if mask is not None:
                hs = hs * mask
            gU = hs.reshape(-1, H).t() @ da_all.reshape(-1, G)
        if alive is not None:
            dh, dc = dH, dC
        return da_all, gU, dh, dc, None, None
class GRUSequence(torch.autograd.Function):
    """Reset-after GRU (torch.nn.GRU's form): (xw, U, bias_hu, h0, mask, alive) -> (ys (B, T, H), h_T); gates r, z, n.

    hu = h U + [0, 0, b_hn]; r, z = sigmoid(xw_rz + hu_rz); n = tanh(xw_n + r * hu_n); h' = lerp(n, h, z).
    ``alive``: variable lengths, as in LSTMSequence.
    """

    @staticmethod
    def forward(ctx, xw, U, bias_hu, h0, mask, alive=None):  # noqa: D102
        T, B, G = xw.shape
        H = G // 3
        hus = []  # h U + bias_hu per step
        acts = torch.empty_like(xw)  # r, z, n
        ys = xw.new_empty(B, T, H)
        hst = None if alive is None else xw.new_empty(T, B, H)  # carried states (lengths only)
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
            if alive is None:
                h = ys[:, t]
            else:
                h = _hold(alive, t, ys[:, t], h, hst[t])
                ys[:, t].mul_(alive[t])
        ctx.save_for_backward(acts, ys, U, h0, mask, alive, hst)
        ctx.hus = hus  # internal tensors, never handed out
        return ys, h.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gys, gh):  # noqa: D102
        acts, ys, U, h0, mask, alive, hst = ctx.saved_tensors
        hus = ctx.hus
        T, B, G = acts.shape
        H = G // 3
        dhu_all = torch.empty_like(acts)  # dL/d(h U + bias_hu)
        dn_all = acts.new_empty(T, B, H)  # dL/d(n pre-activation) = dL/dxw_n
        tmp = acts.new_empty(B, H)
        gys = _time_major(gys, ys)
        if alive is None:
            dh = gys[T - 1] if gh is None else gys[T - 1] + gh
        else:
            dH = _zeros_if_none(gh, h0)  # gradient of the carried state after step t
        dU = StepMatmul(U.t(), B)
        for t in range(T - 1, -1, -1):
            a, dhu, dn = acts[t], dhu_all[t], dn_all[t]
            r, z, n = a[:, :H], a[:, H : 2 * H], a[:, 2 * H :]
            if alive is None:
                h_prev = ys[:, t - 1] if t > 0 else h0
            else:
                h_prev = hst[t - 1] if t > 0 else h0
                dh = (gys[t] + dH).mul_(alive[t])
            # z: dh * (h_{t-1} - n); n: dh * (1 - z)
            torch.sub(h_prev, n, out=tmp).mul_(dh)
            _sig_bwd(tmp, z, grad_input=dhu[:, H : 2 * H])
            torch.addcmul(dh, dh, z, value=-1, out=tmp)
            _tanh_bwd(tmp, n, grad_input=dn)
            # r: dn * hu_n; hu_n: dn * r
            torch.mul(dn, hus[t][:, 2 * H :], out=tmp)
            _sig_bwd(tmp, r, grad_input=dhu[:, :H])
            torch.mul(dn, r, out=dhu[:, 2 * H :])
            if alive is not None:  # through the step, plus the held state's gradient where the sequence ended
                d_hd = dU(dhu) if mask is None else dU(dhu).mul_(mask)
                d_hd.addcmul_(dh, z)
                dH = d_hd.addcmul_(dH, 1.0 - alive[t])
                continue
            g_next = gys[t - 1] if t > 0 else None
            if mask is None:  # dL/dh_{t-1} = g_{t-1} + dhu U^T + dh * z, the first sum inside the step product
                d_hd = dU(dhu, g_next)
                dh = d_hd.addcmul_(dh, z)
            else:
                d_hd = dU(dhu).mul_(mask)
                d_hd.addcmul_(dh, z)
                dh = d_hd if g_next is None else d_hd.add_(g_next)
        if alive is not None:
            dh = dH
        dxw = torch.cat([dhu_all[..., : 2 * H], dn_all], dim=-1)
        gU = gb = None
        if ctx.needs_input_grad[1]:
            prev = ys[:, :-1].transpose(0, 1) if alive is None else hst[:-1]
            hs = torch.cat([h0.unsqueeze(0), prev])  # (T, B, H), the rows of da
            if mask is not None:
                hs = hs * mask
            gU = hs.reshape(-1, H).t() @ dhu_all.reshape(-1, G)
        if ctx.needs_input_grad[2]:
            gb = dhu_all.reshape(-1, G).sum(0)
        return dxw, gU, gb, dh, None, None


class GRUBeforeSequence(torch.autograd.Function):
    """Reset-before GRU (Cho et al. / Keras / Tjandra): (xw, U, h0, mask, alive) -> (ys (B, T, H), h_T).

    r, z = sigmoid(xw_rz + h U_rz); n = tanh(xw_n + (r * h) U_n); h' = lerp(n, h, z): two step products, the
    second on r * h. dL/dU is formed after the loop as h^T d(rz) and (r h)^T dn over all steps at once."""

    @staticmethod
    def forward(ctx, xw, U, h0, mask, alive=None):  # noqa: D102
        T, B, G = xw.shape
        H = G // 3
        xw_rz, xw_n = xw[..., : 2 * H].contiguous(), xw[..., 2 * H :].contiguous()  # contiguous per-step slabs
        rzs, ns = [], []  # activated r, z (B, 2H) and n (B, H) per step
        rhs = xw.new_empty(T, B, H)  # r * h_{t-1} (masked), the left operand of U_n
        ys = xw.new_empty(B, T, H)
        hst = None if alive is None else xw.new_empty(T, B, H)
        h = h0
        U_rz, U_n = StepMatmul(U[:, : 2 * H], B), StepMatmul(U[:, 2 * H :], B)
        for t in range(T):
            hd = h if mask is None else h * mask
            rz = U_rz(hd, xw_rz[t]).sigmoid_()
            rzs.append(rz)
            torch.mul(rz[:, :H], hd, out=rhs[t])
            # n = tanh(xw_n + (r h) U_n), as 2 sigmoid(2x) - 1 (see LSTMSequence)
            n = U_n(rhs[t], xw_n[t]).mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)
            ns.append(n)
            torch.lerp(n, h, rz[:, H:], out=ys[:, t])
            if alive is None:
                h = ys[:, t]
            else:
                h = _hold(alive, t, ys[:, t], h, hst[t])
                ys[:, t].mul_(alive[t])
        ctx.save_for_backward(rhs, ys, U, h0, mask, alive, hst)
        ctx.rzs, ctx.ns = rzs, ns  # internal tensors, never handed out
        return ys, h.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gys, gh):  # noqa: D102
        rhs, ys, U, h0, mask, alive, hst = ctx.saved_tensors
        rzs, ns = ctx.rzs, ctx.ns
        T, B, H = rhs.shape
        drz_all = rhs.new_empty(T, B, 2 * H)  # dL/d(r, z pre-activations)
        dn_all = rhs.new_empty(T, B, H)  # dL/d(n pre-activation)
        tmp = rhs.new_empty(B, H)
        gys = _time_major(gys, ys)
        if alive is None:
            dh = gys[T - 1] if gh is None else gys[T - 1] + gh
        else:
            dH = _zeros_if_none(gh, h0)
        dU_rz, dU_n = StepMatmul(U[:, : 2 * H].t(), B), StepMatmul(U[:, 2 * H :].t(), B)
        for t in range(T - 1, -1, -1):
            rz, n, drz, dn = rzs[t], ns[t], drz_all[t], dn_all[t]
            r, z = rz[:, :H], rz[:, H:]
            if alive is None:
                h_prev = ys[:, t - 1] if t > 0 else h0
            else:
                h_prev = hst[t - 1] if t > 0 else h0
                dh = (gys[t] + dH).mul_(alive[t])
            hd_prev = h_prev if mask is None else h_prev * mask
            # z: dh * (h_{t-1} - n); n: dh * (1 - z)
            torch.sub(h_prev, n, out=tmp).mul_(dh)
            _sig_bwd(tmp, z, grad_input=drz[:, H:])
            torch.addcmul(dh, dh, z, value=-1, out=tmp)
            _tanh_bwd(tmp, n, grad_input=dn)
            d_rh = dU_n(dn)  # dL/d(r h_{t-1})
            torch.mul(d_rh, hd_prev, out=tmp)
            _sig_bwd(tmp, r, grad_input=drz[:, :H])
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
        if ctx.needs_input_grad[1]:
            prev = ys[:, :-1].transpose(0, 1) if alive is None else hst[:-1]
            hs = torch.cat([h0.unsqueeze(0), prev])  # (T, B, H), the left operands of U_rz
            if mask is not None:
                hs = hs * mask
            gU = torch.cat([hs.reshape(-1, H).t() @ drz_all.reshape(-1, 2 * H),
                            rhs.reshape(-1, H).t() @ dn_all.reshape(-1, H)], dim=1)
        return torch.cat([drz_all, dn_all], dim=-1), gU, dh, None, None
