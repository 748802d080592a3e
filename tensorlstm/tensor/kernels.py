"""Hand-written autograd kernels used by the planned contractions."""

from __future__ import annotations

import functools

import torch

from tensorlstm.tensor.amp import compute_dtype, no_autocast
from tensorlstm.tensor.cost import WIDE_RATIO


class ModeProduct(torch.autograd.Function):
    """out[p, n, q] = sum_k mat[n, k] x[p, k, q] as a broadcast bmm, with a matching backward.

    Under autocast both operands are cast to the autocast dtype once (see tensor/amp.py); the backward runs
    in that dtype and returns each gradient in its input's dtype."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mat: torch.Tensor) -> torch.Tensor:  # noqa: D102
        dtype = compute_dtype(x, mat)
        x, mat = x.to(dtype), mat.to(dtype)
        ctx.save_for_backward(x, mat)
        with no_autocast(x.device.type):
            return torch.bmm(mat.expand(x.shape[0], *mat.shape), x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        x, mat = ctx.saved_tensors
        grad = grad.to(x.dtype)
        grad_x = grad_mat = None
        if ctx.needs_input_grad[0]:
            mat_t = mat.t().contiguous()
            grad_x = torch.bmm(mat_t.expand(grad.shape[0], *mat_t.shape), grad)
        if ctx.needs_input_grad[1]:
            if grad.shape[0] * mat.numel() <= x.numel():
                grad_mat = torch.bmm(grad, x.transpose(1, 2)).sum(0)
            else:
                grad_mat = torch.tensordot(grad, x, dims=([0, 2], [0, 2]))
        return grad_x, grad_mat


@functools.cache
def onednn_linear_ok(packed: bool = False) -> bool:
    """Whether oneDNN's linear (``torch.ops.mkldnn._linear_pointwise``) runs here and agrees with a plain
    matmul, with a plain weight or, ``packed``, one reordered by ``_reorder_linear_weight`` (checked once per
    process and form)."""
    try:
        if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")):
            return False
        g = torch.Generator().manual_seed(0)
        w = torch.randn(8, 16, generator=g, dtype=torch.float32)  # (out, in), whatever the default dtype
        x = torch.randn(3, 16, generator=g, dtype=torch.float32)
        weight = torch.ops.mkldnn._reorder_linear_weight(w, 3) if packed else w
        y = torch.ops.mkldnn._linear_pointwise(x, weight, None, "none", [], "")
        return bool(torch.allclose(y, x @ w.t(), atol=1e-5))
    except (RuntimeError, AttributeError):
        return False


def cpu_info(key: str) -> str:
    """A field of this machine's first CPU in /proc/cpuinfo ("vendor_id", "model name"), or "" where unknown."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                name, _, value = line.partition(":")
                if name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return ""


def cpu_vendor() -> str:
    """The x86 vendor string of this CPU ("GenuineIntel", "AuthenticAMD", ...), or "" where it is not known."""
    return cpu_info("vendor_id")


@functools.cache
def onednn_beats_mkl() -> bool:
    """Whether the chains' plain float32 GEMMs run faster on oneDNN than on torch's matmul on this CPU.

    torch's CPU matmul is MKL, which picks its GEMM kernels by CPU vendor: its AVX-512 kernels on Intel CPUs, its
    AVX2 ones elsewhere, while oneDNN picks by instruction set. Measured fwd+bwd of the bench's maps, 1 thread,
    interleaved: on an AMD EPYC (AVX-512) oneDNN ran the products 1.3-2.4x faster (see `Gemm`); on an Intel Xeon
    (AVX-512) MKL was as fast or faster (CP at the sequence shape 15.0 against 20.7 ms, TT and Tucker within 3%).
    So: torch's matmul where it is MKL on an Intel CPU, oneDNN elsewhere (where torch has no MKL its matmul is
    another BLAS, whose kernels this project has not measured)."""
    return not (torch.backends.mkl.is_available() and cpu_vendor() == "GenuineIntel")


