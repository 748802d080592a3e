"""The time model the planner and `auto` use to rank contraction orders and the two forward modes.

A step's estimated time is FLOPs / rate + bytes moved / bandwidth + a fixed cost per step, with constants per
device type. It is deterministic on purpose: `auto` must make the same choice on every run (the two modes round
differently, so a measured choice would make runs non-reproducible).
"""

from __future__ import annotations

import math

# Time model constants per device type: (FLOP/s, bytes/s, seconds per step) for the chains of small
# contractions and, separately, for the one large GEMM of the reconstruct mode. CPU values are a
# least-squares fit of forward times of 40 (map, rows) cases measured on this project's 2-core machine
# with one thread (tt/bt/cp/tucker, d = 2..4, 16..3200 rows; median error ~20%); `auto` only needs
# them to rank the two modes. CUDA values are nominal (not fitted).
DEVICE_SPEED = {
    "cpu": {"chain": (1.9e11, 5.4e9, 4.0e-5), "gemm": (1.0e11, 3.0e9, 1.0e-5)},
    "cuda": {"chain": (2.0e13, 1.5e12, 3.0e-5), "gemm": (4.0e13, 2.0e12, 1.0e-5)},
}


def speed(device_type: str, kind: str) -> tuple[float, float, float]:
    return DEVICE_SPEED.get(device_type, DEVICE_SPEED["cuda"])[kind]


# Measured on CPU (1 thread, forward+backward of (pre, K, post) x (N, K) products of 0.13-0.18 GFLOP):
# a plain GEMM (post == 1), the transposed form "mmT" and the in-place form with a long post all run
# at about the same rate; the in-place form with a short post runs ~1.5x slower (or worse: Tucker's first
# product at the UCF11 shape in place with post 18, (768, 400, 18) x (16, 400), 15 ms fwd+bwd, against ~8 ms
# for the plain GEMM of the last two modes, (15360, 360) x (16, 360)), hence the bound 32.
SHORT_POST = 32
SHORT_POST_PENALTY = 1.5
# In-place products with at least this long a post run as a broadcast bmm (ModeProduct): 2-3x faster
# forward than torch.matmul there; with a shorter post its backward is slower than matmul's, except where both
# post and K are at least BMM_MIN_SIDE (torch.matmul then copies the broadcast factor, pre x N x K entries):
# fwd+bwd, 1 thread, ModeProduct against matmul: (1536, 32, 16) x 16 2.3 / 3.4 ms, (96, 160, 32) x 16 1.0 / 2.0,
# (4096, 16, 16) x 16 4.2 / 7.3, but (12800, 4, 16) x 4 11.2 / 7.3.
BMM_MIN_POST = 64
BMM_MIN_SIDE = 16
# passes over a merged operand's elements that a chain step costs beyond its product (planner.chain_executions):
# written by the merge and read by the product, its gradient written and read by the merge's backward. Without
# them the model preferred Tucker's four out-mode factors merged into one (1024, 256) operand at the UCF11 shape
# (96 rows), measured fwd+bwd 16.5 ms against 12.4 ms for the three non-growing ones merged and the growing one
# last (1 CPU thread, 9 rounds).
MERGE_PASSES = 4
# acc @ W with n >= WIDE_RATIO * k outputs per contracted entry: W is stored (k, n) row-major (planner._right_operand)
WIDE_RATIO = 16


def step_costs(equation: str, sizes: dict[str, int]) -> tuple[float, float, int]:
    inputs, output = equation.split("->")
    terms = inputs.split(",")
    all_idx = set("".join(terms))
    contracted = all_idx - set(output)
    total = math.prod(sizes[c] for c in all_idx)
    flops = float(total) * (2 if contracted else 1)
    out_size = math.prod(sizes[c] for c in output)
    moved = float(out_size + sum(math.prod(sizes[c] for c in t) for t in terms))
    return flops, moved, out_size


def gemm_seconds(rows: int, i: int, j: int, device_type: str, itemsize: int) -> float:
    flops_per_s, bandwidth, launch = speed(device_type, "gemm")
    return 2.0 * rows * i * j / flops_per_s + (rows * i + i * j + rows * j) * itemsize / bandwidth + launch
