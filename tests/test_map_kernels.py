"""The oneDNN GEMM of the planned chains (kernels.Gemm) and the plans the UCF11 shape gets: float32 results and
gradients against torch's matmul, float64 (the exact path) against the dense W, x with and without a gradient."""

from __future__ import annotations

import platform
from pathlib import Path

import pytest
import torch

from tensorlstm.tensor import build_map, gate_modes, kernels
from tensorlstm.tensor.kernels import Gemm, onednn_linear_ok, use_onednn

CPU = torch.device("cpu")
needs_onednn = pytest.mark.skipif(not onednn_linear_ok(), reason="this torch build has no working oneDNN linear")


@pytest.fixture
def chains_on(monkeypatch):
    """chains_on(True): the chains' plain GEMMs run on oneDNN whatever this CPU's vendor; False: on torch's matmul."""
    return lambda onednn: monkeypatch.setattr(kernels, "onednn_beats_mkl", lambda: onednn)


@pytest.mark.parametrize("vendor,mkl,onednn", [
    ("GenuineIntel", True, False),  # MKL runs its AVX-512 GEMMs on Intel CPUs: torch's matmul
    ("AuthenticAMD", True, True),  # ... and its AVX2 ones elsewhere: oneDNN
    ("GenuineIntel", False, True),  # a torch without MKL: another BLAS, oneDNN as before
    ("", True, True),  # vendor unknown
])
def test_chains_use_onednn_except_where_mkl_runs_its_intel_kernels(monkeypatch, vendor, mkl, onednn):
    monkeypatch.setattr(kernels, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: mkl)
    assert kernels.onednn_beats_mkl.__wrapped__() is onednn


def test_cpu_vendor_reads_this_machine():
    vendor = kernels.cpu_vendor()
    assert isinstance(vendor, str)
    if platform.machine() in ("x86_64", "AMD64") and Path("/proc/cpuinfo").exists():
        assert vendor in ("GenuineIntel", "AuthenticAMD", "HygonGenuine", "CentaurHauls")


@needs_onednn
@pytest.mark.parametrize("m,k,n", [(7, 13, 5), (33, 4, 80), (3, 90, 2)])  # n >= 16 k takes the wide dmat branch
@pytest.mark.parametrize("a_grad", [False, True])
def test_gemm_matches_matmul_forward_and_backward(m, k, n, a_grad, chains_on):
    chains_on(True)
    torch.manual_seed(0)
    a = torch.randn(m, k, requires_grad=a_grad)
    mat = torch.randn(n, k, requires_grad=True)
    g = torch.randn(m, n)
    assert use_onednn(a, mat)
    y = Gemm.apply(a, mat)
    a64, mat64 = a.detach().double().requires_grad_(a_grad), mat.detach().double().requires_grad_(True)
    y64 = a64 @ mat64.t()
    torch.testing.assert_close(y.double(), y64, rtol=1e-5, atol=1e-5)
    y.backward(g)
    y64.backward(g.double())
    torch.testing.assert_close(mat.grad.double(), mat64.grad, rtol=1e-5, atol=1e-4)
    if a_grad:
        torch.testing.assert_close(a.grad.double(), a64.grad, rtol=1e-5, atol=1e-4)
    else:
        assert a.grad is None


def test_onednn_only_for_float32_cpu_without_autocast(chains_on):
    chains_on(True)
    a, mat = torch.randn(4, 3), torch.randn(2, 3)
    assert not use_onednn(a.double(), mat.double())  # float64 stays on torch's matmul: the exact path
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not use_onednn(a, mat)


UCF_OUT = gate_modes([4, 4, 4, 4], 4, "first")


def test_tucker_at_the_ucf11_shape_meets_x_with_its_last_two_in_factors_merged():
    """Tucker rank 4, 8x20x20x18 -> 16x4x4x4 at 96 rows: x meets kron(U_3, U_4) in one plain GEMM ((15360, 360)
    x (360, 16): 2.8 ms fwd, the in-place product over the middle modes with post 18 ran 15 ms fwd+bwd), the
    other in-mode factors follow, then the core, the three non-growing out-mode factors merged (one GEMM) and
    the growing one last: 12.4 ms fwd+bwd, against 14.4 with the out-mode factors one by one and 16.5 with all
    four merged into one (1024, 256) operand (1 CPU thread, 9 rounds)."""
    m = build_map("tucker", [8, 20, 20, 18], UCF_OUT, rank=4)
    assert m.choose_mode(96, torch.float32, CPU) == "factorized"
    steps = m.factorized_plan(96).steps
    assert steps[0].group == (3, 4) and steps[0].kind == "mm" and steps[0].post == 1
    assert [s.group for s in steps[-2:]] == [(6, 7, 8), (5,)]


