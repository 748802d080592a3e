"""Tensorized LSTM (He et al. 2017) and the shared-weight stacked LSTM: depth by delay, causality,
parameter counts from the paper's shapes, step/forward agreement, truncated BPTT, lengths, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tensorlstm.cells import build_cell
from tensorlstm.defaults import cell_config
from tensorlstm.errors import UserError

I = 3  # input size of the small nets



def tlstm(M: int = 3, **cfg) -> nn.Module:
    return build_cell(cell_config("tlstm", **cfg), I, M).double()


def slstm(H: int = 4, **cfg) -> nn.Module:
    return build_cell(cell_config("slstm", **cfg), I, H).double()


def dependence(net: nn.Module, T: int, seed: int = 0) -> torch.Tensor:
    """dep[t, s] = output y_t has a non-zero gradient with respect to input x_s.

    One backward pass: batch row t carries its own copy of the sequence and only its y_t is probed
    (rows never interact, so row t's input gradient is the gradient of y_t alone).
    """
    torch.manual_seed(seed)
    x = torch.randn(1, T, I, dtype=torch.float64).repeat(T, 1, 1).requires_grad_(True)
    y, _ = net(x)
    probe = torch.randn(y.shape[-1], dtype=torch.float64)
    rows = torch.arange(T)
    (y[rows, rows] * probe).sum().backward()
    return x.grad.abs().sum(-1) > 0


CAUSAL_CONFIGS = [
    pytest.param({"P": 4}, 4, id="2D-K3"),
    pytest.param({"P": 3, "feedback": False}, 3, id="2D-noF-K2"),
    pytest.param({"P": 5, "K": 5}, 3, id="2D-K5"),
    pytest.param({"P": 4, "K": 3, "feedback": False}, 2, id="2D-noF-K3"),
    pytest.param({"P": 3, "memory_conv": False}, 3, id="2D-noM"),
    pytest.param({"P": 3, "norm": "ln"}, 3, id="2D-ln"),
    pytest.param({"P": [3, 2]}, 3, id="3D-K3"),
    pytest.param({"P": [2, 3], "feedback": False}, 3, id="3D-noF"),
    pytest.param({"P": [3, 3], "norm": "ln", "memory_conv": False}, 3, id="3D-ln-noM"),
    pytest.param({"P": 4, "norm": "ccn"}, 4, id="2D-ccn"),
    pytest.param({"P": 3, "feedback": False, "norm": "ccn"}, 3, id="2D-noF-ccn"),
    pytest.param({"P": 5, "K": 5, "norm": "ccn"}, 3, id="2D-K5-ccn"),
    pytest.param({"P": [3, 2], "norm": "ccn"}, 3, id="3D-ccn"),
    pytest.param({"P": 3, "norm": "ccn", "memory_conv": False}, 3, id="2D-noM-ccn"),
]


@pytest.mark.parametrize("cfg,depth", CAUSAL_CONFIGS)
def test_output_depends_on_current_and_past_inputs_only(cfg, depth):
    net = tlstm(**cfg)
    assert net.describe()["depth"] == depth and net.delay == depth - 1
    T = 7
    dep = dependence(net, T)
    lower = torch.tril(torch.ones(T, T, dtype=torch.bool))
    assert dep[lower].all(), "y_t must depend on x_t and on every earlier input"
    assert not dep[~lower].any(), "y_t must not depend on any input after step t"


@pytest.mark.parametrize("cfg,depth", CAUSAL_CONFIGS)
def test_one_step_too_shallow_loses_the_current_input(cfg, depth):
    net = tlstm(**cfg)
    net.delay = depth - 2  # read the output one step too early
    dep = dependence(net, 6)
    assert not dep.diagonal().any(), "with L - 1 the output cannot have seen x_t yet"
    assert dep.diagonal(-1).all(), "but it has seen x_{t-1}"


def test_paper_depth_equals_tensor_size():
    for P in range(1, 7):
        assert tlstm(P=P).describe()["depth"] == P  # K = 3 with feedback
        assert tlstm(P=P, feedback=False).describe()["depth"] == P  # K = 2 without (tLSTM-F)
        assert tlstm(P=[P, max(1, P - 1)]).describe()["depth"] == P  # 3D: max(P1, P2) (box kernel)


def test_channel_norm_over_locations_looks_ahead_within_the_delay():
    """Documented property of norm=cn (statistics over locations): y_t sees x_{t+1..t+L-1}, never later."""
    net = tlstm(P=3, norm="cn")
    L, T = 3, 8
    dep = dependence(net, T)
    for t in range(T):
        assert dep[t, : min(T, t + L)].all()
        assert not dep[t, t + L :].any()
    assert dep[0, 1], "cn mixes locations within a step"


def expected_tlstm_params(M: int, K: int, axes: int, memory_conv: bool, norm: str) -> int:
    taps = K**axes
    out = 4 * M + (taps if memory_conv else 0)  # M^o: G, I, F, O (+ Q: the memory-conv kernel taps)
    params = I * M + M  # W^x, b^x
    params += taps * M * out + out  # W^h in R^{K^(D-1) x M x M^o}, b^h
    if norm != "none":
        params += 2 * 4 * M + 2 * M  # gain and bias per channel: the gate pre-activations and C_t
    return params


@pytest.mark.parametrize("feedback", [True, False])
@pytest.mark.parametrize("memory_conv", [True, False])
@pytest.mark.parametrize("norm", ["none", "ln", "cn", "ccn"])
def test_param_count_is_the_papers_and_independent_of_P(feedback, memory_conv, norm):
    M = 5
    K = 3 if feedback else 2
    counts = set()
    for P in [2, 3, 6, [2, 2], [3, 4]]:
        net = tlstm(M, P=P, feedback=feedback, memory_conv=memory_conv, norm=norm)
        axes = 1 if isinstance(P, int) else 2
        n = sum(p.numel() for p in net.parameters())
        assert n == expected_tlstm_params(M, K, axes, memory_conv, norm) == net.describe()["params"]
        assert net.input_map_params() == I * M
        counts.add((axes, n))
    assert len(counts) == 2  # one count per tensor order, whatever P is


def _step_loop(net, x, state):
    B, T, _ = x.shape
    outputs = []
    final = None
    for s in range(T + net.delay):
        x_s = x[:, s] if s < T else torch.zeros_like(x[:, 0])
        y, state = net.step(x_s, state)
        if s >= net.delay:
            outputs.append(y)
        if s == T - 1:
            final = state
    return torch.stack(outputs, 1), final


NETS = {
    "2D": lambda: tlstm(4, P=3),
    "3D-ln": lambda: tlstm(4, P=[2, 3], norm="ln"),
    "2D-noF-ln": lambda: tlstm(4, P=3, feedback=False, norm="ln"),
    "3D-noM": lambda: tlstm(4, P=[2, 2], memory_conv=False),
    "2D-ccn": lambda: tlstm(4, P=3, norm="ccn"),
    "3D-ccn": lambda: tlstm(4, P=[2, 3], norm="ccn", feedback=False),
    "slstm": lambda: slstm(4, layers=3),
}


@pytest.mark.parametrize("make", NETS.values(), ids=NETS.keys())
def test_forward_equals_step_loop_and_carries_state(make):
    torch.manual_seed(1)
    net = make()
    x = torch.randn(2, 9, I, dtype=torch.float64)
    y, state = net(x)
    y_ref, state_ref = _step_loop(net, x, net.init_state(2, dtype=torch.float64))
    torch.testing.assert_close(y, y_ref)
    for a, b in zip(state, state_ref):
        torch.testing.assert_close(a, b)
    # truncated BPTT: two chunks with the carried state give the outputs of one pass
    y1, s1 = net(x[:, :4])
    y2, s2 = net(x[:, 4:], s1)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y)
    for a, b in zip(s2, state):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("make", NETS.values(), ids=NETS.keys())
def test_lengths_stop_the_state_and_keep_outputs(make):
    torch.manual_seed(2)
    net = make()
    x = torch.randn(3, 7, I, dtype=torch.float64)
    lengths = torch.tensor([7, 4, 1])
    y, state = net(x, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        y_b, state_b = net(x[b : b + 1, :n])
        torch.testing.assert_close(y[b, :n], y_b[0])
        for a, ref in zip(state, state_b):
            torch.testing.assert_close(a[b], ref[0])


def test_slstm_shares_parameters_across_layers():
    H = 6
    counts = {sum(p.numel() for p in slstm(H, layers=L).parameters()) for L in (1, 2, 5)}
    assert counts == {I * H + H + 2 * 4 * H * H + 4 * H}  # W^x, b^x, W_ih, W_hh, b
    net = slstm(H, layers=4)
    assert net.describe()["depth"] == 4 and net.delay == 0 and net.input_map_params() == I * H
    # depth matters: the same weights with fewer layers give other outputs
    x = torch.randn(2, 5, I, dtype=torch.float64)
    shallow = slstm(H, layers=2)
    shallow.load_state_dict(net.state_dict())
    assert not torch.allclose(net(x)[0], shallow(x)[0])


@pytest.mark.parametrize(
    "cfg", [{"name": "tlstm", "P": 2, "M": 16}, {"name": "tlstm", "P": [2, 2], "M": 16},
            {"name": "slstm", "layers": 2}], ids=["tlstm-2D", "tlstm-3D", "slstm"]
)
def test_loss_falls_on_delayed_copy(cfg):
    """Predict the symbol seen two steps earlier: both cells learn it in 100 Adam steps."""
    torch.manual_seed(0)
    vocab, lag = 4, 2
    net = build_cell(cell_config(cfg["name"], **{k: v for k, v in cfg.items() if k != "name"}), vocab, 16)
    head = nn.Linear(net.output_size, vocab)
    opt = torch.optim.Adam([*net.parameters(), *head.parameters()], lr=2e-2)
    losses = []
    for _ in range(100):
        tokens = torch.randint(0, vocab, (16, 10))
        y, _ = net(F.one_hot(tokens, vocab).float())
        loss = F.cross_entropy(head(y[:, lag:]).reshape(-1, vocab), tokens[:, :-lag].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 1.2  # about log(4) = 1.39 at the start
    assert sum(losses[-10:]) / 10 < 0.3  # about 0.03-0.08 for 3 seeds of each cell


@pytest.mark.parametrize(
    "cfg,needle",
    [
        ({"P": 3, "K": 2, "feedback": True}, "feedback"),
        ({"P": [1, 2, 3]}, "cell.P"),
        ({"P": 0}, "cell.P"),
        ({"P": 1, "norm": "cn"}, "norm"),
        ({"P": 1, "norm": "ccn"}, "norm"),
        ({"P": 3, "norm": "bn"}, "norm"),
        ({"P": 3, "K": 1, "feedback": False}, "cell.K"),
    ],
)
def test_bad_configs_raise_user_errors(cfg, needle):
    with pytest.raises(UserError, match=needle):
        tlstm(**cfg)


def test_task_hidden_size_is_the_default_width():
    assert build_cell(cell_config("tlstm", P=2, M=None), I, 7).output_size == 7
    assert build_cell(cell_config("tlstm", P=2, M=5), I, 7).output_size == 5
    assert build_cell(cell_config("slstm", layers=2, hidden_size=None), I, 7).output_size == 7


def test_neighbour_tables_zero_pad_the_cross_layer_conv_and_replicate_pad_the_memory_conv():
    from tensorlstm.cells.tlstm_ops import cross_layer_table, make_geometry, memory_table

    geo = make_geometry(3, None, True)  # 2D, K=3 centred: taps at offsets -1, 0, +1
    input_, zero = 3, 4  # indices past the 3 hidden locations
    assert cross_layer_table(geo).tolist() == [[input_, 0, 1], [0, 1, 2], [1, 2, zero]]
    assert memory_table(geo).tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 2]]
    one_sided = make_geometry(3, None, False)  # K=2: offsets -1, 0
    assert cross_layer_table(one_sided).tolist() == [[input_, 0], [0, 1], [1, 2]]
    # 3D 2x2: the input sits at the corner before (0, 0); the rest of its row and column are zeros
    table = cross_layer_table(make_geometry([2, 2], None, True))
    assert table[0].tolist() == [4, 5, 5, 5, 0, 1, 5, 2, 3]
    assert (table[1:] != 4).all()


@pytest.mark.parametrize("P,K,feedback", [(4, 3, True), ([3, 2], 3, True), (5, 5, True), ([2, 3], 2, False)])
def test_causal_channel_norm_uses_each_locations_input_time_diagonal(P, K, feedback):
    """ccn at (n, s) = per-channel statistics over every location m at step min(s, s - (d(n) - d(m))): the
    latest state of m that has seen no input after n's newest (float64, against an explicit pool)."""
    from tensorlstm.cells.tlstm_ops import causal_normalize, diagonal_sum_table, location_depths, make_geometry

    geo = make_geometry(P, K, feedback)
    depths, L, N = location_depths(geo), geo.depth, geo.locations
    assert int(depths.max()) == L - 1 and int(depths[-1]) == L - 1  # the output location is the deepest
    torch.manual_seed(0)
    B, G, M, S = 2, 3, 4, L + 3
    zs = torch.randn(S, B, N, G, M, dtype=torch.float64)
    gain, bias = torch.rand(G, M, dtype=torch.float64) + 0.5, torch.randn(G, M, dtype=torch.float64)
    past = torch.zeros(B, L - 1, L, 3, G, M, dtype=torch.float64)
    for s in range(S):
        got, now = causal_normalize(zs[s], past, depths, diagonal_sum_table(L), gain, bias)
        past = torch.cat([now.unsqueeze(1), past], 1)[:, : L - 1]
        for n in range(N):
            i = int(depths[n])
            steps = [min(s, s - (i - int(depths[m]))) for m in range(N)]
            pool = torch.stack([zs[t, :, m] for m, t in enumerate(steps) if t >= 0], 1)  # (B, count, G, M)
            assert pool.shape[1] == sum(t >= 0 for t in steps)
            if s >= i:  # once n has seen an input, it pools every location (as cn), never itself alone
                assert pool.shape[1] == N
            mean, var = pool.mean(1), pool.var(1, unbiased=False)
            torch.testing.assert_close(got[:, n], (zs[s][:, n] - mean) / torch.sqrt(var + 1e-5) * gain + bias)
