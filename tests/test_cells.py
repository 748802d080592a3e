"""The LSTM/GRU layers over any input map: equal to torch.nn given the same weights, the time-batched
input projection equal to a step-by-step reference, masking, and the papers' parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tensorlstm.cells import CELLS, build_cell
from tensorlstm.cells.recurrent import FusedRecurrent, RecurrentLayer, StackedRecurrent, hard_sigmoid, loop_is_faster
from tensorlstm.defaults import cell_config
from tensorlstm.errors import UserError
from tensorlstm.tensor import build_map


@pytest.fixture(autouse=True)
def float64():
    """Numerics in double precision; restored afterwards so other test modules see float32."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def cell_cfg(name: str, **kw) -> dict:
    """configs/cell/<name>.yaml at small sizes (rank 2, 3 modes, 2 BT blocks), with overrides."""
    if name not in CELLS:
        return {"name": name}
    small = {"rank": 2, "d": 3, "blocks": 2} if "format" in cell_config(name) else {}
    return cell_config(name, **{**small, **kw})


def generic_dense(base: str, I: int, H: int, layers: int = 1) -> StackedRecurrent:
    """Our generic layer with a dense input map (recurrent_dropout=0 but forced off the fused path)."""
    G = 4 if base == "lstm" else 3
    return StackedRecurrent(
        [RecurrentLayer(base, build_map("dense", [I if i == 0 else H], [G * H]), H) for i in range(layers)], {})


def copy_from_torch(ours: StackedRecurrent, ref: nn.RNNBase) -> None:
    """Load nn.LSTM/nn.GRU weights into our layers (W is stored transposed; the two biases merge)."""
    H = ref.hidden_size
    with torch.no_grad():
        for i, layer in enumerate(ours.layers):
            w_ih, w_hh = getattr(ref, f"weight_ih_l{i}"), getattr(ref, f"weight_hh_l{i}")
            b_ih, b_hh = getattr(ref, f"bias_ih_l{i}"), getattr(ref, f"bias_hh_l{i}")
            dense = layer.input_map
            (p,) = list(dense.parameters())
            p.copy_(w_ih.T.reshape(p.shape))
            layer.weight_hh.copy_(w_hh.T)
            if layer.base == "lstm":
                layer.bias.copy_(b_ih + b_hh)
            else:  # r, z biases add; the n gate's recurrent bias stays inside r * (.)
                layer.bias.copy_(b_ih + torch.cat([b_hh[: 2 * H], torch.zeros(H)]))
                layer.bias_hn.copy_(b_hh[2 * H :])


@pytest.mark.parametrize("base", ["lstm", "gru"])
def test_generic_layer_equals_torch_nn(base):
    torch.manual_seed(0)
    I, H, B, T = 5, 7, 3, 6
    ref = (nn.LSTM if base == "lstm" else nn.GRU)(I, H, num_layers=2, batch_first=True)
    ours = generic_dense(base, I, H, layers=2)
    copy_from_torch(ours, ref)
    x = torch.randn(B, T, I)
    y_ref, _ = ref(x)
    y, state = ours(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state[-1][0], y_ref[:, -1])


