"""CUDA paths (marked `cuda`, skipped without a GPU; scripts/gpu_check.sh runs them): maps and cells equal on
CPU and CUDA, AMP (bf16 and fp16) forward + backward, the trainer end to end with AMP, resume on CUDA."""

from __future__ import annotations

import json

import pytest
import torch
from test_amp import CELLS, MAP_SHAPES, REL_TOL, cell_tolerance, rel_err

from tensorlstm.cells import build_cell
from tensorlstm.tensor import FORMATS, build_map

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(autouse=True)
def strict_fp32():
    """No TF32 in the comparisons with the CPU (torch's cuDNN default would round to 10 bits)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _fwd_bwd(module, x, device, dtype=None, run=None):
    module = module.to(device)
    module.zero_grad(set_to_none=True)
    x = x.to(device).requires_grad_(True)
    with torch.autocast(device.type, dtype=dtype or torch.float16, enabled=dtype is not None):
        y = run(module, x) if run else module(x)
    w = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(device)
    (y.float() * w).sum().backward()
    return {"output": y.detach().float().cpu(), "grad_x": x.grad.cpu(),
            **{n: p.grad.cpu() for n, p in module.named_parameters()}}


@pytest.mark.parametrize("shape", MAP_SHAPES)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("mode", ["factorized", "reconstruct", "auto"])
def test_map_cuda_equals_cpu_and_runs_under_amp(shape, fmt, mode):
    s = MAP_SHAPES[shape]
    torch.manual_seed(0)
    m = build_map(fmt, s["in_modes"], s["out_modes"], s["ranks"].get(fmt), blocks=2, forward="factorized"
                  if mode == "auto" else mode)
    x = torch.randn(s["rows"], m.in_features)
    cpu = _fwd_bwd(m, x, torch.device("cpu"))
    gpu = _fwd_bwd(m, x, torch.device("cuda"))
    for k in cpu:
        assert rel_err(gpu[k], cpu[k]) < 1e-5, k
    for dtype in (torch.bfloat16, torch.float16):
        amp = _fwd_bwd(m, x, torch.device("cuda"), dtype)
        for k in cpu:
            assert torch.isfinite(amp[k]).all() and rel_err(amp[k], cpu[k]) < REL_TOL, (k, dtype)


@pytest.mark.parametrize("cell", CELLS)
def test_cell_cuda_equals_cpu_and_runs_under_amp(cell):
    torch.manual_seed(0)
    net = build_cell(CELLS[cell], input_size=27, hidden_size=12, in_modes=[3, 3, 3], hidden_modes=[2, 2, 3])
    x = torch.randn(4, 5, 27)
    lens = torch.tensor([5, 3, 4, 1])

    def run(mod, x):
        return mod(x, None, lens.to(x.device))[0]

    cpu = _fwd_bwd(net, x, torch.device("cpu"), run=run)
    gpu = _fwd_bwd(net, x, torch.device("cuda"), run=run)
    for k in cpu:
        assert rel_err(gpu[k], cpu[k]) < 1e-4, k
    tol = cell_tolerance(CELLS[cell])
    for dtype in (torch.bfloat16, torch.float16):
        amp = _fwd_bwd(net, x, torch.device("cuda"), dtype, run=run)
        for k in cpu:
            assert torch.isfinite(amp[k]).all(), (k, dtype)
            assert tol is None or rel_err(amp[k], cpu[k]) < tol, (k, dtype)


@pytest.mark.parametrize("amp_dtype", ["bf16", "fp16"])
@pytest.mark.parametrize("cell", ["lstm", "tt", "bt", "tlstm"])
def test_trainer_amp_on_cuda_then_resume(train_run, cell, amp_dtype, tmp_path):
    """AMP training on CUDA, then a resume from last.pt (RNG states must be loaded on the CPU)."""
    run = tmp_path / "run"
    args = [f"cell={cell}", "device=cuda", "trainer.amp=true", f"trainer.amp_dtype={amp_dtype}",
            "trainer.eval_every=10", "cell.M=8" if cell == "tlstm" else "rank=2"]
    first = train_run(run, *args, "trainer.max_steps=20")
    assert first["device"].startswith("cuda")
    assert first["amp_dtype"] == {"bf16": "bfloat16", "fp16": "float16"}[amp_dtype]
    (run / "summary.json").unlink()  # as if killed after the last checkpoint
    again = train_run(run, *args, "trainer.max_steps=30", f"resume={run}")
    assert again["steps"] == 30
    assert json.loads((run / "summary.json").read_text())["steps"] == 30

