"""Contraction planning for factorized linear maps, and the base class they share.

Every factorized map stores W[i_1..i_d, j_1..j_d] as a contraction (an einsum) of small factors.
Its forward can be computed two ways:

* ``factorized``: y[z, j] = sum_i x[z, i] W[i, j] for all rows z at once, never forming W: x,
  viewed as (rows, I_1, ..., I_d), absorbs the factors one group at a time (`plan_chain`). A group
  is one factor or a small merge of several (a partial rebuild, e.g. CP's Khatri-Rao products).
  Each step multiplies a contiguous run of the accumulator's axes in place ((pre, K, post) times an
  (N, K) matrix: one GEMM or a batched GEMM, no permute copy of the accumulator), or falls back to
  torch.einsum. Each format lists candidate orders (TT grows an interval of cores, BT folds its core
  in between the modes, Tucker shrinks the largest modes first...); the planner also picks where new
  axes go, scores every candidate with a time model and caches the winner per (shapes, rows bucket,
  device type). Intermediates stay small because the largest input modes are contracted first.
* ``reconstruct``: W = contraction of the factors (opt_einsum paths, same time model, cached), then
  one GEMM.

``auto`` picks per call with the same deterministic time estimate (FLOPs / rate + bytes moved /
bandwidth + a cost per step, constants per device type fitted to measurements) and caches the
decision per (rows, dtype, device). A measured choice would make runs non-reproducible (the two
modes round differently), so the choice uses the estimate only.

Initialization: factors are drawn with the std that makes Var(W) = target_var in expectation
(a product of independent zero-mean factors multiplies variances; a sum over ranks adds them:
Var(W) = n_terms * prod_f Var(factor_f)), then rescaled together so that the rebuilt W has
exactly ||W||_F^2 = I*J*target_var (computed by a contraction of the factors with themselves,
without forming W).
"""

from __future__ import annotations

import math
import string
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import opt_einsum as oe
import torch

from tensorlstm.errors import UserError
from tensorlstm.tensor.amp import compute_dtype, no_autocast
from tensorlstm.tensor.base import LinearMap
from tensorlstm.tensor.registry import positive_ranks

MODES = ("factorized", "reconstruct", "auto")
LETTERS = string.ascii_lowercase + string.ascii_uppercase

# Time model constants per device type: (FLOP/s, bytes/s, seconds per step) for the chains of small
# contractions and, separately, for the one large GEMM of the reconstruct mode. CPU values are a
# least-squares fit of forward times of 40 (map, rows) cases measured on this project's 2-core machine
# with one thread (tt/bt/cp/tucker, d = 2..4, 16..3200 rows; median error ~20%); `auto` only needs
# them to rank the two modes. CUDA values are nominal (not fitted).
DEVICE_SPEED = {
    "cpu": {"chain": (1.9e11, 5.4e9, 4.0e-5), "gemm": (1.0e11, 3.0e9, 1.0e-5)},
    "cuda": {"chain": (2.0e13, 1.5e12, 3.0e-5), "gemm": (4.0e13, 2.0e12, 1.0e-5)},
}


def _speed(device_type: str, kind: str) -> tuple[float, float, float]:
    return DEVICE_SPEED.get(device_type, DEVICE_SPEED["cuda"])[kind]


# Measured on CPU (1 thread, forward+backward of (pre, K, post) x (N, K) products of 0.13-0.18 GFLOP):
# a plain GEMM (post == 1), the transposed form "mmT" and the in-place form with a long post all run
# at about the same rate; the in-place form with post < 16 runs ~1.5x slower.
SHORT_POST = 16
SHORT_POST_PENALTY = 1.5
# In-place products with at least this long a post run as a broadcast bmm (ModeProduct): 2-3x faster
# forward than torch.matmul there; with a shorter post its backward is slower than matmul's.
BMM_MIN_POST = 64


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


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise UserError(f"unknown map mode {mode!r}; choose one of: {', '.join(MODES)}")
    return mode


