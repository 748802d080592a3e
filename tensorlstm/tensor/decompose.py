"""Decompose a dense matrix W (I x J) into the factors of a TT / BT / CP / Tucker map (`tlstm compress`).

W is tensorized exactly as the maps rebuild it: ``W.reshape(*in_modes, *out_modes)`` (row-major, the map's
``reconstruct`` equation), so the gate factor sits on whichever output mode the cell put it (``gate_mode``)
and no permutation is needed. Each function returns float64 factors with exactly the shapes and layout of the
map's parameters; `decompose_into(map, W)` copies them into a map and returns the relative error
||W - W_hat||_F / ||W||_F of the map itself.

Algorithms:

* TT: TT-SVD of the tensor-train matrix (Oseledets 2011), ``tensorly.decomposition.tensor_train_matrix``:
  quasi-optimal, exact when W has the TT ranks.
* CP: ALS (``tensorly.decomposition.parafac``, SVD init) on the 2d-way tensor.
* Tucker: HOOI (``tensorly.decomposition.tucker``, HOSVD init) on the 2d-way tensor: exact when W has the
  multilinear ranks.
* BT (sum of N Tucker blocks with cores R^d on the d merged modes I_k J_k; no library implements it):
  greedy Tucker on the residual (block n = HOOI of W minus blocks 1..n-1) as the start, then ALS over all
  blocks at once (De Lathauwer & Nion 2008, "Decompositions of a higher-order tensor in block terms, Part
  III"): per mode, the factors of every block solve one joint least-squares problem; then the cores solve the
  normal equations (exact solve when N R^d <= CORE_SOLVE_MAX, else Gauss-Seidel sweeps over the blocks). The
  greedy start alone is a deflation that cannot fit blocks sharing mode subspaces well; the joint ALS
  refinement fixes that and never increases the error.

Ranks larger than the data supports (e.g. a TT rank above min(rows, cols) of an unfolding) are padded: the
extra slices of one factor are zero and those of its neighbour are small noise, so W_hat is unchanged and
fine-tuning still gets a gradient for every entry. Finally the factors of each rank-one/block term are
rescaled to the same RMS (the balance the maps' own initialization has); W_hat does not change.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from tensorlstm.tensor.base import LinearMap
from tensorlstm.tensor.bt import BTMap
from tensorlstm.tensor.cp import CPMap
from tensorlstm.tensor.factorized import FactorizedMap
from tensorlstm.tensor.tt import TTMap
from tensorlstm.tensor.tucker import TuckerMap

CORE_SOLVE_MAX = 4096  # BT: solve the cores' normal equations exactly up to this many core entries (all blocks)
CP_RIDGE = 1e-14  # CP: ridge (times ||W||^2) used only when the plain ALS normal equations are singular
PAD_NOISE = 1e-2  # std of the padding noise relative to the RMS of the factor it is added to


def relative_error(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """||W - W_hat||_F / ||W||_F in float64 (0 when W is zero and W_hat too)."""
    w, w_hat = w.detach().double(), w_hat.detach().double().reshape(w.shape)
    norm = float(torch.linalg.norm(w))
    diff = float(torch.linalg.norm(w - w_hat))
    return diff / norm if norm > 0 else (0.0 if diff == 0 else math.inf)


def tensorize(w: torch.Tensor, in_modes: Sequence[int], out_modes: Sequence[int]) -> torch.Tensor:
    """W (I, J) as the 2d-way tensor (I_1..I_d, J_1..J_d) that the maps rebuild."""
    if tuple(w.shape) != (math.prod(in_modes), math.prod(out_modes)):
        raise ValueError(f"W of shape {tuple(w.shape)} does not match modes {list(in_modes)} -> {list(out_modes)}")
    return w.detach().double().reshape(*in_modes, *out_modes)


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _torch(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float64)


def _rms(t: torch.Tensor) -> float:
    return float(torch.linalg.norm(t)) / math.sqrt(max(t.numel(), 1))


def _pad(t: torch.Tensor, shape: Sequence[int], noise_axes: Sequence[int], gen: torch.Generator) -> torch.Tensor:
    """Zero-pad `t` to `shape`; entries whose index is new along any of `noise_axes` (and along no other axis
    that is zero-padded) get small noise instead. Callers pick the axes so that the noise multiplies zeros."""
    if tuple(t.shape) == tuple(shape):
        return t
    out = torch.zeros(*shape, dtype=torch.float64)
    out[tuple(slice(0, s) for s in t.shape)] = t
    scale = PAD_NOISE * (_rms(t) or 1.0)
    for ax in noise_axes:
        if shape[ax] > t.shape[ax]:
            idx = [slice(None)] * len(shape)
            idx[ax] = slice(t.shape[ax], shape[ax])
            # only the rows that exist in t along the other noise axes: the rest stay zero
            for other in noise_axes:
                if other != ax:
                    idx[other] = slice(0, t.shape[other])
            region = out[tuple(idx)]
            out[tuple(idx)] = torch.randn(region.shape, dtype=torch.float64, generator=gen) * scale
    return out


def _balance(factors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Rescale factors of one multilinear term to equal RMS, product of scales 1 (the term is unchanged)."""
    rms = [_rms(f) for f in factors]
    if any(r == 0 for r in rms):
        return factors
    target = math.exp(sum(math.log(r) for r in rms) / len(rms))
    return [f * (target / r) for f, r in zip(factors, rms)]