def test_the_ucf11_tucker_plan_is_exact_in_float64_with_and_without_input_gradient():
    """The plan above (float64 runs the same steps on torch's matmul) equals x @ W, forward and backward, for
    data x (no input gradient: the bench's and the UCF11 task's case) and for an x that asks for one."""
    torch.manual_seed(1)
    m = build_map("tucker", [8, 20, 20, 18], UCF_OUT, rank=4, forward="factorized").double()
    w = m.reconstruct()
    params = list(m.parameters())
    for rows, x_grad in [(5, False), (3, True)]:
        x = torch.randn(rows, m.in_features, dtype=torch.float64, requires_grad=x_grad)
        x_ref = x.detach().clone().requires_grad_(x_grad)
        g = torch.randn(rows, m.out_features, dtype=torch.float64)
        y, y_ref = m(x), x_ref @ w
        torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
        grads = torch.autograd.grad(y, params + ([x] if x_grad else []), g)
        grads_ref = torch.autograd.grad(y_ref, params + ([x_ref] if x_grad else []), g, retain_graph=True)
        for got, want in zip(grads, grads_ref):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


@needs_onednn
@pytest.mark.parametrize("fmt,ins,outs,rank", [
    ("tt", [8, 20, 20, 18], UCF_OUT, 4),
    ("tucker", [8, 20, 20, 18], UCF_OUT, 4),
    ("cp", [4, 4, 4, 4], [32, 4, 4, 4], 20),
    ("tt", [4, 4, 4, 4], [32, 4, 4, 4], 4),
])
@pytest.mark.parametrize("rows", [1, 37])
@pytest.mark.parametrize("onednn", [True, False])
def test_float32_chain_matches_float64(fmt, ins, outs, rank, rows, onednn, chains_on):
    """In float32 the chain's plain GEMMs run on oneDNN (or torch's matmul, where MKL runs its Intel kernels):
    output and gradients (x with a gradient too) agree with the float64 chain to float32 rounding, at odd row
    counts."""
    chains_on(onednn)
    assert use_onednn(torch.ones(1, 1), torch.ones(1, 1)) is onednn
    torch.manual_seed(2)
    m32 = build_map(fmt, ins, outs, rank=rank, forward="factorized")
    m64 = build_map(fmt, ins, outs, rank=rank, forward="factorized").double()
    m64.load_state_dict({k: v.double() for k, v in m32.state_dict().items()})
    assert any(s.kind == "mm" and s.post == 1 for s in m32.factorized_plan(rows).steps)
    x = torch.randn(rows, m32.in_features)
    x32, x64 = x.clone().requires_grad_(True), x.double().requires_grad_(True)
    g = torch.randn(rows, m32.out_features)
    y32, y64 = m32(x32), m64(x64)
    scale = y64.abs().max().item()
    torch.testing.assert_close(y32.double(), y64, rtol=1e-4, atol=1e-5 * scale)
    y32.backward(g)
    y64.backward(g.double())
    for (name, p32), p64 in zip(m32.named_parameters(), m64.parameters()):
        s = p64.grad.abs().max().item()
        torch.testing.assert_close(p32.grad.double(), p64.grad, rtol=1e-4, atol=1e-4 * s, msg=name)
    s = x64.grad.abs().max().item()
    torch.testing.assert_close(x32.grad.double(), x64.grad, rtol=1e-4, atol=1e-4 * s)


@pytest.mark.parametrize("rows,x_grad", [(5, False), (7, True)])
def test_short_post_products_with_wide_k_run_as_mode_products_exactly(rows, x_grad):
    """An in-place product with 16 <= post < 64 and K >= 16 (TT's middle core here, as at the UCF11 shape) runs as
    the broadcast bmm (ModeProduct): float64 output and gradients equal those of x @ W."""
    torch.manual_seed(3)
    m = build_map("tt", [2, 5, 8, 9], [16, 4, 4, 4], rank=4, forward="factorized").double()
    assert any(s.kind == "mm" and 16 <= s.post < 64 and s.k >= 16 for s in m.factorized_plan(rows).steps)
    params = list(m.parameters())
    x = torch.randn(rows, m.in_features, dtype=torch.float64, requires_grad=x_grad)
    x_ref = x.detach().clone().requires_grad_(x_grad)
    g = torch.randn(rows, m.out_features, dtype=torch.float64)
    y, y_ref = m(x), x_ref @ m.reconstruct()
    torch.testing.assert_close(y, y_ref, rtol=1e-10, atol=1e-12)
    grads = torch.autograd.grad(y, params + ([x] if x_grad else []), g)
    grads_ref = torch.autograd.grad(y_ref, params + ([x_ref] if x_grad else []), g)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)