@dataclass(frozen=True)
class Plan:
    """A pairwise contraction order with its estimated cost; `run` executes it with torch.einsum.

    steps[k] = (positions, equation): pop those operand positions (in that order), contract them
    with `equation`, append the result (opt_einsum's path convention).
    """

    steps: tuple[tuple[tuple[int, ...], str], ...]
    flops: float  # multiply-adds counted as 2 FLOPs
    moved: float  # elements read and written by all steps
    largest: int  # elements of the largest intermediate

    def seconds(self, device_type: str, itemsize: int) -> float:
        flops_per_s, bandwidth, launch = _speed(device_type, "chain")
        return self.flops / flops_per_s + self.moved * itemsize / bandwidth + len(self.steps) * launch

    def run(self, *operands: torch.Tensor) -> torch.Tensor:
        ops = list(operands)
        for positions, equation in self.steps:
            picked = [ops.pop(p) for p in positions]
            ops.append(torch.einsum(equation, *picked))
        return ops[0]


def _step_costs(equation: str, sizes: dict[str, int]) -> tuple[float, float, int]:
    inputs, output = equation.split("->")
    terms = inputs.split(",")
    all_idx = set("".join(terms))
    contracted = all_idx - set(output)
    total = math.prod(sizes[c] for c in all_idx)
    flops = float(total) * (2 if contracted else 1)
    out_size = math.prod(sizes[c] for c in output)
    moved = float(out_size + sum(math.prod(sizes[c] for c in t) for t in terms))
    return flops, moved, out_size


def chain_path(order: Sequence[int]) -> list[tuple[int, int]]:
    """opt_einsum path that starts from operand order[0] and absorbs order[1], order[2], ... into it."""
    remaining = sorted(order)
    acc = order[0]
    path = []
    for nxt in order[1:]:
        i, j = remaining.index(acc), remaining.index(nxt)
        path.append((i, j))
        remaining = [r for r in remaining if r not in (acc, nxt)] + [-1]
        acc = -1
    return path


def _candidate_infos(equation: str, shapes: tuple[tuple[int, ...], ...], chains: tuple[tuple[int, ...], ...]):
    candidates: list = ["greedy"] + [chain_path(c) for c in chains]
    for opt in candidates:
        try:
            yield oe.contract_path(equation, *shapes, shapes=True, optimize=opt)[1]
        except Exception:  # noqa: BLE001 - a candidate that is not a valid path is skipped
            continue


@lru_cache(maxsize=1024)
def plan(
    equation: str,
    shapes: tuple[tuple[int, ...], ...],
    device_type: str = "cpu",
    chains: tuple[tuple[int, ...], ...] = (),
) -> Plan:
    """Plan `equation` over operands of `shapes` (cached).

    Candidates: opt_einsum's greedy order and the given `chains` (each: start from one operand and
    absorb the others in that order; the formats list the orders that make sense for them, e.g. TT
    grows an interval of cores, BT places its core anywhere among the modes). The candidate with
    the smallest estimated time on `device_type` wins (FLOPs at peak rate + every element read and
    written at memory bandwidth + a launch cost per step).
    """
    best: Plan | None = None
    for info in _candidate_infos(equation, shapes, chains):
        sizes = dict(info.size_dict)
        flops = moved = 0.0
        largest = 0
        steps = []
        for contraction in info.contraction_list:
            positions, step_eq = contraction[0], contraction[2]
            f, m, out = _step_costs(step_eq, sizes)
            flops, moved, largest = flops + f, moved + m, max(largest, out)
            steps.append((tuple(positions), step_eq))
        cand = Plan(tuple(steps), flops, moved, largest)
        if best is None or cand.seconds(device_type, 4) < best.seconds(device_type, 4):
            best = cand
    assert best is not None
    return best


# --- the forward: x absorbs the factors one group at a time ---------------------------------------


@dataclass(frozen=True)
class ChainStep:
    """Absorb one operand (a factor, or a small merge of several) into the accumulator.

    kind "mm": the contracted axes form one contiguous run acc[start:stop]; the accumulator is
    viewed as (pre, K, post) and multiplied in place by the factor as an (N, K) matrix (a GEMM
    when post == 1, else a broadcast batched GEMM): no copy of the accumulator. kind "mmT": the
    same product written as (pre, post, N), i.e. the new axes move behind the trailing ones (faster
    when post is small: the output's contiguous run is N, not post). kind "einsum": torch.einsum,
    which permutes its operands (costed as extra copies).
    """

    group: tuple[int, ...]
    merge_equation: str | None  # einsum merging the group's factors into one operand, or None
    kind: str
    start: int = 0
    stop: int = 0
    perm: tuple[int, ...] = ()  # operand axes -> (new axes..., contracted axes in acc order)
    n_new: int = 0
    equation: str = ""  # for kind "einsum"


