"""The base class of the factorized formats (TT, BT, CP, Tucker): factors as einsum subscripts, the planned
forward in the modes factorized | reconstruct | auto (see tensor/planner.py), and the analytic initialization.

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

import opt_einsum as oe
import torch

from tensorlstm.errors import UserError
from tensorlstm.tensor.base import LinearMap
from tensorlstm.tensor.cost import gemm_seconds
from tensorlstm.tensor.planner import ChainPlan, Plan, plan, plan_chain, row_bucket
from tensorlstm.tensor.registry import positive_ranks

MODES = ("factorized", "reconstruct", "auto")
LETTERS = string.ascii_lowercase + string.ascii_uppercase


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise UserError(f"unknown map mode {mode!r}; choose one of: {', '.join(MODES)}")
    return mode


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

    def mode_flops(self, mode: str, rows: int, device_type: str) -> float:
        """Forward FLOPs of a mode for `rows` rows (the factorized chain of every term, or rebuild + GEMM)."""
        if mode == "factorized":
            return len(self.chain_terms()[1]) * self.factorized_plan(rows, device_type).flops
        return self.reconstruct_plan(device_type).flops + 2.0 * rows * self.in_features * self.out_features

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
            if choice == "factorized" and self.mode_flops("factorized", rows, device.type) > \
                    self.mode_flops("reconstruct", rows, device.type):
                # the model's chain rate is fitted on chains of small contractions; a chain of large GEMMs that
                # does more arithmetic than rebuilding W plus one GEMM is not faster (measured, 1 CPU thread:
                # Tucker 4x4x4x4 -> 32x4x4x4 rank 4 at 3,200 rows, a 4.9 GFLOP chain: 135 ms vs 83 ms fwd+bwd)
                choice = "reconstruct"
            self._decisions[key] = choice
            if len(self._decisions) > 64:
                self._decisions.popitem(last=False)
        return choice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"expected input (..., {self.in_features}), got {tuple(x.shape)}")
        if (x.dim() == 3 and self.in_features > self.out_features and not x.is_contiguous()
                and x.transpose(0, 1).is_contiguous()):
            # a time-major view of batch-first data (the recurrent layers' projection) into fewer outputs: map
            # the rows in their stored order and transpose the smaller output instead of copying x (UCF11: 22 MB
            # per step against 0.4 MB)
            return self(x.transpose(0, 1)).transpose(0, 1).contiguous()
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
