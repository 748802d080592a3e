"""The fused tLSTM time loop (``tlstm_fused.TLSTMSequence``, norm=none) against the general step loop.

Float64: outputs, final states and every gradient (input, parameters, initial state) agree with the autograd
step loop to 1e-12 for 2D and 3D, with and without feedback and the memory-cell convolution, with lengths and a
given initial state, with either step kernels (torch ops, and the compiled tensorlstm/native.cpp); gradcheck on the
node itself; the norms and autocast keep the general loop."""

from __future__ import annotations

import pytest
import torch

from tensorlstm import native
from tensorlstm.cells import build_cell
from tensorlstm.cells.tlstm_fused import TLSTMSequence
from tensorlstm.defaults import cell_config

I, M = 3, 4  # input size and channels of the small nets
TOL = dict(rtol=1e-12, atol=1e-12)
GATES = ["torch", "native"]


def _needs(gates: str) -> None:
    if gates == "native" and not native.available():
        pytest.skip("tensorlstm/native.cpp does not build here (no C++ compiler?)")

CONFIGS = [
    pytest.param({"P": 1}, id="2D-P1"),
    pytest.param({"P": 4}, id="2D-K3"),
    pytest.param({"P": 3, "feedback": False}, id="2D-noF-K2"),
    pytest.param({"P": 5, "K": 5}, id="2D-K5"),
    pytest.param({"P": 3, "memory_conv": False}, id="2D-noM"),
    pytest.param({"P": [2, 3]}, id="3D-K3"),
    pytest.param({"P": [3, 3], "feedback": False}, id="3D-noF"),
    pytest.param({"P": [2, 2], "memory_conv": False}, id="3D-noM"),
]


def tlstm(**cfg):
    return build_cell(cell_config("tlstm", **cfg), I, M).double()


def run(net, x, fused: bool, lengths=None, state=None, loss_on_state=True):
    """Outputs, final state and gradients of a random linear loss, through the fused node or the step loop."""
    net._fused = lambda x: fused  # instance attribute: this net only
    net.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    if state is not None:
        state = tuple(s.clone().requires_grad_(True) for s in state)
    y, final = net(x, state, lengths=lengths)
    gen = torch.Generator().manual_seed(3)
    loss = (y * torch.randn(y.shape, generator=gen, dtype=y.dtype)).sum()
    if loss_on_state:
        loss = loss + sum((f * torch.randn(f.shape, generator=gen, dtype=f.dtype)).sum() for f in final)
    loss.backward()
    grads = [x.grad] + [p.grad for p in net.parameters()] + ([s.grad for s in state] if state else [])
    return [y, *final], grads


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize("gates", GATES)
def test_fused_loop_equals_the_step_loop_forward_and_backward(cfg, gates):
    _needs(gates)
    torch.manual_seed(0)
    net = tlstm(**cfg, gates=gates)
    N = net.geo.locations
    x = torch.randn(3, 6, I, dtype=torch.float64)
    state = tuple(torch.randn(3, N, M, dtype=torch.float64) for _ in range(2))
    cases = [dict(), dict(lengths=torch.tensor([6, 4, 1])), dict(state=state),
             dict(state=state, lengths=torch.tensor([2, 6, 5])), dict(loss_on_state=False)]
    for case in cases:
        ref_out, ref_grads = run(net, x, False, **case)
        out, grads = run(net, x, True, **case)
        for a, b in zip(out + grads, ref_out + ref_grads):
            assert a is not None and b is not None
            torch.testing.assert_close(a, b, **TOL)
    with torch.no_grad():  # no autograd: the same numbers
        net._fused = lambda x: True
        y, _ = net(x)
    torch.testing.assert_close(y, ref_out[0], **TOL)


@pytest.mark.parametrize("cfg", [{"P": 2}, {"P": 2, "memory_conv": False}, {"P": [2, 2], "feedback": False}],
                         ids=["2D", "2D-noM", "3D-noF"])
@pytest.mark.parametrize("gates", GATES)
def test_fused_node_passes_gradcheck(cfg, gates):
    _needs(gates)
    torch.manual_seed(1)
    net = build_cell(cell_config("tlstm", **cfg), I, 2)
    S, B, N, Mc = 3, 2, net.geo.locations, 2
    Mo, pairs = net.weight.shape[-1], net.input_locations.numel()
    memory = net.memory_index if net.memory_conv else None
    f64 = dict(dtype=torch.float64)
    bias, x_terms = torch.randn(Mo, **f64), torch.randn(S, B, pairs, Mo, **f64)
    args = [bias, x_terms, 0.5 * torch.randn(net.geo.taps * Mc, Mo, **f64), torch.randn(B, N, Mc, **f64),
            torch.randn(B, N, Mc, **f64)]
    args = [a.requires_grad_(True) for a in args]

    kernels = native.kernels(bias) if gates == "native" else None

    def node(bias, x_terms, W, h0, c0):
        return TLSTMSequence.apply(bias, x_terms, net.input_locations, W, h0, c0, net.hidden_index, memory, kernels)

    assert torch.autograd.gradcheck(node, args)


@pytest.mark.parametrize("norm", ["ln", "cn", "ccn"])
def test_norms_keep_the_general_loop(norm, monkeypatch):
    net = tlstm(P=3, norm=norm)
    x = torch.randn(2, 4, I, dtype=torch.float64)
    assert not net._fused(x) and tlstm(P=3)._fused(x)

    def refuse(*args):
        raise AssertionError("the fused node ran for norm=" + norm)

    monkeypatch.setattr(TLSTMSequence, "apply", refuse)
    y, _ = net(x)
    assert y.shape == (2, 4, M)


def test_autocast_keeps_the_general_loop():
    net = build_cell(cell_config("tlstm", P=2), I, M)
    x = torch.randn(2, 3, I)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not net._fused(x)
    assert net._fused(x)


@pytest.mark.parametrize("cfg", [{"P": 3}, {"P": [2, 2], "memory_conv": False}], ids=["2D", "3D-noM"])
def test_native_step_kernels_agree_with_torch_ops_in_float32(cfg):
    """The float32 build of the kernels (the tests above run float64): outputs and gradients as with torch ops."""
    _needs("native")
    torch.manual_seed(2)
    nets = [build_cell(cell_config("tlstm", **cfg, gates=g), I, M) for g in GATES]
    nets[1].load_state_dict(nets[0].state_dict())
    x = torch.randn(3, 7, I)
    (out_t, grads_t), (out_n, grads_n) = (run(net, x, True) for net in nets)
    for a, b in zip(out_n + grads_n, out_t + grads_t):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