@dataclass(frozen=True)
class ChainPlan:
    steps: tuple[ChainStep, ...]
    final_perm: tuple[int, ...] | None
    flops: float
    moved: float
    largest: int

    def seconds(self, device_type: str, itemsize: int) -> float:
        flops_per_s, bandwidth, launch = _speed(device_type, "chain")
        return self.flops / flops_per_s + self.moved * itemsize / bandwidth + len(self.steps) * launch

    def run(self, x: torch.Tensor, factors: Sequence[torch.Tensor]) -> torch.Tensor:
        acc = x
        for step in self.steps:
            if step.merge_equation is None:
                op = factors[step.group[0]]
            else:
                op = torch.einsum(step.merge_equation, *(factors[i] for i in step.group))
            if step.kind == "einsum":
                acc = torch.einsum(step.equation, acc, op).contiguous()
                continue
            op = op.permute(step.perm)
            new_shape = op.shape[: step.n_new]
            n, k = math.prod(new_shape), math.prod(op.shape[step.n_new :])
            shape = acc.shape
            pre, post = math.prod(shape[: step.start]), math.prod(shape[step.stop :])
            mat = op.reshape(n, k).contiguous()
            if post == 1:
                out = acc.reshape(pre, k) @ mat.t()
            elif step.kind == "mm":
                acc3 = acc.reshape(pre, k, post)
                if post >= BMM_MIN_POST:
                    out = ModeProduct.apply(acc3, mat)
                else:
                    out = torch.matmul(mat, acc3)
            else:  # "mmT": the new axes go after the remaining trailing axes
                out = acc.reshape(pre, k, post).transpose(1, 2) @ mat.t()
                acc = out.reshape(*shape[: step.start], *shape[step.stop :], *new_shape)
                continue
            acc = out.reshape(*shape[: step.start], *new_shape, *shape[step.stop :])
        if self.final_perm is not None:
            acc = acc.permute(self.final_perm)
        return acc


def _search_chain(
    x_axes: str,
    subs: tuple[str, ...],
    out_axes: str,
    sizes: dict[str, int],
    chain: tuple[tuple[int, ...], ...],
    device_type: str,
) -> ChainPlan | None:
    """Best execution of one absorption order, branching on the order of each step's new axes."""
    best: list[ChainPlan | None] = [None]
    size_of = lambda axes: math.prod(sizes[c] for c in axes)  # noqa: E731

    def rec(i: int, acc: list[str], steps: list[ChainStep], flops: float, moved: float, largest: int) -> None:
        if i == len(chain):
            final_perm = None
            if "".join(acc) != x_axes[0] + out_axes:
                final_perm = tuple(acc.index(c) for c in x_axes[0] + out_axes)
                moved += 2 * size_of(acc)
            cand = ChainPlan(tuple(steps), final_perm, flops, moved, largest)
            if best[0] is None or cand.seconds(device_type, 4) < best[0].seconds(device_type, 4):
                best[0] = cand
            return
        group = chain[i]
        later = set(out_axes).union(*(set(subs[k]) for g in chain[i + 1 :] for k in g))
        letters: list[str] = []
        for k in group:
            letters += [c for c in subs[k] if c not in letters]
        op_axes = [c for c in letters if c in acc or c in later]
        merge_eq, merge_flops = None, 0.0
        if len(group) > 1 or op_axes != letters:  # merge several, or sum out axes used nowhere else
            merge_eq = ",".join(subs[k] for k in group) + "->" + "".join(op_axes)
            merge_flops = 2.0 * size_of(letters)
        shared = [c for c in acc if c in op_axes]
        contracted = [c for c in shared if c not in later]
        batch = [c for c in shared if c in later]
        new = [c for c in op_axes if c not in acc]
        acc_size = size_of(acc)
        positions = [acc.index(c) for c in contracted]
        contiguous = bool(contracted) and positions == list(
            range(positions[0], positions[0] + len(positions))
        )
        if not batch and contiguous:
            start, stop = positions[0], positions[0] + len(positions)
            post = size_of(acc[stop:])
            orders = [new] if len(new) < 2 else [new, new[::-1]]
            for order in orders:
                for kind in ("mm", "mmT") if post > 1 else ("mm",):
                    if kind == "mm":
                        nxt = acc[:start] + order + acc[stop:]
                        slow = SHORT_POST_PENALTY if 1 < post < SHORT_POST else 1.0
                    else:
                        nxt = acc[:start] + acc[stop:] + order
                        slow = 1.0
                    # mmT's transposed operand is copied (forward and backward): two more passes
                    copies = 2.0 * acc_size if kind == "mmT" else 0.0
                    out_size = size_of(nxt)
                    step = ChainStep(
                        group,
                        merge_eq,
                        kind,
                        start,
                        stop,
                        tuple(op_axes.index(c) for c in order + contracted),
                        len(order),
                    )
                    f = 2.0 * size_of(acc + order) * slow + merge_flops
                    rec(
                        i + 1,
                        nxt,
                        steps + [step],
                        flops + f,
                        moved + acc_size + out_size + copies,
                        max(largest, out_size),
                    )
        else:
            kept = [c for c in acc if c not in contracted]
            nxt = kept + new
            out_size = size_of(nxt)
            eq = "".join(acc) + "," + "".join(op_axes) + "->" + "".join(nxt)
            step = ChainStep(group, merge_eq, "einsum", equation=eq)
            f = 2.0 * size_of(list(dict.fromkeys(acc + op_axes))) + merge_flops
            # torch.einsum copies a permuted operand and its result: count those passes
            m = 3.0 * (acc_size + out_size)
            rec(i + 1, nxt, steps + [step], flops + f, moved + m, max(largest, out_size))

    rec(0, list(x_axes), [], 0.0, 0.0, 0)
    return best[0]


