"""`tlstm compress`: the decompositions (exact recovery, padding), the compressed cell against the dense cell with
the rebuilt W_hat, the CLI's errors and the fine-tune run (summary contract, resume)."""

from __future__ import annotations

import pytest
import torch

from tensorlstm.engine.compress import compress_net
from tensorlstm.tensor import build_map
from tensorlstm.tensor.decompose import decompose_into, relative_error

# (format, in modes, out modes, rank, blocks): small shapes where ALS converges quickly from its SVD start
EXACT = [
    ("tt", [2, 3, 2], [3, 2, 4], 2, 1),
    ("tt", [7, 2, 2, 1], [16, 4, 4, 2], 3, 1),
    ("cp", [7, 2, 2, 1], [16, 4, 4, 2], 4, 1),
    ("tucker", [2, 3, 2], [3, 2, 4], 2, 1),
    ("tucker", [2, 3, 2], [3, 2, 4], [2, 1, 2, 3, 2, 2], 1),
    ("bt", [7, 2, 2, 1], [16, 4, 4, 2], 2, 2),
    ("bt", [2, 3, 2], [3, 2, 4], 2, 1),
]


@pytest.mark.parametrize("fmt,ins,outs,rank,blocks", EXACT, ids=[f"{c[0]}-{c[3]}x{c[4]}-d{len(c[1])}" for c in EXACT])
def test_a_matrix_of_the_format_and_rank_is_recovered(fmt, ins, outs, rank, blocks):
    torch.manual_seed(0)
    w = build_map(fmt, ins, outs, rank=rank, blocks=blocks).double().reconstruct().detach()
    target = build_map(fmt, ins, outs, rank=rank, blocks=blocks).double()
    assert relative_error(w, target.reconstruct()) > 0.5  # a fresh init is far from W
    err = decompose_into(target, w, iterations=300, tol=1e-14)
    assert err < 1e-10
    x = torch.randn(5, w.shape[0], dtype=torch.float64)
    for mode in ("factorized", "reconstruct"):  # the map's own forward paths see the same W
        target.mode = mode
        torch.testing.assert_close(target(x), x @ w, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("fmt,rank,blocks", [("tt", 8, 1), ("tucker", 4, 1), ("bt", 24, 1), ("bt", 12, 2)])
def test_a_rank_larger_than_needed_reproduces_w(fmt, rank, blocks):
    """Any 12 x 24 matrix: TT rank 8 >= every unfolding rank, Tucker ranks >= every mode, BT R >= every
    merged mode. The map keeps its configured shapes (padded factors) and W_hat == W."""
    torch.manual_seed(1)
    w = torch.randn(12, 24, dtype=torch.float64)
    target = build_map(fmt, [2, 3, 2], [3, 2, 4], rank=rank, blocks=blocks).double()
    shapes = [tuple(f.shape) for f in target.factors()]
    assert decompose_into(target, w, iterations=300, tol=1e-14) < 1e-10
    assert [tuple(f.shape) for f in target.factors()] == shapes


def test_cp_with_more_terms_than_needed_reproduces_w():
    torch.manual_seed(2)
    w = build_map("cp", [7, 2, 2, 1], [16, 4, 4, 2], rank=2).double().reconstruct().detach()
    target = build_map("cp", [7, 2, 2, 1], [16, 4, 4, 2], rank=4).double()
    assert decompose_into(target, w, iterations=500, tol=1e-14) < 1e-7


def test_padded_slices_are_not_stuck():
    """TT rank 8 on a map whose first unfolding has rank 6: the padded right columns of core 0 are zero but get
    a gradient (they multiply the noise rows of core 1), so fine-tuning can use the extra rank."""
    torch.manual_seed(3)
    w = torch.randn(12, 24, dtype=torch.float64)
    target = build_map("tt", [2, 3, 2], [3, 2, 4], rank=8).double()
    decompose_into(target, w)
    pad = target.core0[..., 6:]
    assert torch.count_nonzero(pad) == 0
    (target.reconstruct() * torch.randn(12, 24, dtype=torch.float64)).sum().backward()
    assert torch.count_nonzero(target.core0.grad[..., 6:]) == pad.numel()


def test_truncation_is_quasi_optimal_for_tt():
    """TT-SVD error <= sqrt(sum of the squared truncation errors of each unfolding) (Oseledets 2011, Thm 2.2)."""
    torch.manual_seed(4)
    w = torch.randn(12, 24, dtype=torch.float64)
    target = build_map("tt", [2, 3, 2], [3, 2, 4], rank=2).double()
    err = decompose_into(target, w)
    t = w.reshape(2, 3, 2, 3, 2, 4).permute(0, 3, 1, 4, 2, 5).reshape(6, 6, 8)
    tails = []
    for k in (1, 2):
        s = torch.linalg.svdvals(t.reshape(36 if k == 2 else 6, -1))
        tails.append(float((s[2:] ** 2).sum()))
    assert 0 < err <= (sum(tails) ** 0.5) / float(torch.linalg.norm(w)) + 1e-12


# --- the compressed cell ---------------------------------------------------------------------------------------
CCFG = {"iterations": 100, "tol": 1e-12, "seed": 0}


def _dense_and_factorized(base, fmt, rank, extra=None, dense_extra=None):
    from tensorlstm.cells import build_cell
    from tensorlstm.defaults import cell_config

    small = dict(base=base, layers=2, d=3, blocks=2)  # the rest from configs/cell/<name>.yaml
    torch.manual_seed(5)
    dense = build_cell(cell_config("lstm", **{**small, **(dense_extra or {})}), 12, 8).double()
    with torch.no_grad():  # biases of every kind non-zero, so their conversion is checked too
        for name, p in dense.named_parameters():
            if "bias" in name:
                p.normal_()
    net = build_cell(cell_config(fmt, **{**small, "rank": rank, **(extra or {})}), 12, 8).double()
    return dense, net


@pytest.mark.parametrize("base,fmt,rank,extra,dense_extra", [
    ("lstm", "tt", 2, None, None),
    ("gru", "bt", 2, None, None),
    ("lstm", "cp", 3, {"gate_mode": "last"}, None),
    ("gru", "tucker", 2, {"factorize_hidden": True}, None),
    ("lstm", "tt", 3, {"factorize_hidden": True, "gate_mode": "last"}, None),
    ("gru", "cp", 4, {"reset_after": False}, {"reset_after": False}),  # dense reset-before GRU: not fused
])
def test_the_compressed_cell_equals_the_dense_cell_with_w_hat(base, fmt, rank, extra, dense_extra):
    """The dense net (torch.nn.LSTM/GRU, or the layer-by-layer dense GRU) with W_ih (and W_hh) replaced by
    what the factorized maps rebuild gives exactly the factorized net's outputs: gate order, bias folding and
    the tensorization (gate factor on the first or the last mode) all line up."""
    from tensorlstm.cells.recurrent import FusedRecurrent

    dense, net = _dense_and_factorized(base, fmt, rank, extra, dense_extra)
    records = compress_net(dense, net, "rnn", CCFG)
    maps = 2 * (2 if (extra or {}).get("factorize_hidden") else 1)
    assert [r["matrix"] for r in records][:1] == ["rnn.layers.0.input_map"] and len(records) == maps
    assert all(0 < r["reconstruction_error"] < 1 for r in records)
    with torch.no_grad():
        for i, layer in enumerate(net.layers):
            w_ih = layer.input_map.reconstruct()
            w_hh = layer.recurrent_weight()
            if isinstance(dense, FusedRecurrent):
                getattr(dense.rnn, f"weight_ih_l{i}").copy_(w_ih.T)
                getattr(dense.rnn, f"weight_hh_l{i}").copy_(w_hh.T)
            else:
                dense.layers[i].input_map.weight.copy_(w_ih)
                dense.layers[i].weight_hh.copy_(w_hh)
    x = torch.randn(3, 5, 12, dtype=torch.float64)
    y_dense, s_dense = dense(x)
    y, s = net(x)
    torch.testing.assert_close(y, y_dense, rtol=1e-10, atol=1e-12)


def test_a_rank_that_fits_w_gives_the_dense_cell_back():
    """TT ranks >= every unfolding rank: the compressed LSTM is the dense LSTM (no fine-tuning needed)."""
    dense, net = _dense_and_factorized("lstm", "tt", 32, {"layers": 1}, {"layers": 1})
    records = compress_net(dense, net, "rnn", CCFG)
    assert records[0]["reconstruction_error"] < 1e-12
    x = torch.randn(2, 4, 12, dtype=torch.float64)
    torch.testing.assert_close(net(x)[0], dense(x)[0], rtol=1e-10, atol=1e-12)


# --- the command ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dense_run(train_run, tmp_path_factory):

    run = tmp_path_factory.mktemp("dense") / "lstm"
    train_run(run, "trainer.max_steps=30", "trainer.eval_every=15", "optim.lr=0.01")
    return run


def _compress(*args) -> tuple[int, str]:
    import contextlib
    import io
    import sys

    from tensorlstm.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(["compress", *args])
        except SystemExit as e:
            code = e.code
    sys.argv = sys.argv[:1]
    return code, err.getvalue()


def test_compress_writes_the_contract_summary(dense_run, tmp_path):
    import json

    dense = json.loads((dense_run / "summary.json").read_text())
    code, err = _compress(str(dense_run), "cell=tt", "rank=2", "trainer.max_steps=6", "trainer.eval_every=3",
                          f"hydra.run.dir={tmp_path / 'tt'}")
    assert code == 0, err
    s = json.loads((tmp_path / "tt" / "summary.json").read_text())
    assert s["cell"] == "tt" and s["steps"] == 6  # fine-tuning steps, counted from 0
    assert 0 <= s["reconstruction_error"] < 1
    assert s["metric_before_compression"] == dense["seq_accuracy"]  # best.pt of the dense run, same test set
    assert isinstance(s["metric_before_finetune"], float)
    assert s["metric_after_finetune"] == s["seq_accuracy"]
    (m,) = s["matrices"]
    assert m["matrix"] == "rnn.layers.0.input_map" and m["params_before"] == 11 * 64
    assert m["params_after"] == s["params_input_map"] and m["reconstruction_error"] == s["reconstruction_error"]
    assert [json.loads(x)["step"] for x in (tmp_path / "tt" / "metrics.jsonl").read_text().splitlines()
            if '"valid"' in x] == [3, 6]


def test_the_fine_tune_run_resumes_like_any_other(dense_run, tmp_path):
    """Stop after 2 of 4 steps, resume with `tlstm train resume=<dir>`: the same numbers as 4 steps straight."""
    import contextlib
    import io
    import json

    from tensorlstm.cli import main

    common = [str(dense_run), "cell=cp", "rank=3", "trainer.eval_every=2"]
    assert _compress(*common, "trainer.max_steps=4", f"hydra.run.dir={tmp_path / 'straight'}")[0] == 0
    assert _compress(*common, "trainer.max_steps=2", f"hydra.run.dir={tmp_path / 'cut'}")[0] == 0
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["train", f"resume={tmp_path / 'cut'}", "trainer.max_steps=4"]) == 0
    assert "resuming" in out.getvalue()
    straight, cut = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("straight", "cut"))
    assert cut["steps"] == 4 and cut["test"] == straight["test"] and cut["valid"] == straight["valid"]
    assert cut["metric_before_finetune"] == straight["metric_before_finetune"]  # kept through the resume
    assert cut["reconstruction_error"] == straight["reconstruction_error"]


