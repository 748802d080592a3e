"""The tLSTM time loop (``norm=none``) as one autograd node with a hand-written backward over the sequence.

Autograd over the step loop of ``TensorizedLSTM._update`` records ~25 nodes per step (gather, pad, addmm,
unflatten, tanh, sigmoid, softmax, the memory-cell gather and weighted sum, ...) and runs their backward one by
one, each with its temporaries, zero-filled slice gradients and an index_put for the gather. Here the forward
runs the loop without recording, into buffers allocated once per sequence, and the backward walks the steps in
reverse. Per step, forward: one ``index_select`` (the im2col of H_{t-1}), one in-place GEMM, 7 elementwise calls
(+3 for the memory-cell convolution); backward: one GEMM, one ``index_add_`` (dL/dpatches back onto the
locations), 4 multiplies (+8 for the memory-cell convolution). What makes that possible:

* every per-step view comes from one ``unbind`` of a buffer allocated once (a view costs ~2 us in Python,
  about as much as a small elementwise op);
* H_t is written into a (B, N + 1, M) slab whose last row stays zero (the zero padding, and the input taps whose
  terms come precomputed in ``x_terms``), so no pad or cat per step; the patches are kept: they are the rows of
  dL/dW^h, formed after the loop as ONE (taps M x S B N) @ (S B N x M^o) product;
* G's columns of W^h and of b^h + the input terms are doubled (exact) so that one sigmoid over the four gate
  blocks gives sigmoid(2 A^g), G = 2 sigmoid(2 A^g) - 1 = tanh(A^g); the loop carries C~ = -2 C (exact), so that
  tanh(C_t) = 1 - 2 sigmoid(C~_t), H_t = O - 2 O sigmoid(C~_t) is one sigmoid and one addcmul, and
  C~_t = conv(C~_{t-1}) F - 4 sigmoid(2 A^g) I + 2 I three calls (G is never formed in the loop);
* the backward first forms the local derivatives of all steps at once (sigmoid' = s - s^2, tanh' = 1 - t^2,
  times the other factor of each product), so a step needs one multiply per gate group;
* the memory-cell convolution is a (B, N, N) matrix per step: the softmax kernel scattered (``scatter_add_``;
  border taps that clamp to the same location add up) into the rows of its locations, then one ``bmm`` with
  C~_{t-1}; its backward is two ``bmm``, a ``gather`` and the softmax backward in three calls;
* the GEMM's N is padded with zero columns to a multiple of 16 (515 -> 528 at M = 128: measured ~10% faster on
  an AVX-512 CPU; the padding is counted as work nowhere). oneDNN's packed GEMM (``fused_loop.StepMatmul``)
  measured no faster here at 16-128 rows once its output is copied into the buffer, so it is not used.

With ``cell.gates=native`` (on a CPU in float32 / float64 where tensorlstm/native.cpp builds) everything of a step
but the gather and the GEMM is one call of a compiled kernel each way: the gate activations, the memory kernel's
softmax and scatter, the memory-cell convolution and the state update forward; the local products, the softmax
backward and the transposed convolution backward. It reads and writes the buffers below at the step's offset, so
a step makes no tensor views for it.

Exactness: the same expressions as ``TensorizedLSTM._cell``/``_update`` with ``norm=none`` (tests compare
outputs, states and every gradient with the general loop in float64 and run gradcheck); only the order of a few
operations differs (the memory kernel's duplicate border taps are summed before multiplying, tanh goes through
the sigmoid), so float64 results agree to ~1e-15, not bit for bit. Plain torch ops only: any device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class TLSTMSequence(torch.autograd.Function):
    """(bias, x_terms, input_locations, W, h0, c0, hidden_index, memory_index) -> (hs, cs), each (S, B, N, M):
    H_t and C_t of every step.

    bias (M^o,): b^h; x_terms (S, B, pairs, M^o): the terms of A_t from the input location, added at locations
    ``input_locations`` (pairs,); W (taps M, M^o): W^h flattened;
    h0, c0 (B, N, M); hidden_index (N taps,): the cross-layer table row-major, entries in 0..N with N a zero
    row; memory_index (N taps,) or None (tLSTM-M): n N + (memory-table entry) for the flattened (N, N) kernel
    matrix of location n. Gate order G, I, F, O, Q as ``TensorizedLSTM``. gates: native.Kernels, or None
    (torch ops).
    """

    @staticmethod
    def forward(ctx, bias, x_terms, input_locations, W, h0, c0, hidden_index, memory_index, gates=None):  # noqa: D102
        S, B = x_terms.shape[:2]
        _, N, M = h0.shape
        R, Mo = B * N, W.shape[1]
        KM = W.shape[0]
        taps = KM // M
        memory = memory_index is not None
        # W^h with G's columns doubled and zero columns up to a multiple of 16 (the GEMM's N tail: measured ~10%
        # slower at 515 columns than at 528 on an AVX-512 CPU; the padding is not counted as work anywhere)
        Mp = -(-Mo // 16) * 16
        W2 = F.pad(W, (0, Mp - Mo))
        W2[:, :M] *= 2.0
        # A_t without the GEMM: b^h + the input terms (G's doubled), then per step + patches W2 and in place its
        # activations (sigmoid(2 A^g), I, F, O; raw A^q)
        acts = W.new_empty(S, R, Mp)
        acts.copy_(F.pad(bias, (0, Mp - Mo)))
        acts.view(S, B, N, Mp)[..., :Mo].index_add_(2, input_locations, x_terms)
        acts[..., :M] *= 2.0
        hbuf = W.new_empty(S + 1, B, N + 1, M)  # H_{t-1} slabs with a zero row; hbuf[s + 1] = H_s
        hbuf[:, :, N].zero_()
        hbuf[0, :, :N] = h0
        patches = W.new_empty(S, B, N * taps, M)
        cs_ext = W.new_empty(S + 1, B, N, M)  # [C~_0, C~_1, ..., C~_S] with C~_t = -2 C_t (C_t after the loop)
        cs = cs_ext[1:]
        ts = W.new_empty(S, B, N, M)  # sigmoid(C~_t): tanh(C_t) = 1 - 2 ts
        a4 = acts.view(S, B, N, Mp)
        h_steps, p_steps = hbuf.unbind(0), patches.unbind(0)
        p_rows, a_rows = patches.view(S, R, KM).unbind(0), acts.unbind(0)
        cms = kmats = kerns = None
        if memory:
            cms = W.new_empty(S, B, N, M)  # conv(C~_{t-1}, softmax(A^q))
            kmats = W.new_zeros(S, B, N * N)  # per location n, row n: its kernel at the taps' locations
            kerns = W.new_empty(S, B, N, taps)
        c = torch.mul(c0, -2.0, out=cs_ext[0])
        if gates is not None:
            _native_forward(gates, S, a_rows, W2, h_steps, hidden_index, p_steps, p_rows, a4, cs_ext, ts,
                            hbuf[1:, :, :N], kerns, kmats, cms, memory_index)
            return _finish_forward(ctx, gates, hbuf, N, cs_ext, acts, patches, ts, W, c0, hidden_index,
                                   input_locations, cms, kmats, kerns, memory_index)
        h_out = hbuf[1:, :, :N].unbind(0)
        sig_steps = a4[..., : 4 * M].unbind(0)
        g_steps, i_steps, f_steps, o_steps = (a4[..., k * M : (k + 1) * M].unbind(0) for k in range(4))
        c_steps, t_steps = cs.unbind(0), ts.unbind(0)
        if memory:
            scatter_index = memory_index.expand(B, -1)
            q_steps, cm_steps = a4[..., 4 * M : Mo].unbind(0), cms.unbind(0)
            km_flat, km_mats = kmats.unbind(0), kmats.view(S, B, N, N).unbind(0)
            k_steps, k_flat = kerns.unbind(0), kerns.view(S, B, N * taps).unbind(0)
        for s in range(S):
            torch.index_select(h_steps[s], 1, hidden_index, out=p_steps[s])
            a_rows[s].addmm_(p_rows[s], W2)
            sig_steps[s].sigmoid_()
            if memory:  # dynamic kernel per location: softmax over its taps, replicate padding
                torch.softmax(q_steps[s], dim=-1, out=k_steps[s])
                km_flat[s].scatter_add_(1, scatter_index, k_flat[s])
                cm = torch.bmm(km_mats[s], c, out=cm_steps[s])
            else:
                cm = c
            # C~_t = conv(C~_{t-1}) * F - 2 G * I with -2 G = 2 - 4 sigmoid(2 A^g); H_t = O - 2 O sigmoid(C~_t)
            c = torch.mul(cm, f_steps[s], out=c_steps[s]).addcmul_(g_steps[s], i_steps[s], value=-4.0)
            c.add_(i_steps[s], alpha=2.0)
            torch.sigmoid(c, out=t_steps[s])
            torch.addcmul(o_steps[s], o_steps[s], t_steps[s], value=-2.0, out=h_out[s])
        return _finish_forward(ctx, gates, hbuf, N, cs_ext, acts, patches, ts, W, c0, hidden_index, input_locations,
                               cms, kmats, kerns, memory_index)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_hs, g_cs):  # noqa: D102
        saved = ctx.saved_tensors
        acts, patches, cs_ext, ts, W, c0, hidden_index, input_locations = saved[:8]
        cs = cs_ext[1:]  # C_t; cs_ext[0] = C_0
        memory = ctx.memory
        S, B, N, M = cs.shape
        KM, Mo = W.shape
        taps = KM // M
        R = B * N
        a4 = acts.view(S, B, N, -1)
        i, f, o = (a4[..., k * M : (k + 1) * M] for k in (1, 2, 3))
        g = torch.mul(a4[..., :M], 2.0).sub_(1.0)  # G = 2 sigmoid(2 A^g) - 1
        if memory:
            cms, kmats, kerns, memory_index = saved[8:]
            cm = cms * -0.5  # conv(C_{t-1})
        else:
            cm = cs_ext[:-1]  # C_{t-1}
        # local derivatives of every step at once: dL/dA^o = dh * Po, dL/dC_t += dh * Pc, and
        # dL/d(A^g, A^i, A^f) = dc * Pgif
        tc = torch.mul(ts, -2.0).add_(1.0)  # tanh(C_t)
        ifo = a4[..., M : 4 * M]
        ds = torch.addcmul(ifo, ifo, ifo, value=-1.0)  # sigmoid' of I, F, O
        Po = torch.mul(ds[..., 2 * M :], tc)
        Pc = torch.addcmul(o, o, torch.mul(tc, tc), value=-1.0)
        Pgif = cs.new_empty(S, B, N, 3, M)
        torch.addcmul(i, i, torch.mul(g, g), value=-1.0, out=Pgif[..., 0, :])
        torch.mul(ds[..., :M], g, out=Pgif[..., 1, :])
        torch.mul(ds[..., M : 2 * M], cm, out=Pgif[..., 2, :])
        # dL/dH_t in slab t + 1 (slab 0: H_0), with the zero row's column that the scatter of the patches hits
        dH = cs.new_zeros(S + 1, B, N + 1, M)
        if g_hs is not None:
            dH[1:, :, :N] = g_hs
        dh_steps, dH_steps = dH[:, :, :N].unbind(0), dH.unbind(0)
        Mp = a4.shape[-1]
        da_all = cs.new_empty(S, B, N, Mp)  # dL/dA_t; zero columns Mo.. Mp as in the forward's GEMM
        da_all[..., Mo:].zero_()
        da_flat = da_all.view(S, R, Mp)
        da_rows = da_flat[..., :Mo].unbind(0)
        Wt = W.t()
        dp = cs.new_empty(R, KM)
        dp3 = dp.view(B, N * taps, M)
        if ctx.gates is not None:
            dc_next = _native_backward(ctx.gates, S, dH, N, Po, Pc, Pgif, a4, da_all, g_cs, cs_ext,
                                       kmats if memory else None, kerns if memory else None,
                                       memory_index if memory else None, da_rows, Wt, dp, dp3, dH_steps, hidden_index)
            return _finish_backward(ctx, da_flat, da_all, Mo, input_locations, patches, S, R, KM, Mp, dh_steps, dc_next)
        da_gif = da_all[..., : 3 * M].unflatten(-1, (3, M)).unbind(0)
        da_o = da_all[..., 3 * M : 4 * M].unbind(0)
        Po, Pc, Pgif, f = Po.unbind(0), Pc.unbind(0), Pgif.unbind(0), f.unbind(0)
        dc, dcm, dc_prev = cs.new_empty(B, N, M), cs.new_empty(B, N, M), cs.new_empty(B, N, M)
        dc_u = dc.unsqueeze(2)
        g_c = g_cs.unbind(0) if g_cs is not None else None
        if memory:
            gather_index = memory_index.expand(B, -1)
            c_t = cs_ext[:-1].transpose(2, 3).unbind(0)  # C_{t-1}^T per step
            km_t = kmats.view(S, B, N, N).transpose(2, 3).unbind(0)
            k_steps, da_q = kerns.unbind(0), da_all[..., 4 * M : Mo].unbind(0)
            dk, dkern, kd = cs.new_empty(B, N, N), cs.new_empty(B, N, taps), cs.new_empty(B, N, taps)
            dk_flat, dkern_flat, ksum = dk.view(B, N * N), dkern.view(B, N * taps), cs.new_empty(B, N, 1)
        dc_next = None if g_c is None else g_c[S - 1]  # dL/dC_t from outside and from step t + 1
        for s in range(S - 1, -1, -1):
            dh = dh_steps[s + 1]
            torch.mul(dh, Po[s], out=da_o[s])
            if dc_next is None:
                torch.mul(dh, Pc[s], out=dc)
            else:
                torch.addcmul(dc_next, dh, Pc[s], out=dc)
            torch.mul(dc_u, Pgif[s], out=da_gif[s])
            torch.mul(dc, f[s], out=dcm)  # dL/dconv(C_{t-1})
            outside = g_c is not None and s > 0
            if memory:
                torch.bmm(dcm, c_t[s], out=dk)
                torch.gather(dk_flat, 1, gather_index, out=dkern_flat)
                # softmax backward: dL/dA^q = k dkern - k sum(k dkern) (3 calls: aten's op costs ~4x as much here,
                # and its out= form ignores a strided out's layout)
                torch.mul(k_steps[s], dkern, out=kd)
                torch.sum(kd, -1, keepdim=True, out=ksum)
                torch.addcmul(kd, k_steps[s], ksum, value=-1.0, out=da_q[s])
                if outside:
                    dc_next = torch.baddbmm(g_c[s - 1], km_t[s], dcm, out=dc_prev)
                else:
                    dc_next = torch.bmm(km_t[s], dcm, out=dc_prev)
            else:
                dc_next = torch.add(dcm, g_c[s - 1], out=dc_prev) if outside else dcm
            torch.mm(da_rows[s], Wt, out=dp)
            dH_steps[s].index_add_(1, hidden_index, dp3)
        return _finish_backward(ctx, da_flat, da_all, Mo, input_locations, patches, S, R, KM, Mp, dh_steps, dc_next)


def _finish_forward(ctx, gates, hbuf, N, cs_ext, acts, patches, ts, W, c0, hidden_index, input_locations, cms, kmats,
                    kerns, memory_index):
    cs_ext.mul_(-0.5)  # C_t (exact: a power of two, and C_0 comes back as c0)
    saved = [acts, patches, cs_ext, ts, W, c0, hidden_index, input_locations]
    if memory_index is not None:
        saved += [cms, kmats, kerns, memory_index]
    ctx.save_for_backward(*saved)
    ctx.memory, ctx.gates = memory_index is not None, gates
    ctx.set_materialize_grads(False)
    return hbuf[1:, :, :N], cs_ext[1:]


def _finish_backward(ctx, da_flat, da_all, Mo, input_locations, patches, S, R, KM, Mp, dh_steps, dc_next):
    db = dx = dW = None
    if ctx.needs_input_grad[0]:
        db = da_flat[..., :Mo].sum((0, 1))
    if ctx.needs_input_grad[1]:
        dx = da_all[..., :Mo].index_select(2, input_locations)
    if ctx.needs_input_grad[3]:
        dW = (patches.view(S * R, KM).t() @ da_all.view(S * R, Mp))[:, :Mo]
    return db, dx, None, dW, dh_steps[0].clone(), dc_next.clone(), None, None, None


def _native_forward(k, S, a_rows, W2, h_steps, hidden_index, p_steps, p_rows, a4, cs_ext, ts, h_out, kerns, kmats,
                    cms, memory_index):
    """The forward loop with native.cpp's tlstm_forward after each step's gather and GEMM: C~_{t-1} from
    cs_ext[s], C~_t into cs_ext[s + 1]."""
    _, B, N, _ = a4.shape
    M = ts.shape[-1]
    memory = memory_index is not None
    step = k.tlstm_forward(B, N, M, kerns.shape[-1] if memory else 0, (a4, 0), (cs_ext, 0), (cs_ext, 1), (ts, 0),
                           (h_out, 0), (kerns, 0) if memory else None,
                           (kmats.view(S, B, N, N), 0) if memory else None, (cms, 0) if memory else None,
                           memory_index)
    for s in range(S):
        torch.index_select(h_steps[s], 1, hidden_index, out=p_steps[s])
        a_rows[s].addmm_(p_rows[s], W2)
        step(s)


def _native_backward(k, S, dH, N, Po, Pc, Pgif, a4, da_all, g_cs, cs_ext, kmats, kerns, memory_index, da_rows, Wt,
                     dp, dp3, dH_steps, hidden_index):
    """The backward loop with native.cpp's tlstm_backward before each step's GEMM; dL/dC_0 out."""
    B, M = cs_ext.shape[1], cs_ext.shape[-1]
    memory = memory_index is not None
    # dL/dC_t in, dL/dC_{t-1} out, one buffer (the kernel reads each element before it writes it); it starts as
    # the outside gradient of C_T (or zero), and the outside gradient of C_{t-1} is added at step t (none at 0)
    dc = torch.zeros_like(cs_ext[0]) if g_cs is None else g_cs[S - 1].clone(memory_format=torch.contiguous_format)
    g_prev = None if g_cs is None else (torch.cat([torch.zeros_like(g_cs[:1]), g_cs[:-1]]), 0)
    step = k.tlstm_backward(B, N, M, kerns.shape[-1] if memory else 0, (dH[:, :, :N], 1), dc, (Po, 0), (Pc, 0),
                            (Pgif.view(S, B, N, 3 * M), 0), (a4[..., 2 * M : 3 * M], 0), (da_all, 0), dc, g_prev,
                            (cs_ext, 0) if memory else None, (kmats.view(S, B, N, N), 0) if memory else None,
                            (kerns, 0) if memory else None, torch.empty_like(dc) if memory else None, memory_index)
    for s in range(S - 1, -1, -1):
        step(s)
        torch.mm(da_rows[s], Wt, out=dp)
        dH_steps[s].index_add_(1, hidden_index, dp3)
    return dc