@lru_cache(maxsize=1024)
def plan_chain(
    x_axes: str,
    subs: tuple[str, ...],
    out_axes: str,
    shapes: tuple[tuple[int, ...], ...],
    rows: int,
    device_type: str,
    chains: tuple[tuple[tuple[int, ...], ...], ...],
) -> ChainPlan:
    """The cheapest (by the time estimate) execution of y = x contracted with the factors (cached).

    `chains` lists candidate absorption orders; each is a sequence of groups of factor positions
    (a group of several factors is merged first: a partial rebuild, e.g. CP's Khatri-Rao products).
    """
    sizes = {x_axes[0]: rows}
    for s, shape in zip(subs, shapes):
        sizes.update(zip(s, shape))
    best: ChainPlan | None = None
    for chain in chains:
        cand = _search_chain(x_axes, subs, out_axes, sizes, chain, device_type)
        if cand is not None and (best is None or cand.seconds(device_type, 4) < best.seconds(device_type, 4)):
            best = cand
    if best is None:
        raise ValueError("no valid contraction order among the candidates")
    return best


def row_bucket(rows: int) -> int:
    """Plans are made for a power-of-two number of rows (the order is valid for any rows)."""
    return 1 << max(0, int(rows - 1).bit_length())


def gemm_seconds(rows: int, i: int, j: int, device_type: str, itemsize: int) -> float:
    flops_per_s, bandwidth, launch = _speed(device_type, "gemm")
    return 2.0 * rows * i * j / flops_per_s + (rows * i + i * j + rows * j) * itemsize / bandwidth + launch


