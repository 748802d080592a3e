"""Hand-written autograd kernels used by the planned contractions."""

from __future__ import annotations

import torch

from tensorlstm.tensor.amp import compute_dtype, no_autocast


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
