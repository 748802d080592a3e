"""Factorized maps: forward == x @ reconstruct() in float64, gradients, init scale, auto mode, errors."""

import math
import random

import pytest
import torch
from torch.func import functional_call

from tensorlstm.errors import UserError
from tensorlstm.tensor import FORMATS, build_map, gate_modes
from tensorlstm.tensor.kernels import ModeProduct
from tensorlstm.tensor.planner import ChainPlan, ChainStep

FACTORIZED = [f for f in FORMATS if f != "dense"]


def random_rank(fmt, d, rng):
    if fmt == "tt":
        return [1] + [rng.randint(1, 4) for _ in range(d - 1)] + [1]
    if fmt == "tucker":
        return [rng.randint(1, 3) for _ in range(2 * d)]
    return rng.randint(1, 4)


def random_case(fmt, d, seed):
    rng = random.Random(seed)
    in_modes = [rng.randint(1, 5) for _ in range(d)]
    out_modes = [rng.randint(1, 4) for _ in range(d)]
    in_modes[rng.randrange(d)] += 1  # at least one mode > 1, modes uneven
    return in_modes, out_modes, random_rank(fmt, d, rng), rng.randint(1, 3)


def double_map(fmt, in_modes, out_modes, rank, blocks, mode):
    return build_map(fmt, in_modes, out_modes, rank=rank, blocks=blocks, forward=mode).double()


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("d", [2, 3, 4, 5])
def test_forward_equals_x_times_reconstruct(fmt, d):
    torch.manual_seed(d)
    for seed in range(2):
        in_modes, out_modes, rank, blocks = random_case(fmt, d, 100 * d + seed)
        results = {}
        for mode in ("factorized", "reconstruct", "auto"):
            m = double_map(fmt, in_modes, out_modes, rank, blocks, mode)
            if mode != "factorized":
                m.load_state_dict(results["factorized"][0].state_dict())
            w = m.reconstruct()
            assert w.shape == (math.prod(in_modes), math.prod(out_modes))
            for lead in [(3,), (2, 5), (2, 3, 2)]:
                x = torch.randn(*lead, m.in_features, dtype=torch.float64)
                y = m(x)
                assert y.shape == (*lead, m.out_features)
                torch.testing.assert_close(y, x @ w, rtol=1e-10, atol=1e-12)
            results[mode] = (m, y, x)
        x = results["auto"][2]
        ys = [results[mode][0](x) for mode in results]
        torch.testing.assert_close(ys[0], ys[1], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(ys[0], ys[2], rtol=1e-10, atol=1e-12)


def test_reconstruct_matches_formula_elementwise():
    """Check reconstruct() against each paper's formula written out with explicit loops over ranks."""
    torch.manual_seed(0)
    ins, outs = [2, 3], [3, 2]
    i, j = (1, 2), (2, 1)  # one entry W[(i1,i2),(j1,j2)]
    row, col = i[0] * 3 + i[1], j[0] * 2 + j[1]

    tt = double_map("tt", ins, outs, [1, 3, 1], 1, "reconstruct")
    expected = tt.core0[0, i[0], j[0], :] @ tt.core1[:, i[1], j[1], 0]
    torch.testing.assert_close(tt.reconstruct()[row, col], expected)

    bt = double_map("bt", ins, outs, 2, 2, "reconstruct")
    expected = sum(
        bt.core[n, a, b] * bt.factor0[n, i[0], j[0], a] * bt.factor1[n, i[1], j[1], b]
        for n in range(2)
        for a in range(2)
        for b in range(2)
    )
    torch.testing.assert_close(bt.reconstruct()[row, col], expected)

    cp = double_map("cp", ins, outs, 3, 1, "reconstruct")
    expected = sum(
        cp.in_factor0[i[0], r] * cp.in_factor1[i[1], r] * cp.out_factor0[j[0], r] * cp.out_factor1[j[1], r]
        for r in range(3)
    )
    torch.testing.assert_close(cp.reconstruct()[row, col], expected)

    tk = double_map("tucker", ins, outs, [2, 1, 2, 2], 1, "reconstruct")
    expected = sum(
        tk.core[a, b, c, e]
        * tk.in_factor0[i[0], a]
        * tk.in_factor1[i[1], b]
        * tk.out_factor0[j[0], c]
        * tk.out_factor1[j[1], e]
        for a in range(2)
        for b in range(1)
        for c in range(2)
        for e in range(2)
    )
    torch.testing.assert_close(tk.reconstruct()[row, col], expected)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("mode", ["factorized", "reconstruct"])
def test_gradcheck(fmt, mode):
    torch.manual_seed(1)
    ranks = {"tt": [1, 2, 3, 1], "bt": 2, "cp": 3, "tucker": [2, 1, 2, 2, 1, 2], "dense": None}
    m = double_map(fmt, [2, 3, 2], [2, 1, 3], ranks[fmt], 2, mode)
    names = [n for n, _ in m.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for _, p in m.named_parameters()]
    x = torch.randn(2, 3, 12, dtype=torch.float64, requires_grad=True)

    def fn(x, *ps):
        return functional_call(m, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-7)


def sampled_rows_of_w(m, n_rows, seed):
    """Exact rows of W through forward on one-hot inputs (never forms the whole W)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(m.in_features, generator=g)[:n_rows]
    eye = torch.zeros(n_rows, m.in_features)
    eye[torch.arange(n_rows), idx] = 1.0
    with torch.no_grad():
        return m(eye)


INIT_SHAPES = [
    ([8, 20, 20, 18], gate_modes([4, 4, 4, 4], 4, "first")),  # UCF11 LSTM
    ([8, 20, 20, 18], gate_modes([4, 4, 4, 4], 3, "first")),  # UCF11 GRU
    ([4, 4, 4, 4], [8, 4, 4, 12]),  # Tjandra W_xh
    ([36, 40, 40], [32, 4, 8]),
    ([16, 9], [6, 7]),
    ([5, 3, 4, 2, 3], [2, 3, 2, 2, 4]),
]
INIT_RANKS = {"tt": 4, "bt": 4, "cp": 20, "tucker": 3}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", INIT_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_init_is_variance_preserving(fmt, shape):
    in_modes, out_modes = shape
    if fmt == "dense" and math.prod(in_modes) * math.prod(out_modes) > 1_000_000:
        pytest.skip("dense 59M-weight init is slow; dense is checked on the other shapes")
    torch.manual_seed(3)
    m = build_map(fmt, in_modes, out_modes, rank=INIT_RANKS.get(fmt), blocks=2, forward="factorized")
    rows = sampled_rows_of_w(m, min(m.in_features, 256), seed=4)
    target = 1.0 / math.sqrt(m.in_features)
    assert abs(rows.std().item() / target - 1.0) < 0.15, (rows.std().item(), target)
    assert abs(rows.mean().item()) < 0.2 * target


@pytest.mark.parametrize("fmt", FACTORIZED)
def test_frobenius_norm_without_forming_w(fmt):
    m = double_map(fmt, [3, 4, 2], [2, 5, 3], None, 2, "reconstruct")
    assert m.frobenius_sq() == pytest.approx(float((m.reconstruct().detach() ** 2).sum()), rel=1e-10)


def test_auto_choice_is_cached_and_sensible():
    ucf = build_map("bt", [8, 20, 20, 18], [16, 4, 4, 4], rank=4, blocks=2, forward="auto")
    assert ucf.choose_mode(96, torch.float32, torch.device("cpu")) == "factorized"
    assert (96, torch.float32, "cpu") in ucf._decisions
    # sequence shape (32 x 100 rows, 256 -> 1536): W has 393K entries, rebuilding it is cheap (measured
    # ~5x faster than the factorized chain on CPU)
    seq = build_map("bt", [4, 4, 4, 4], [8, 4, 4, 12], rank=4, blocks=2, forward="auto")
    assert seq.choose_mode(3200, torch.float32, torch.device("cpu")) == "reconstruct"
    fixed = build_map("tt", [4, 4], [4, 4], rank=4, forward="factorized")
    assert fixed.choose_mode(10_000, torch.float32, torch.device("cpu")) == "factorized"


def test_plans_are_cached_per_shape():
    m = build_map("tt", [3, 4, 5], [2, 3, 4], rank=3, forward="factorized")
    assert m.factorized_plan(7) is m.factorized_plan(8)  # rows are bucketed to powers of two
    assert m.factorized_plan(7) is not m.factorized_plan(9)
    assert m.reconstruct_plan() is m.reconstruct_plan()


def test_plan_avoids_huge_intermediates_at_ucf11_shape():
    m = build_map("bt", [8, 20, 20, 18], [16, 4, 4, 4], rank=4, blocks=2, forward="factorized")
    p = m.factorized_plan(96)
    assert p.largest <= 2 * 96 * 57600  # never more than twice the input
    assert p.flops < 0.2 * 2 * 96 * 57600 * 1024  # far below the dense GEMM


def test_empty_rows_and_caller_lists_untouched():
    ins, outs = [2, 3], [4, 1]
    m = build_map("cp", ins, outs, rank=2)
    assert ins == [2, 3] and outs == [4, 1]
    y = m(torch.zeros(0, 6))
    assert y.shape == (0, 4)


def test_wrong_input_size():
    m = build_map("tt", [2, 3], [2, 2], rank=2)
    with pytest.raises(ValueError, match="6"):
        m(torch.zeros(3, 5))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(fmt="svd"), "dense, tt, bt, cp, tucker"),
        (dict(fmt="tt", rank=0), ">= 1"),
        (dict(fmt="bt", rank=-2), ">= 1"),
        (dict(fmt="cp", rank=[2, 0]), ">= 1"),
        (dict(fmt="tt", rank=[1, 4, 1]), "d\\+1"),
        (dict(fmt="tt", rank=[2, 4, 4, 1]), "starting and ending with 1"),
        (dict(fmt="tucker", rank=[2, 2]), "2d"),
        (dict(fmt="bt", rank=[2, 2]), "single rank"),
        (dict(fmt="bt", blocks=0), "blocks"),
        (dict(fmt="tt", forward="fast"), "factorized, reconstruct, auto"),
        (dict(fmt="tt", out_modes=[2, 2]), "same number of modes"),
        (dict(fmt="cp", in_modes=[0, 3, 3]), "positive"),
    ],
)
def test_build_map_errors(kwargs, match):
    args = dict(fmt="tt", in_modes=[2, 3, 4], out_modes=[2, 2, 2], rank=2)
    args.update(kwargs)
    with pytest.raises(UserError, match=match):
        build_map(**args)


def test_build_map_old_mode_keyword_is_refused_with_the_new_name():
    hint = r"^build_map\(mode=\.\.\.\) is now build_map\(forward=\.\.\.\): write forward='factorized'$"
    with pytest.raises(TypeError, match=hint):
        build_map("tt", [2, 3], [2, 2], 2, mode="factorized")
    assert build_map("tt", [2, 3], [2, 2], 2, forward="factorized").mode == "factorized"


@pytest.mark.parametrize("pre,k,post,n", [(3, 4, 70, 2), (40, 3, 5, 2)])
def test_mode_product_gradcheck(pre, k, post, n):
    """The custom batched product (both branches of its weight gradient) against autograd's numerics."""
    torch.manual_seed(5)
    x = torch.randn(pre, k, post, dtype=torch.float64, requires_grad=True)
    mat = torch.randn(n, k, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(ModeProduct.apply(x, mat), torch.einsum("nk,pkq->pnq", mat, x))
    assert torch.autograd.gradcheck(ModeProduct.apply, (x, mat), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("fmt", FACTORIZED)
def test_long_trailing_modes_match_reconstruct(fmt):
    """A shape where the planner runs in-place products over long trailing modes (ModeProduct) and
    einsum steps (bt): output and parameter gradients still match x @ W."""
    torch.manual_seed(6)
    m = double_map(fmt, [4, 20, 20, 18], [2, 2, 2, 2], 2, 2, "factorized")
    steps = m.factorized_plan(4).steps
    if fmt == "bt":
        assert any(s.kind == "mm" and s.start == 2 for s in steps)  # post = 20 * 18 >= BMM_MIN_POST
    x = torch.randn(4, m.in_features, dtype=torch.float64)
    torch.testing.assert_close(m(x), x @ m.reconstruct(), rtol=1e-10, atol=1e-12)
    names = [n for n, _ in m.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for _, p in m.named_parameters())
    assert torch.autograd.gradcheck(
        lambda *ps: functional_call(m, dict(zip(names, ps)), (x,)), params, eps=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("kind", ["mm", "mmT", "einsum"])
def test_chain_step_kinds(kind):
    torch.manual_seed(7)
    acc = torch.randn(3, 4, 5, 6, dtype=torch.float64, requires_grad=True)  # axes z a b c
    factor = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)  # axes b n
    if kind == "einsum":
        step = ChainStep((0,), None, "einsum", equation="zabc,bn->zacn")
    else:
        step = ChainStep((0,), None, kind, start=2, stop=3, perm=(1, 0), n_new=1)
    out = ChainPlan((step,), None, 0.0, 0.0, 0).run(acc, [factor])
    expected = {"mm": "zanc", "mmT": "zacn", "einsum": "zacn"}[kind]
    torch.testing.assert_close(out, torch.einsum(f"zabc,bn->{expected}", acc, factor))
    assert torch.autograd.gradcheck(
        lambda a, f: ChainPlan((step,), None, 0.0, 0.0, 0).run(a, [f]), (acc, factor), eps=1e-6, atol=1e-7
    )


def test_bt_chunked_path_matches_dense_and_gradchecks(monkeypatch):
    """The 4-mode BT kernel splits rows into chunks: a full chunk plus a partial one give x @ W exactly,
    with exact gradients for the input, the cores and every factor."""
    import tensorlstm.tensor.bt as bt

    monkeypatch.setattr(bt, "CHUNK_ELEMENTS", 4 * 8 * 6 * 8)  # 4 of the 6 (row, mode-0) slabs per chunk
    torch.manual_seed(0)
    m = build_map("bt", [2, 8, 6, 8], [3, 2, 2, 2], rank=2, blocks=2, forward="factorized").double()
    calls, chain4 = [], bt.BTMap._forward_chain4
    monkeypatch.setattr(bt.BTMap, "_forward_chain4", lambda self, x: calls.append(1) or chain4(self, x))
    x = torch.randn(3, 768, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(m(x), x @ m.reconstruct())
    assert calls, "the chunked kernel was not used"
    assert torch.autograd.gradcheck(m, (x,), eps=1e-6, atol=1e-6)
    names = [n for n, _ in m.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_() for p in m.parameters())
    xd = x.detach()
    assert torch.autograd.gradcheck(lambda *ps: functional_call(m, dict(zip(names, ps)), (xd,)), params, atol=1e-6)


def test_bt_uses_the_chunked_kernel_only_where_it_wins(monkeypatch):
    import tensorlstm.tensor.bt as bt

    ucf = build_map("bt", [8, 20, 20, 18], [16, 4, 4, 4], rank=4, blocks=2)  # 7,200 trailing inputs -> 64
    seq = build_map("bt", [4, 4, 4, 4], [8, 4, 4, 12], rank=4, blocks=2)  # 64 -> 192: the planned chain
    calls, chain4 = [], bt.BTMap._forward_chain4
    monkeypatch.setattr(bt.BTMap, "_forward_chain4", lambda self, x: calls.append(self) or chain4(self, x))
    for m in (ucf, seq):
        m.forward_factorized(torch.randn(2, m.in_features))
    assert calls == [ucf]


def test_a_new_format_is_one_registered_class():
    """A low-rank map W = A B (A over the in modes, B over the out modes), registered once, is usable by
    build_map and by an LSTM cell with no other edit; its rank check is its own."""
    from torch import nn

    from tensorlstm.cells import build_cell
    from tensorlstm.defaults import cell_config
    from tensorlstm.tensor import MAP_FORMATS, factorized_formats, register_format
    from tensorlstm.tensor.factorized import FactorizedMap
    from tensorlstm.tensor.registry import single_rank

    @register_format("lowrank", default_rank=3)
    class LowRankMap(FactorizedMap):
        @classmethod
        def check_rank(cls, rank):
            return single_rank(rank, "lowrank")

        def __init__(self, in_modes, out_modes, rank, mode="auto"):
            super().__init__(in_modes, out_modes, mode)
            self.rank = rank
            r = self.new_index()
            self.a = nn.Parameter(torch.empty(*self.in_modes, rank))
            self.b = nn.Parameter(torch.empty(rank, *self.out_modes))
            self.set_factors(["a", "b"], [self.in_subs + r, r + self.out_subs], n_terms=rank)

    try:
        assert "lowrank" in factorized_formats()
        m = build_map("lowrank", [3, 4], [2, 5], forward="factorized").double()  # rank None -> its default 3
        assert m.num_params == 3 * 12 + 3 * 10
        x = torch.randn(7, 12, dtype=torch.float64)
        assert torch.allclose(m(x), x @ m.reconstruct(), atol=1e-12)
        with pytest.raises(UserError, match="lowrank takes a single rank"):
            build_map("lowrank", [3, 4], [2, 5], rank=[2, 2])
        net = build_cell(cell_config("lstm", format="lowrank", rank=2, in_modes=[3, 4], hidden_modes=[2, 4]), 12, 8)
        assert net.input_map_params() == 2 * 12 + 2 * (4 * 2) * 4  # the 4 gates multiply the first hidden mode
        assert net(torch.randn(2, 3, 12))[0].shape == (2, 3, 8)
    finally:
        MAP_FORMATS.pop("lowrank")
