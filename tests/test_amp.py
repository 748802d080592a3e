"""Mixed precision: forward + backward of every map and every cell under CPU bf16 autocast (the casting rules
of CUDA autocast), with gradients close to the fp32 ones.

Tolerance: each gradient (and output) may differ from fp32 by at most 5% in relative Frobenius norm
(||g_bf16 - g_fp32|| / ||g_fp32||). bf16 keeps 8 significant bits (a relative rounding of 2^-9 = 0.2% per
value); a chain of 4-6 rounded products and the recurrences of a few time steps measured here stay at 0.3-2%.
Two exceptions, both from the problem, not the code: the layer-normalised tLSTM (`norm=ln`) gets 15%
(normalising a location's few channels amplifies the rounding of A_t; measured 2-8%), and for `norm=cn` only
finiteness is checked: at this size its fp32 gradients themselves move by 10-70% when x is perturbed by
2^-9 relative (ill-conditioned: a statistic over 4-9 locations), so no bf16 tolerance would mean anything.
"""

from __future__ import annotations

import pytest
import torch

from tensorlstm.cells import build_cell, recurrent
from tensorlstm.defaults import cell_config
from tensorlstm.tensor import FORMATS, build_map, gate_modes, kernels
from tensorlstm.tensor import bt as bt_module

REL_TOL = 5e-2

# the two bench shapes scaled down (tensorlstm/bench.py SHAPES): UCF11-like (gates on the first mode) in two
# variants, one reaching the chunked BT kernel and one the broadcast-bmm ModeProduct, and the sequence shape
MAP_SHAPES = {
    "ucf11_chain4": dict(rows=12, in_modes=[4, 8, 8, 8], out_modes=gate_modes([2, 2, 2, 2], 4, "first"),
                         ranks={"tt": 3, "bt": 2, "cp": 6, "tucker": 2}),
    "ucf11_bmm": dict(rows=16, in_modes=[8, 8, 8, 4], out_modes=gate_modes([4, 4, 4, 4], 4, "first"),
                      ranks={"tt": 3, "bt": 2, "cp": 6, "tucker": 2}),
    "sequence": dict(rows=64, in_modes=[4, 4, 4, 4], out_modes=gate_modes([4, 2, 2, 2], 3, "last"),
                     ranks={"tt": 3, "bt": 2, "cp": 8, "tucker": [2, 3, 2, 3]}),
}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def grads_fp32_and_bf16(module: torch.nn.Module, inputs: list[torch.Tensor], run) -> tuple[dict, dict]:
    """{name: tensor} of output and gradients (parameters and inputs) in fp32 and under bf16 autocast."""
    results = []
    for amp in (False, True):
        module.zero_grad(set_to_none=True)
        xs = [x.detach().clone().requires_grad_(True) for x in inputs]
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            y = run(module, *xs)
        assert torch.isfinite(y).all()
        # a fixed random projection of the output as the loss: every output entry gets a different gradient
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1))
        (y.float() * w).sum().backward()
        got = {"output": y.detach().float()}
        got |= {f"grad_x{i}": x.grad for i, x in enumerate(xs)}
        got |= {n: p.grad for n, p in module.named_parameters()}
        results.append(got)
    return results[0], results[1]


def assert_close_to_fp32(ref: dict, amp: dict, tol: float | None = REL_TOL) -> None:
    assert ref.keys() == amp.keys()
    for name, g in ref.items():
        assert amp[name] is not None, f"{name}: no gradient under autocast"
        assert amp[name].dtype == g.dtype, f"{name}: gradient dtype {amp[name].dtype}, parameter {g.dtype}"
        assert torch.isfinite(amp[name]).all(), name
        err = rel_err(amp[name], g)
        assert tol is None or err < tol, f"{name}: relative error {err:.3g} vs fp32"


@pytest.mark.parametrize("shape", MAP_SHAPES)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("mode", ["factorized", "reconstruct", "auto"])
def test_map_bf16_autocast_forward_backward(shape, fmt, mode):
    torch.manual_seed(0)
    s = MAP_SHAPES[shape]
    m = build_map(fmt, s["in_modes"], s["out_modes"], s["ranks"].get(fmt), blocks=2, forward=mode)
    x = torch.randn(s["rows"], m.in_features)
    ref, amp = grads_fp32_and_bf16(m, [x], lambda mod, x: mod(x))
    assert_close_to_fp32(ref, amp)


def test_map_shapes_reach_the_custom_functions(monkeypatch):
    """The shapes above run both custom autograd Functions (else the test above would not cover them)."""
    calls = {"ModeProduct": 0, "_BTChain4": 0}
    for cls, name in ((kernels.ModeProduct, "ModeProduct"), (bt_module._BTChain4, "_BTChain4")):
        def counted(*args, _apply=cls.apply, _name=name):
            calls[_name] += 1
            return _apply(*args)

        monkeypatch.setattr(cls, "apply", counted)
    for s in MAP_SHAPES.values():
        for fmt in ("tt", "bt"):
            m = build_map(fmt, s["in_modes"], s["out_modes"], s["ranks"][fmt], blocks=2, forward="factorized")
            with torch.autocast("cpu", dtype=torch.bfloat16):
                m(torch.randn(s["rows"], m.in_features))
    assert calls["ModeProduct"] > 0 and calls["_BTChain4"] > 0, calls