class FactorizedMap(LinearMap):
    """Base of the factorized formats: subclasses create their parameters and subscripts.

    A subclass calls ``super().__init__(in_modes, out_modes, mode)``, allocates rank indices with
    ``self.new_index()``, then calls ``self.set_factors(names, subscripts, n_terms)`` where
    ``subscripts[k]`` is the einsum subscript of parameter ``names[k]`` over the mode letters
    ``self.in_subs`` / ``self.out_subs`` and its rank letters, and ``n_terms`` is the number of
    rank terms summed in each entry of W (for the analytic init).
    """

    @classmethod
    def check_same_order(cls, in_modes: Sequence[int], out_modes: Sequence[int]) -> None:
        if len(in_modes) != len(out_modes):
            raise UserError(
                f"{cls.format_name}: in_modes {'x'.join(map(str, in_modes))} and out_modes "
                f"{'x'.join(map(str, out_modes))} need the same number of modes"
            )

    @classmethod
    def check_rank(cls, rank) -> int | list[int]:
        """One positive rank or a list of them; a format with a fixed length checks it in __init__."""
        return positive_ranks(rank, cls.format_name)

    @classmethod
    def from_spec(cls, in_modes, out_modes, rank, blocks, mode) -> FactorizedMap:
        """`blocks` only means something to BT, which overrides this."""
        cls.check_same_order(in_modes, out_modes)
        return cls(in_modes, out_modes, cls.check_rank(rank), mode=mode)

    def __init__(self, in_modes: Sequence[int], out_modes: Sequence[int], mode: str = "auto"):
        super().__init__()
        self.in_modes = tuple(int(m) for m in in_modes)
        self.out_modes = tuple(int(m) for m in out_modes)
        if len(self.in_modes) != len(self.out_modes):
            raise UserError(
                f"in_modes and out_modes need the same number of modes, got "
                f"{len(self.in_modes)} and {len(self.out_modes)}"
            )
        self.in_features = math.prod(self.in_modes)
        self.out_features = math.prod(self.out_modes)
        self.mode = check_mode(mode)
        self._letters = iter(LETTERS)
        self.row_sub = next(self._letters)
        self.in_subs = "".join(next(self._letters) for _ in self.in_modes)
        self.out_subs = "".join(next(self._letters) for _ in self.out_modes)
        self.factor_names: list[str] = []
        self.factor_subs: list[str] = []
        self.n_terms = 1
        self._decisions: OrderedDict[tuple, str] = OrderedDict()

    # --- set-up -----------------------------------------------------------------------------
    def new_index(self) -> str:
        try:
            return next(self._letters)
        except StopIteration:  # pragma: no cover - needs d > 8
            raise UserError("too many modes/ranks for one contraction; use fewer modes (d <= 6)") from None

    def set_factors(self, names: Sequence[str], subscripts: Sequence[str], n_terms: int) -> None:
        self.factor_names = list(names)
        self.factor_subs = list(subscripts)
        self.n_terms = int(n_terms)
        self.forward_equation = (
            f"{self.row_sub}{self.in_subs},{','.join(self.factor_subs)}->{self.row_sub}{self.out_subs}"
        )
        self.reconstruct_equation = f"{','.join(self.factor_subs)}->{self.in_subs}{self.out_subs}"
        self.reset_parameters()

    def factors(self) -> list[torch.Tensor]:
        return [getattr(self, name) for name in self.factor_names]

    # --- initialization ------------------------------------------------------------------------
    def reset_parameters(self, std: float | None = None) -> None:
        """Draw the factors so that the rebuilt W has std `std` (default 1/sqrt(in_features))."""
        target = (1.0 / math.sqrt(self.in_features)) if std is None else float(std)
        factors = self.factors()
        # Var(W) = n_terms * prod Var(f): give every factor the same variance
        log_var = (2 * math.log(target) - math.log(self.n_terms)) / len(factors)
        with torch.no_grad():
            for f in factors:
                f.normal_(0.0, math.exp(0.5 * log_var))
            if factors[0].is_meta:  # shapes only (e.g. counting parameters): nothing to rescale
                return
            sq = self.frobenius_sq()
            wanted = target * target * self.in_features * self.out_features
            scale = math.exp((math.log(wanted) - math.log(max(sq, 1e-300))) / (2 * len(factors)))
            for f in factors:
                f.mul_(scale)

    def frobenius_sq(self) -> float:
        """||W||_F^2 by contracting the factors with a copy of themselves (W never formed)."""
        rank_letters = sorted(set("".join(self.factor_subs)) - set(self.in_subs + self.out_subs))
        fresh = [c for c in LETTERS if c not in set("".join(self.factor_subs)) | {self.row_sub}]
        rename = dict(zip(rank_letters, fresh))
        primed = ["".join(rename.get(c, c) for c in s) for s in self.factor_subs]
        eq = ",".join(self.factor_subs + primed) + "->"
        ops = [f.detach().double() for f in self.factors()]
        return float(oe.contract(eq, *ops, *ops, optimize="greedy"))

    # --- forward -----------------------------------------------------------------------------
    def forward_chains(self) -> tuple[tuple[tuple[int, ...], ...], ...]:
        """Candidate absorption orders for the forward: sequences of groups of factor positions."""
        return (tuple((k,) for k in range(len(self.factor_names))),)

    def chain_terms(self) -> tuple[tuple[str, ...], list[list[torch.Tensor]]]:
        """(subscripts, operand lists) of the chains whose results add up to the forward.

        One term by default; BT runs one chain per block (its block index is then no batch axis).
        """
        return tuple(self.factor_subs), [self.factors()]

    def reconstruct_chains(self) -> tuple[tuple[int, ...], ...]:
        """Candidate absorption orders for reconstruct (operands are the factors)."""
        n = len(self.factor_names)
        return tuple(tuple([s] + [k for k in range(n) if k != s]) for s in range(n))

    def reconstruct_plan(self, device_type: str = "cpu") -> Plan:
        shapes = tuple(tuple(f.shape) for f in self.factors())
        return plan(self.reconstruct_equation, shapes, device_type, self.reconstruct_chains())

    def reconstruct(self) -> torch.Tensor:
        factors = self.factors()
        w = self.reconstruct_plan(factors[0].device.type).run(*factors)
        return w.reshape(self.in_features, self.out_features)

    def factorized_plan(self, rows: int, device_type: str = "cpu") -> ChainPlan:
        subs, terms = self.chain_terms()
        shapes = tuple(tuple(op.shape) for op in terms[0])
        return plan_chain(
            self.row_sub + self.in_subs,
            subs,
            self.out_subs,
            shapes,
            row_bucket(rows),
            device_type,
            self.forward_chains(),
        )

    def forward_factorized(self, x2d: torch.Tensor) -> torch.Tensor:
        """x2d (rows, I) -> (rows, J) without forming W."""
        rows = x2d.shape[0]
        p = self.factorized_plan(rows, x2d.device.type)
        x = x2d.reshape(rows, *self.in_modes)
        y = None
        for operands in self.chain_terms()[1]:
            term = p.run(x, operands)
            y = term if y is None else y + term
        return y.reshape(rows, self.out_features)

    def forward_reconstruct(self, x2d: torch.Tensor) -> torch.Tensor:
        return x2d @ self.reconstruct()

    def estimate_seconds(self, mode: str, rows: int, device_type: str, itemsize: int) -> float:
        if mode == "factorized":
            terms = len(self.chain_terms()[1])
            return terms * self.factorized_plan(rows, device_type).seconds(device_type, itemsize)
        rec = self.reconstruct_plan(device_type)
        return rec.seconds(device_type, itemsize) + gemm_seconds(
            rows, self.in_features, self.out_features, device_type, itemsize
        )

    def choose_mode(self, rows: int, dtype: torch.dtype, device: torch.device) -> str:
        """The forward mode for `rows` rows: self.mode, or for "auto" the cheaper by estimate (cached)."""
        if self.mode != "auto":
            return self.mode
        key = (rows, dtype, device.type)
        choice = self._decisions.get(key)
        if choice is None:
            itemsize = torch.empty((), dtype=dtype).element_size()
            costs = {m: self.estimate_seconds(m, rows, device.type, itemsize) for m in MODES[:2]}
            choice = min(costs, key=costs.get)
            self._decisions[key] = choice
            if len(self._decisions) > 64:
                self._decisions.popitem(last=False)
        return choice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected input (..., {self.in_features}), got {tuple(x.shape)}")
        lead = x.shape[:-1]
        x2d = x.reshape(-1, self.in_features)
        if x2d.shape[0] == 0:
            return x.new_zeros(*lead, self.out_features) + 0 * self.factors()[0].sum()
        if self.choose_mode(x2d.shape[0], x.dtype, x.device) == "reconstruct":
            y = self.forward_reconstruct(x2d)
        else:
            y = self.forward_factorized(x2d)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        ins = "x".join(map(str, self.in_modes))
        outs = "x".join(map(str, self.out_modes))
        return f"{ins} -> {outs}, params={self.num_params}, mode={self.mode}"