@pytest.mark.parametrize("why,args,expect", [
    ("no target", ["rank=2"], "needs the target format"),
    ("dense target", ["cell=lstm"], "is dense"),
    ("rank 0", ["cell=tt", "rank=0"], "rank"),
    ("tt ranks", ["cell=tt", "rank=[1,2]"], "tt ranks"),
    ("another task", ["cell=tt", "task=memorization"], "own task"),
    ("another recurrence", ["cell=bt", "cell.base=gru"], "cell.base"),
])
def test_bad_input_is_one_line_and_exit_2(dense_run, tmp_path, why, args, expect):
    code, err = _compress(str(dense_run), *args, "trainer.max_steps=2", f"hydra.run.dir={tmp_path / 'x'}")
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and expect in err, err


def test_compressing_a_factorized_run_is_refused(train_run, tmp_path):

    train_run(tmp_path / "tt", "cell=tt", "rank=2", "trainer.max_steps=2", "trainer.eval_every=2")
    code, err = _compress(str(tmp_path / "tt"), "cell=cp")
    assert code == 2 and "cell=tt run" in err and err.count("\n") == 1
    code, err = _compress(str(tmp_path / "nowhere"), "cell=cp")
    assert code == 2 and err.count("\n") == 1


def test_a_rank_sweep_gives_one_fine_tune_run_per_rank(dense_run, tmp_path):
    import json

    code, err = _compress(str(dense_run), "-m", "cell=tt", "rank=1,2", "trainer.max_steps=2", "trainer.eval_every=2",
                          f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert code == 0, err
    runs = sorted((tmp_path / "sweep").glob("*/summary.json"))  # compress.source stays out of the job names
    summaries = [json.loads(p.read_text()) for p in runs]
    assert [s["cell"] for s in summaries] == ["tt", "tt"] and len({s["params_input_map"] for s in summaries}) == 2
    assert all(s["compressed_from"] == str(dense_run.resolve() / "checkpoints" / "best.pt") for s in summaries)