def test_mode_product_float64_is_untouched_by_autocast():
    """float64 is not autocast-eligible: the Function keeps it (and its gradients) in float64."""
    x = torch.randn(3, 5, 70, dtype=torch.float64, requires_grad=True)
    mat = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = kernels.ModeProduct.apply(x, mat)
    assert y.dtype == torch.float64
    y.sum().backward()
    torch.testing.assert_close(y, torch.einsum("nk,pkq->pnq", mat, x))
    assert x.grad.dtype == mat.grad.dtype == torch.float64


SMALL = dict(rank=2, blocks=2, d=3)  # every other key from configs/cell/<name>.yaml
CELLS = {
    "lstm_fused": cell_config("lstm", **SMALL),
    "gru_fused": cell_config("gru", **SMALL),
    "lstm_loop": cell_config("lstm", **SMALL, gate_activation="hard_sigmoid", layers=2),
    "gru_reset_before": cell_config("gru", **SMALL, reset_after=False),
    "gru_reset_after_loop": cell_config("gru", **SMALL, gate_activation="hard_sigmoid"),
    **{f"{fmt}_{base}": cell_config(fmt, **SMALL, base=base) for fmt in ("tt", "bt", "cp", "tucker")
       for base in ("lstm", "gru")},
    "tt_gru_cho_factorize_hidden": cell_config("tt", **SMALL, base="gru", reset_after=False, factorize_hidden=True,
                                               gate_mode="last"),
    "bt_lstm_factorize_hidden": cell_config("bt", **SMALL, factorize_hidden=True),
    "tlstm_2d": cell_config("tlstm", P=3),
    "tlstm_2d_ln_nofb": cell_config("tlstm", P=3, norm="ln", feedback=False),
    "tlstm_3d_cn": cell_config("tlstm", P=[2, 2], norm="cn"),
    "tlstm_nomem": cell_config("tlstm", P=3, memory_conv=False),
    "slstm": cell_config("slstm", layers=2),
}


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
@pytest.mark.parametrize("cell", CELLS)
def test_cell_bf16_autocast_forward_backward(cell, lengths):
    torch.manual_seed(0)
    net = build_cell(CELLS[cell], input_size=27, hidden_size=12, in_modes=[3, 3, 3], hidden_modes=[2, 2, 3])
    B, T = 4, 5
    x = torch.randn(B, T, 27)
    lens = torch.tensor([5, 3, 4, 1]) if lengths else None
    ref, amp = grads_fp32_and_bf16(net, [x], lambda mod, x: mod(x, None, lens)[0])
    assert_close_to_fp32(ref, amp, cell_tolerance(CELLS[cell]))


def cell_tolerance(cfg: dict) -> float | None:
    return {"ln": 0.15, "cn": None}.get(cfg.get("norm"), REL_TOL)


@pytest.mark.parametrize("cell", ["gru_reset_before", "tt_lstm", "tlstm_2d"])
def test_cell_step_bf16_autocast(cell):
    """step() (DRAW, sampling) under autocast: the state keeps its dtype across steps."""
    torch.manual_seed(0)
    net = build_cell(CELLS[cell], input_size=27, hidden_size=12, in_modes=[3, 3, 3], hidden_modes=[2, 2, 3])
    x = torch.randn(4, 27)

    def run(mod, x):
        state, ys = mod.init_state(x.shape[0], x.device, x.dtype), []
        for _ in range(3):
            y, state = mod.step(x, state)
            ys.append(y)
        return torch.stack(ys)

    ref, amp = grads_fp32_and_bf16(net, [x], run)
    assert_close_to_fp32(ref, amp)


def test_trainer_amp_bf16_on_cpu(train_run, tmp_path):
    """trainer.amp=true trains under CPU bf16 autocast end to end (Cho GRU, whose lerp used to fail); the
    summary names the dtype and the losses differ from the fp32 run's (autocast was on) but stay close."""

    args = ["cell=gru", "cell.reset_after=false", "trainer.max_steps=10", "trainer.eval_every=10"]
    amp = train_run(tmp_path / "amp", *args, "trainer.amp=true", "trainer.amp_dtype=bf16")
    fp32 = train_run(tmp_path / "fp32", *args)
    assert amp["amp_dtype"] == "bfloat16" and fp32["amp_dtype"] is None
    assert amp["valid"]["loss"] != fp32["valid"]["loss"]
    assert amp["valid"]["loss"] == pytest.approx(fp32["valid"]["loss"], rel=2e-2)


@pytest.mark.parametrize("lengths", [False, True], ids=["full", "lengths"])
def test_torch_nn_lstm_under_autocast_where_onednn_refuses_bf16(lengths, monkeypatch):
    """Where oneDNN's LSTM cannot run bfloat16 (CPUs without AVX-512), cell=lstm under CPU autocast runs torch.nn's
    LSTM with oneDNN off for the call: forced here whatever this CPU can do, gradients close to float32's, and
    oneDNN on again afterwards."""
    monkeypatch.setattr(recurrent, "onednn_autocast_lstm_ok", lambda dtype: False)
    torch.manual_seed(0)
    net = build_cell(cell_config("lstm"), input_size=27, hidden_size=12)
    x = torch.randn(4, 5, 27)
    lens = torch.tensor([5, 3, 4, 1]) if lengths else None
    ref, amp = grads_fp32_and_bf16(net, [x], lambda mod, x: mod(x, None, lens)[0])
    assert_close_to_fp32(ref, amp, REL_TOL)
    assert torch._C._get_mkldnn_enabled()  # restored