def use_onednn(a: torch.Tensor, mat: torch.Tensor) -> bool:
    """oneDNN runs a @ mat.T where both are float32 on the CPU, autocast is off, oneDNN works here and it beats
    torch's matmul on this CPU (`onednn_beats_mkl`)."""
    return (
        a.device.type == "cpu"
        and a.dtype == torch.float32
        and mat.dtype == torch.float32
        and not torch.is_autocast_enabled("cpu")
        and onednn_linear_ok()
        and onednn_beats_mkl()
    )


def _linear(a: torch.Tensor, mat: torch.Tensor) -> torch.Tensor:
    """a @ mat.T by oneDNN (both made contiguous: it would copy a strided operand anyway)."""
    return torch.ops.mkldnn._linear_pointwise(a.contiguous(), mat.contiguous(), None, "none", [], "")


class Gemm(torch.autograd.Function):
    """out (M, N) = a (M, K) @ mat (N, K).T with oneDNN's linear forward and a hand-written backward.

    Why: where torch's MKL runs its AVX2 kernels (AMD CPUs: `onednn_beats_mkl`), oneDNN picks its kernels by
    instruction set and runs the thin products of the chains faster (1 thread, AMD EPYC with AVX-512: (15360, 360)
    @ (360, 64) 7.7 ms against 10.5 ms for torch.mm; (307200, 18) @ (18, 4) 2.5 ms against 5.9; (3200, 20) @
    (20, 2048) 3.9 ms against 5.7). Backward: da = grad @ mat on oneDNN too (mat.T is a small copy; 4.7 ms against 6.9
    for (3200, 2048) @ (2048, 20)); dmat on torch.mm, since oneDNN would copy its transposed operand, formed
    as the product with the wider output (see `_right_operand` in planner.py): (a.T @ grad).T where
    N >= WIDE_RATIO * K, else grad.T @ a. No input gradient is formed where a needs none (x is data).
    Callers use it only where `use_onednn` holds (float32 on a CPU, autocast off); elsewhere torch's matmul."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, mat: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(a, mat)
        return _linear(a, mat)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        a, mat = ctx.saved_tensors
        grad_a = grad_mat = None
        if ctx.needs_input_grad[0]:  # grad @ mat, by oneDNN too (mat.T is a small copy)
            grad_a = _linear(grad, mat.t())
        if ctx.needs_input_grad[1]:
            if mat.shape[0] >= WIDE_RATIO * mat.shape[1]:
                grad_mat = (a.t() @ grad).t()
            else:
                grad_mat = grad.t() @ a
        return grad_a, grad_mat


@functools.cache
def transposed_steps() -> bool:
    """Whether the LSTM loop runs its per-step products transposed (`fused_loop.TransposedStep`): on CPUs whose
    widest vector unit torch uses is AVX2, where oneDNN's (4H x H) @ (H x B) beat its packed (B x H) @ (H x 4H)
    (1.07-1.17x per product, 1.04-1.05x per training step, measured on an AMD EPYC without AVX-512). Where torch
    runs AVX-512 the packed product stays: it is the form measured fastest there (against torch.addmm), and the
    transposed one has not been measured there."""
    return onednn_linear_ok() and torch.backends.cpu.get_cpu_capability() == "AVX2"


def linear(a: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """a @ w.T over a's last axis (torch.nn.functional.linear without a bias), by `Gemm` where `use_onednn` holds:
    the input projection of the dense cell's loop on torch.nn's (4H, I) weight, which is already oneDNN's layout
    (fwd + weight gradient, AMD EPYC (AVX2), 1 thread, 9 interleaved rounds: 3200 x 256 -> 2048 107 against 116 ms,
    96 x 57,600 -> 1,024 414 against 444 ms)."""
    if use_onednn(a, w):
        return Gemm.apply(a.reshape(-1, a.shape[-1]), w).view(*a.shape[:-1], w.shape[0])
    return torch.nn.functional.linear(a, w)