@pytest.mark.parametrize("name", ["lstm", "gru", "tt", "bt", "cp", "tucker"])
@pytest.mark.parametrize("base", ["lstm", "gru"])
def test_forward_equals_step_by_step(name, base):
    """The input projection batched over all B*T rows gives what a per-step loop gives."""
    torch.manual_seed(1)
    net = build_cell(cell_cfg(name, base=base, recurrent_dropout=0.0), 12, 8)
    x = torch.randn(2, 5, 12)
    y, state = net(x)
    s = net.init_state(2)
    for t in range(5):
        y_t, s = net.step(x[:, t], s)
        torch.testing.assert_close(y_t, y[:, t])
    for a, b in zip(torch.utils._pytree.tree_leaves(s), torch.utils._pytree.tree_leaves(state)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name", ["lstm", "bt"])
def test_lengths_mask_padding(name):
    """A padded sequence gives the outputs and final state of the same sequence unpadded."""
    torch.manual_seed(2)
    net = build_cell(cell_cfg(name), 6, 4)
    x = torch.randn(2, 7, 6)
    lengths = torch.tensor([7, 4])
    y, state = net(x, lengths=lengths)
    y_short, state_short = net(x[1:, :4])
    torch.testing.assert_close(y[1, :4], y_short[0])
    assert torch.all(y[1, 4:] == 0)
    for a, b in zip(torch.utils._pytree.tree_leaves(state), torch.utils._pytree.tree_leaves(state_short)):
        torch.testing.assert_close(a[1], b[0])


def test_dense_plain_cells_use_fused_torch_kernels():
    assert isinstance(build_cell(cell_cfg("lstm", kernel="torch"), 6, 4), FusedRecurrent)
    assert isinstance(build_cell(cell_cfg("gru", kernel="torch"), 6, 4), FusedRecurrent)
    assert isinstance(build_cell(cell_cfg("gru", kernel="loop"), 6, 4), StackedRecurrent)
    assert isinstance(build_cell(cell_cfg("lstm", recurrent_dropout=0.25), 6, 4), StackedRecurrent)
    assert isinstance(build_cell(cell_cfg("lstm", gate_activation="hard_sigmoid"), 6, 4), StackedRecurrent)


@pytest.mark.parametrize("cuda", [False, True])
@pytest.mark.parametrize("kernel", ["auto", "torch"])
def test_dense_kernel_builds_the_same_module_on_any_machine(monkeypatch, cuda, kernel):
    """cell.kernel=auto (the YAML default) and torch build torch.nn's module whether CUDA is there or not: the same
    state dict and parameter count, so a checkpoint trained on a GPU evaluates on a CPU and back."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert cell_cfg("lstm")["kernel"] == cell_cfg("gru")["kernel"] == "auto"
    for base in ("lstm", "gru"):
        net = build_cell(cell_cfg(base, kernel=kernel), 6, 4)
        assert isinstance(net, FusedRecurrent)
        assert sum(p.numel() for p in net.parameters()) == (4 if base == "lstm" else 3) * 4 * (6 + 4 + 2)


def test_kernel_auto_runs_the_faster_dense_path():
    """cell.kernel=auto: on a CPU our fused loop for the GRU and for an LSTM wider in than out (tlstm bench),
    torch.nn otherwise and on a GPU, outside autocast; kernel=torch never the loop; a bad value is refused."""
    assert loop_is_faster("gru", 4, 6, "cpu") and loop_is_faster("lstm", 6, 4, "cpu")
    assert not loop_is_faster("lstm", 4, 6, "cpu") and not loop_is_faster("gru", 6, 4, "cuda")
    x = torch.zeros(2, 3, 6)
    assert build_cell(cell_cfg("lstm", kernel="auto"), 6, 4)._runs_loop(x)
    assert not build_cell(cell_cfg("lstm", kernel="torch"), 6, 4)._runs_loop(x)
    assert not build_cell(cell_cfg("lstm", kernel="auto"), 6, 8)._runs_loop(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not build_cell(cell_cfg("lstm", kernel="auto"), 6, 4)._runs_loop(x)
    with pytest.raises(UserError, match="cell.kernel"):
        build_cell(cell_cfg("lstm", kernel="fast"), 4, 6)
    # the run's model line and summary say which path a CPU runs
    assert build_cell(cell_cfg("gru"), 4, 6).describe()["kernel"].startswith("auto: on a CPU our fused loop,")
    assert build_cell(cell_cfg("lstm"), 4, 6).describe()["kernel"].startswith("auto: on a CPU torch.nn.LSTM,")
    assert build_cell(cell_cfg("lstm", kernel="torch"), 4, 6).describe()["kernel"] == "torch.nn.LSTM"


@pytest.mark.parametrize("base,layers,lengths", [("lstm", 1, False), ("lstm", 3, True), ("gru", 2, False),
                                                 ("gru", 1, True)])
def test_kernel_auto_loop_computes_what_torch_nn_computes(base, layers, lengths):
    """kernel=auto's fused loop on torch.nn's weights against torch.nn on the same module (float64): outputs,
    final states and the gradient of every parameter and of the initial state, with and without lengths."""
    torch.manual_seed(0)
    auto = build_cell(cell_cfg(base, kernel="auto", layers=layers), 7, 5).double()
    ref = build_cell(cell_cfg(base, kernel="torch", layers=layers), 7, 5).double()
    ref.load_state_dict(auto.state_dict())
    x = torch.randn(3, 6, 7, dtype=torch.float64)
    lens = torch.tensor([6, 2, 4]) if lengths else None
    assert auto._runs_loop(x)
    state0 = tuple(torch.randn_like(s) for s in auto.init_state(3, dtype=torch.float64))
    outs = []
    for net in (auto, ref):
        state = tuple(s.clone().requires_grad_() for s in state0)
        y, final = net(x, state, lengths=lens)
        loss = (y * torch.linspace(-1, 1, y.shape[-1], dtype=y.dtype)).sum() + sum(f.square().sum() for f in final)
        outs.append((y, final, torch.autograd.grad(loss, list(net.parameters()) + list(state))))
    (y, final, grads), (y_ref, final_ref, grads_ref) = outs
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    for a, b in zip(final, final_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    names = [n for n, _ in auto.named_parameters()] + ["h0", "c0"]
    for name, a, b in zip(names, grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=name)


def test_kernel_auto_in_float32_with_dropout_between_layers():
    """float32 on the compiled gate kernels: kernel=auto's loop agrees with torch.nn to float32 rounding in eval
    mode; in training mode the dropouts (the input's and torch.nn's between layers) apply."""
    torch.manual_seed(0)
    auto = build_cell(cell_cfg("gru", kernel="auto", layers=2, dropout=0.5), 9, 8)
    ref = build_cell(cell_cfg("gru", kernel="torch", layers=2, dropout=0.5), 9, 8)
    ref.load_state_dict(auto.state_dict())
    auto.eval()
    ref.eval()
    x = torch.randn(4, 5, 9)
    torch.testing.assert_close(auto(x)[0], ref(x)[0], rtol=1e-5, atol=1e-6)
    auto.train()
    torch.manual_seed(1)
    y_train = auto(x)[0]
    assert not torch.allclose(y_train, ref(x)[0])


def test_kernel_loop_is_the_layered_loop_and_computes_what_torch_nn_computes():
    torch.manual_seed(0)
    ref = build_cell(cell_cfg("gru", kernel="torch"), 5, 3)
    loop = build_cell(cell_cfg("gru", kernel="loop"), 5, 3)
    assert isinstance(loop, StackedRecurrent)
    copy_from_torch(loop, ref.rnn)
    x = torch.randn(2, 4, 5)
    torch.testing.assert_close(loop(x)[0], ref(x)[0], rtol=1e-10, atol=1e-10)


def test_gru_reset_before_formula():
    """reset_after=False is Cho et al.'s GRU: n = tanh(x W_n + b_n + (r * h) U_n)."""
    torch.manual_seed(3)
    net = build_cell(cell_cfg("tt", base="gru", reset_after=False), 8, 4)
    layer = net.layers[0]
    x, h = torch.randn(3, 8), torch.randn(3, 4)
    W, U, b = layer.input_map.reconstruct(), layer.weight_hh, layer.bias
    xw = x @ W + b
    r = torch.sigmoid(xw[:, :4] + h @ U[:, :4])
    z = torch.sigmoid(xw[:, 4:8] + h @ U[:, 4:8])
    n = torch.tanh(xw[:, 8:] + (r * h) @ U[:, 8:])
    expected = (1 - z) * n + z * h
    y, _ = net.step(x, ((h,),))
    torch.testing.assert_close(y, expected)


def test_hard_sigmoid_is_keras():
    x = torch.tensor([-3.0, -2.5, 0.0, 1.0, 2.5, 4.0])
    torch.testing.assert_close(hard_sigmoid(x), torch.tensor([0.0, 0.0, 0.5, 0.7, 1.0, 1.0]))


def test_dropout_masks_are_shared_over_time_and_off_in_eval():
    torch.manual_seed(4)
    net = build_cell(cell_cfg("bt", dropout=0.5, recurrent_dropout=0.5), 6, 4)
    x = torch.randn(2, 5, 6)
    net.train()
    assert not torch.allclose(net(x)[0], net(x)[0])
    net.eval()
    torch.testing.assert_close(net(x)[0], net(x)[0])


def test_gradients_reach_every_factor():
    torch.manual_seed(5)
    net = build_cell(cell_cfg("tucker", factorize_hidden=True), 8, 4)
    net(torch.randn(2, 3, 8))[0].sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


TJANDRA_SHAPES = {"in_modes": [4, 4, 4, 4], "hidden_modes": [8, 4, 4, 4], "gate_mode": "last",
                  "factorize_hidden": True, "reset_after": False, "base": "gru"}


@pytest.mark.parametrize(
    "name,rank,expected",
    [
        ("tt", 11, 11_392),  # ranks 1-11-11-11-1
        ("cp", 50, 6_136),
        ("cp", 80, 8_896),
        ("cp", 110, 11_656),
        ("tucker", 2, 2_232),  # 2-2-2-2
        ("tucker", [2, 4, 2, 4], 10_008),
    ],
)
def test_tjandra2018_gru_parameter_counts(name, rank, expected):
    """Both maps factorized, gates on the last mode, one 3H bias (Tjandra et al. 2018; docs/papers.md)."""
    net = build_cell(cell_cfg(name, rank=rank, **TJANDRA_SHAPES), 256, 512)
    assert sum(p.numel() for p in net.parameters()) == expected


def test_dense_gru_count_tjandra():
    net = build_cell(cell_cfg("gru", reset_after=False, gate_activation="sigmoid", recurrent_dropout=0.0), 256, 512)
    # reset_after=False takes the generic path: W_xh + W_hh + one 3H bias = 1,181,184 (docs/papers.md)
    assert sum(p.numel() for p in net.parameters()) == 1_181_184


def test_bad_shapes_are_one_line_user_errors():
    with pytest.raises(UserError, match="in_modes"):
        build_cell(cell_cfg("tt", in_modes=[8, 20, 20, 17]), 57600, 256)
    with pytest.raises(UserError, match="unknown cell"):
        build_cell(cell_cfg("nope"), 4, 4)
    with pytest.raises(UserError, match="base"):
        build_cell(cell_cfg("tt", base="rnn"), 8, 4)

