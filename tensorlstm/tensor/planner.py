"""Contraction planning for the factorized maps: in which order their factors are contracted.

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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import opt_einsum as oe
import torch

from tensorlstm.tensor.cost import (
    BMM_MIN_POST,
    BMM_MIN_SIDE,
    MERGE_PASSES,
    SHORT_POST,
    SHORT_POST_PENALTY,
    WIDE_RATIO,
    speed,
    step_costs,
)
from tensorlstm.tensor.kernels import Gemm, ModeProduct, use_onednn


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
        flops_per_s, bandwidth, launch = speed(device_type, "chain")
        return self.flops / flops_per_s + self.moved * itemsize / bandwidth + len(self.steps) * launch

    def run(self, *operands: torch.Tensor) -> torch.Tensor:
        ops = list(operands)
        for positions, equation in self.steps:
            picked = [ops.pop(p) for p in positions]
            ops.append(torch.einsum(equation, *picked))
        return ops[0]


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
            f, m, out = step_costs(step_eq, sizes)
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
    # the product's sizes, for the time model: acc (pre, k, post) times an (n, k) operand (einsum: pre = the
    # accumulator's kept axes, post = 1); merge: elements of the group's merge (0 when none)
    pre: int = 0
    k: int = 0
    post: int = 0
    n: int = 0
    merge: int = 0


@dataclass(frozen=True)
class ChainPlan:
    steps: tuple[ChainStep, ...]
    final_perm: tuple[int, ...] | None
    flops: float
    moved: float
    largest: int

    def seconds(self, device_type: str, itemsize: int) -> float:
        flops_per_s, bandwidth, launch = speed(device_type, "chain")
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
                a2 = acc.reshape(pre, k)
                out = Gemm.apply(a2, mat) if use_onednn(a2, mat) else a2 @ _right_operand(mat)
            elif step.kind == "mm":
                acc3 = acc.reshape(pre, k, post)
                if post >= BMM_MIN_POST or min(post, k) >= BMM_MIN_SIDE:
                    out = ModeProduct.apply(acc3, mat)
                else:
                    out = torch.matmul(mat, acc3)
            else:  # "mmT": the new axes go after the remaining trailing axes
                out = acc.reshape(pre, k, post).transpose(1, 2) @ _right_operand(mat)
                acc = out.reshape(*shape[: step.start], *shape[step.stop :], *new_shape)
                continue
            acc = out.reshape(*shape[: step.start], *new_shape, *shape[step.stop :])
        if self.final_perm is not None:
            acc = acc.permute(self.final_perm)
        return acc


def _right_operand(mat: torch.Tensor) -> torch.Tensor:
    """W (k, n) for acc @ W, from the factor's (n, k) matrix. Where n >= WIDE_RATIO * k it is stored (k, n)
    row-major (a copy of the small factor): torch's mm backward then forms dL/dW as acc^T @ dout, a GEMM with the
    wide (k, n) output, instead of (dout^T @ acc)^T for a transposed view, which runs ~2x slower there (CP's
    (3200, 20) @ (20, 2048) at the bench's sequence shape, torch.profiler, 1 CPU thread: 11 ms against 21 ms per
    call; the CP map fwd+bwd ~11% faster there, ~7% at UCF11). Elsewhere the transposed view, which measured as
    fast or faster (TT's (12800, 64) @ (64, 256) at the sequence shape)."""
    if mat.shape[0] >= WIDE_RATIO * mat.shape[1]:
        return mat.t().contiguous()
    return mat.t()


def chain_executions(
    x_axes: str,
    subs: tuple[str, ...],
    out_axes: str,
    sizes: dict[str, int],
    chain: tuple[tuple[int, ...], ...],
) -> list[ChainPlan]:
    """Every execution of one absorption order (branching on each step's kind and new-axes order)."""
    found: list[ChainPlan] = []
    size_of = lambda axes: math.prod(sizes[c] for c in axes)  # noqa: E731

    def rec(i: int, acc: list[str], steps: list[ChainStep], flops: float, moved: float, largest: int) -> None:
        if i == len(chain):
            final_perm = None
            if "".join(acc) != x_axes[0] + out_axes:
                final_perm = tuple(acc.index(c) for c in x_axes[0] + out_axes)
                moved += 2 * size_of(acc)
            found.append(ChainPlan(tuple(steps), final_perm, flops, moved, largest))
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
        # a merged operand is written, then read by the product; its gradient is written and read again (and
        # unmerged) in the backward: MERGE_PASSES passes over its elements
        merge_moved = MERGE_PASSES * size_of(op_axes) if merge_eq is not None else 0.0
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
            pre, k, n = size_of(acc[:start]), size_of(contracted), size_of(new)
            out_size = acc_size // k * n
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
                    step = ChainStep(
                        group,
                        merge_eq,
                        kind,
                        start,
                        stop,
                        tuple(op_axes.index(c) for c in order + contracted),
                        len(order),
                        pre=pre,
                        k=k,
                        post=post,
                        n=n,
                        merge=int(merge_flops // 2),
                    )
                    f = 2.0 * acc_size * n * slow + merge_flops
                    rec(
                        i + 1,
                        nxt,
                        steps + [step],
                        flops + f,
                        moved + acc_size + out_size + copies + merge_moved,
                        max(largest, out_size),
                    )
        else:
            kept = [c for c in acc if c not in contracted]
            nxt = kept + new
            out_size = size_of(nxt)
            eq = "".join(acc) + "," + "".join(op_axes) + "->" + "".join(nxt)
            step = ChainStep(group, merge_eq, "einsum", equation=eq, pre=size_of(kept), k=size_of(contracted),
                             post=1, n=size_of(new), merge=int(merge_flops // 2))
            f = 2.0 * size_of(list(dict.fromkeys(acc + op_axes))) + merge_flops
            # torch.einsum copies a permuted operand and its result: count those passes
            m = 3.0 * (acc_size + out_size) + merge_moved
            rec(i + 1, nxt, steps + [step], flops + f, moved + m, max(largest, out_size))

    rec(0, list(x_axes), [], 0.0, 0.0, 0)
    return found


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
    best_s = math.inf
    for chain in chains:
        for cand in chain_executions(x_axes, subs, out_axes, sizes, chain):
            s = cand.seconds(device_type, 4)
            if s < best_s:
                best, best_s = cand, s
    if best is None:
        raise ValueError("no valid contraction order among the candidates")
    return best


def row_bucket(rows: int) -> int:
    """Plans are made for a power-of-two number of rows (the order is valid for any rows)."""
    return 1 << max(0, int(rows - 1).bit_length())