# --- TT ------------------------------------------------------------------------------------------------------
def tt_factors(w: torch.Tensor, in_modes: Sequence[int], out_modes: Sequence[int], ranks: Sequence[int],
               seed: int = 0) -> list[torch.Tensor]:
    """TT-matrix cores (r_{k-1}, I_k, J_k, r_k) of W by TT-SVD, padded to `ranks` (d+1 numbers, 1 at both ends)."""
    import tensorly as tl
    from tensorly.decomposition import tensor_train_matrix

    d = len(in_modes)
    gen = torch.Generator().manual_seed(seed)
    with tl.backend_context("numpy"):
        cores = [_torch(c) for c in tensor_train_matrix(_numpy(tensorize(w, in_modes, out_modes)),
                                                         list(ranks)).factors]
    # a new right index of core k multiplies a new left index of core k+1: zeros on the right, noise on the left
    cores = [_pad(c, (ranks[k], in_modes[k], out_modes[k], ranks[k + 1]), (0,), gen) for k, c in enumerate(cores)]
    assert len(cores) == d
    return _balance(cores)


# --- CP ------------------------------------------------------------------------------------------------------
def cp_factors(w: torch.Tensor, in_modes: Sequence[int], out_modes: Sequence[int], rank: int,
               iterations: int = 200, tol: float = 1e-10, seed: int = 0) -> list[torch.Tensor]:
    """CP factors by ALS: [A_1..A_d (I_k, R), B_1..B_d (J_k, R)], each rank-one term balanced."""
    import tensorly as tl
    from tensorly.decomposition import parafac

    tensor = _numpy(tensorize(w, in_modes, out_modes))
    with tl.backend_context("numpy"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # SVD init with R > a mode size: tensorly fills the rest
        try:
            cp = parafac(tensor, int(rank), n_iter_max=int(iterations), init="svd", tol=float(tol),
                         random_state=int(seed), normalize_factors=True)
        except np.linalg.LinAlgError:  # more terms than W needs: singular normal equations; a tiny ridge
            cp = parafac(tensor, int(rank), n_iter_max=int(iterations), init="svd", tol=float(tol),
                         random_state=int(seed), normalize_factors=True, l2_reg=CP_RIDGE * float((tensor**2).sum()))
        weights, factors = cp.weights, cp.factors
    factors = [_torch(f) for f in factors]
    factors[0] = factors[0] * _torch(weights)  # fold the weights in, then balance every column over the 2d factors
    norms = torch.stack([torch.linalg.norm(f, dim=0) for f in factors])  # (2d, R)
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    geo = torch.exp(torch.log(safe).mean(0))
    keep = (norms > 0).all(0)
    return [f * torch.where(keep, geo / safe[k], torch.ones_like(geo)) for k, f in enumerate(factors)]


# --- Tucker --------------------------------------------------------------------------------------------------
def _hooi(t: torch.Tensor, ranks: Sequence[int], iterations: int, tol: float, seed: int):
    """Tucker by HOOI (tensorly, HOSVD init) with ranks clipped to what the tensor supports; (core, factors)."""
    import tensorly as tl
    from tensorly.decomposition import tucker

    size = t.numel()
    clipped = [max(1, min(int(r), t.shape[k], size // t.shape[k])) for k, r in enumerate(ranks)]
    with tl.backend_context("numpy"):
        core, factors = tucker(_numpy(t), rank=clipped, n_iter_max=int(iterations), init="svd", tol=float(tol),
                               random_state=int(seed))
    return _torch(core), [_torch(f) for f in factors]


def tucker_factors(w: torch.Tensor, in_modes: Sequence[int], out_modes: Sequence[int], in_ranks: Sequence[int],
                   out_ranks: Sequence[int], iterations: int = 200, tol: float = 1e-10,
                   seed: int = 0) -> list[torch.Tensor]:
    """[core (ra_1..ra_d, rb_1..rb_d), U_1..U_d (I_k, ra_k), V_1..V_d (J_k, rb_k)] by HOOI, padded, balanced."""
    ranks = [*in_ranks, *out_ranks]
    modes = [*in_modes, *out_modes]
    gen = torch.Generator().manual_seed(seed)
    core, factors = _hooi(tensorize(w, in_modes, out_modes), ranks, iterations, tol, seed)
    # new factor columns are zero; the core's new slices are noise (they multiply the zero columns)
    factors = [_pad(f, (modes[k], ranks[k]), (), gen) for k, f in enumerate(factors)]
    core = _pad(core, ranks, tuple(range(len(ranks))), gen)
    return _balance([core, *factors])


# --- BT ------------------------------------------------------------------------------------------------------
def _mode_products(t: torch.Tensor, mats: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """t x_k mats[k] for every k with a matrix (t's mode k of size mats[k].shape[1] becomes mats[k].shape[0])."""
    for k, m in enumerate(mats):
        if m is not None:
            t = torch.movedim(torch.tensordot(m, t, dims=([1], [k])), 0, k)
    return t


def _unfold(t: torch.Tensor, k: int) -> torch.Tensor:
    return torch.movedim(t, k, 0).reshape(t.shape[k], -1)


def _bt_full(cores: Sequence[torch.Tensor], factors: Sequence[Sequence[torch.Tensor]]) -> torch.Tensor:
    return sum(_mode_products(g, a) for g, a in zip(cores, factors))


def _bt_solve_cores(t, cores, factors):
    """The cores minimizing ||T - sum_n G_n x_k A_nk|| for fixed factors (normal equations)."""
    n_blocks, d = len(cores), t.dim()
    rhs = [_mode_products(t, [a.T for a in factors[n]]) for n in range(n_blocks)]
    if n_blocks * cores[0].numel() <= CORE_SOLVE_MAX:
        rows = []
        for n in range(n_blocks):
            row = []
            for m in range(n_blocks):
                block = torch.ones(1, 1, dtype=torch.float64)
                for k in range(d):  # vec in row-major order: kron over modes, first mode outermost
                    block = torch.kron(block, factors[n][k].T @ factors[m][k])
                row.append(block)
            rows.append(torch.cat(row, 1))
        gram = torch.cat(rows, 0)
        b = torch.cat([r.reshape(-1) for r in rhs])
        ridge = 1e-13 * float(gram.diagonal().abs().max()) + 1e-300
        sol = torch.linalg.solve(gram + ridge * torch.eye(gram.shape[0], dtype=gram.dtype), b)
        return list(sol.reshape(n_blocks, *cores[0].shape).unbind(0))
    cores = list(cores)
    # Gauss-Seidel over the blocks: G_n = (P_n - sum_{m != n} cross terms) x_k (A_nk^T A_nk)^+
    inv = [[torch.linalg.pinv(factors[n][k].T @ factors[n][k]) for k in range(d)] for n in range(n_blocks)]
    for _ in range(3):
        for n in range(n_blocks):
            other = sum((_mode_products(cores[m], [factors[n][k].T @ factors[m][k] for k in range(d)])
                         for m in range(n_blocks) if m != n), torch.zeros_like(cores[n]))
            cores[n] = _mode_products(rhs[n] - other, inv[n])
    return cores


def _bt_orthonormalize(cores, factors, k):
    """QR of every block's mode-k factor; the triangular part moves into the core (W_hat unchanged)."""
    for n in range(len(cores)):
        q, r = torch.linalg.qr(factors[n][k])
        rank = factors[n][k].shape[1]
        if q.shape[1] < rank:  # fewer rows than the rank: zero columns in q, zero rows in r (q r unchanged)
            q = torch.cat([q, q.new_zeros(q.shape[0], rank - q.shape[1])], 1)
            r = torch.cat([r, r.new_zeros(rank - r.shape[0], rank)], 0)
        factors[n][k] = q
        cores[n] = _mode_products(cores[n], [r if j == k else None for j in range(cores[n].dim())])


def bt_factors(w: torch.Tensor, in_modes: Sequence[int], out_modes: Sequence[int], rank: int, blocks: int,
               iterations: int = 200, tol: float = 1e-10, seed: int = 0) -> list[torch.Tensor]:
    """[core (N, R..R), factor_k (N, I_k, J_k, R) for k < d]: greedy Tucker on the residual, then joint ALS."""
    d, R, N = len(in_modes), int(rank), int(blocks)
    dims = [i * j for i, j in zip(in_modes, out_modes)]
    perm = [x for k in range(d) for x in (k, d + k)]
    t = tensorize(w, in_modes, out_modes).permute(perm).reshape(dims)  # merged modes (I_k J_k)
    norm = float(torch.linalg.norm(t))
    gen = torch.Generator().manual_seed(seed)
    cores, factors = [], []
    residual = t.clone()
    for n in range(N):  # greedy start: each block fits what the previous ones left
        core, fs = _hooi(residual, [R] * d, iterations, tol, seed + n)
        fs = [_pad_columns(f, R, gen) for f in fs]
        core = _pad(core, [R] * d, (), gen)  # zero slices: the random new columns do not change W_hat
        cores.append(core)
        factors.append(fs)
        residual = residual - _mode_products(core, fs)
    err = float(torch.linalg.norm(residual)) / norm if norm > 0 else 0.0
    for _ in range(int(iterations) if N > 1 and err > 0 else 0):
        for k in range(d):
            # joint least squares for [A_1k .. A_Nk] (D_k x NR): T_(k) = A_k Z_k with Z_k the stacked
            # G_n,(k) (kron_{l != k} A_nl)^T; Z Z^T and T_(k) Z^T are built from small R x R products
            rhs = torch.cat([_unfold(_mode_products(t, [None if j == k else factors[n][j].T for j in range(d)]), k)
                             @ _unfold(cores[n], k).T for n in range(N)], 1)
            gram = torch.cat([torch.cat([
                _unfold(cores[n], k) @ _unfold(_mode_products(
                    cores[m], [None if j == k else factors[n][j].T @ factors[m][j] for j in range(d)]), k).T
                for m in range(N)], 1) for n in range(N)], 0)
            ridge = 1e-13 * float(gram.diagonal().abs().max()) + 1e-300
            a = torch.linalg.solve(gram + ridge * torch.eye(N * R, dtype=gram.dtype), rhs.T).T
            for n in range(N):
                factors[n][k] = a[:, n * R:(n + 1) * R]
            _bt_orthonormalize(cores, factors, k)
        cores = _bt_solve_cores(t, cores, factors)
        new = float(torch.linalg.norm(t - _bt_full(cores, factors))) / norm
        if new < 1e-14 or err - new < tol * max(err, 1e-300):
            err = min(err, new)
            break
        err = new
    out_core = torch.stack(cores)
    out_factors = [torch.stack([factors[n][k] for n in range(N)]).reshape(N, in_modes[k], out_modes[k], R)
                   for k in range(d)]
    balanced = [_balance([out_core[n], *[f[n] for f in out_factors]]) for n in range(N)]
    return [torch.stack([b[0] for b in balanced]), *[torch.stack([b[1 + k] for b in balanced]) for k in range(d)]]


def _pad_columns(f: torch.Tensor, r: int, gen: torch.Generator) -> torch.Tensor:
    """Extend an orthonormal (D, s) basis to (D, r): random orthonormal complement where D allows, else zeros."""
    if f.shape[1] >= r:
        return f
    extra = torch.randn(f.shape[0], r - f.shape[1], dtype=torch.float64, generator=gen)
    extra = extra - f @ (f.T @ extra)
    q, _ = torch.linalg.qr(torch.cat([f, extra], 1))
    q = q[:, :r] if q.shape[1] >= r else torch.cat([q, q.new_zeros(f.shape[0], r - q.shape[1])], 1)
    q[:, : f.shape[1]] = f
    return q


# --- into a map ----------------------------------------------------------------------------------------------
def factors_for(target: FactorizedMap, w: torch.Tensor, iterations: int = 200, tol: float = 1e-10,
                seed: int = 0) -> list[torch.Tensor]:
    """The float64 factors of `target`'s format for W, in the order and shapes of `target.factors()`."""
    ins, outs = target.in_modes, target.out_modes
    if isinstance(target, TTMap):
        return tt_factors(w, ins, outs, target.ranks, seed=seed)
    if isinstance(target, BTMap):
        return bt_factors(w, ins, outs, target.rank, target.blocks, iterations, tol, seed)
    if isinstance(target, CPMap):
        return cp_factors(w, ins, outs, target.rank, iterations, tol, seed)
    if isinstance(target, TuckerMap):
        return tucker_factors(w, ins, outs, target.in_ranks, target.out_ranks, iterations, tol, seed)
    raise TypeError(f"no decomposition for {type(target).__name__}")


def decompose_into(target: LinearMap, w: torch.Tensor, iterations: int = 200, tol: float = 1e-10,
                   seed: int = 0) -> float:
    """Set `target`'s weights from W (I x J) and return ||W - target.reconstruct()||_F / ||W||_F."""
    if tuple(w.shape) != (target.in_features, target.out_features):
        raise ValueError(f"W is {tuple(w.shape)}, the map is {target.in_features} x {target.out_features}")
    with torch.no_grad():
        if isinstance(target, FactorizedMap):
            for p, f in zip(target.factors(), factors_for(target, w, iterations, tol, seed)):
                if tuple(p.shape) != tuple(f.shape):  # pragma: no cover - a layout bug, never user input
                    raise AssertionError(f"factor shape {tuple(f.shape)} != parameter {tuple(p.shape)}")
                p.copy_(f.to(p.dtype))
        else:  # dense: a copy
            target.weight.copy_(w.to(target.weight.dtype))
        return relative_error(w, target.reconstruct())
