"""Data parallelism: every task's batch shards give the one-process gradient; torchrun with 2 gloo processes
trains like one process on the same global batch, writes one run dir, survives SIGKILL + resume=auto, and
its checkpoints load in a single process.

Tolerance: float32 parameters after 100 Adam steps agree to 1e-5 (absolute and relative; measured ~2e-7:
the ranks' gradient halves are summed in another order than one process sums the whole batch); gradients of
one step agree to 1e-5 relative.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tiny
import torch
from conftest import ROOT, TINY, TINY_RUN

from tensorlstm.cli import load_config, main
from tensorlstm.engine import distributed
from tensorlstm.engine.build import build
from tensorlstm.engine.checkpoint import load_checkpoint

TASKS = sorted(p.stem for p in (ROOT / "configs" / "task").glob("*.yaml"))  # every task the CLI offers
# tasks whose loss draws noise per row (DRAW's latent samples): the shards draw other numbers than the whole
# batch, so only the batch split and the loss weights are checked there, not gradient equality
NOISY = {"draw_mnist"}


def _grads(model, loss) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", TASKS)
def test_rank_shards_reweighted_give_the_global_batch_gradient(name, tmp_path):
    """What the trainer does on each of 2 ranks (shard, loss x world n_r / n, DDP's mean of the gradients)
    equals the gradient of the whole batch in one process, for every task (carried TBPTT state included)."""
    _, cfg = load_config([f"task={name}", *tiny.overrides(name, tmp_path), "task.batch_size=6"])
    torch.manual_seed(0)
    task, model, _ = build(cfg, prepare=True)
    model.eval()  # no dropout draws: the same function on the shards and on the whole batch
    batch = task.train_batch(1)
    loss, _, carry = task.loss(model, batch, None)
    full = _grads(model, loss)
    worlds = [distributed.World(r, 2) for r in range(2)]
    shards = [distributed.shard(batch, w) for w in worlds]
    terms = [float(task.loss_terms(b)) for b in shards]
    assert sum(terms) == pytest.approx(float(task.loss_terms(batch)))
    for key, value in batch.items():  # the shards partition the global batch, in order
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            assert torch.equal(torch.cat([s[key] for s in shards]), value)
    if name in NOISY:
        return
    mean = None
    carries = []
    for shard, n in zip(shards, terms):
        shard_loss, _, shard_carry = task.loss(model, shard, None)
        carries.append(shard_carry)
        g = _grads(model, shard_loss * (2 * n / sum(terms)))
        mean = g if mean is None else {k: (mean[k] + g[k]) / 2 for k in g}
    for k in full:
        torch.testing.assert_close(mean[k], full[k], rtol=1e-5, atol=1e-7, msg=k)
    if task.carries_state:  # the ranks' carried states are the rows of the one-process state
        merged = [torch.cat(parts) for parts in zip(*[torch.utils._pytree.tree_leaves(c) for c in carries])]
        for a, b in zip(merged, torch.utils._pytree.tree_leaves(carry)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_shard_rows_cover_uneven_batches():
    rows = [distributed.shard_rows(7, distributed.World(r, 3)) for r in range(3)]
    assert [(s.start, s.stop) for s in rows] == [(0, 3), (3, 5), (5, 7)]
    state = distributed.shard_state((torch.arange(8).view(4, 2),), distributed.World(1, 2))
    assert state[0].tolist() == [[4, 5], [6, 7]]
    assert distributed.clean_state_dict({"module.a": 1, "module.b": 2}) == {"a": 1, "b": 2}
    assert distributed.clean_state_dict({"a": 1}) == {"a": 1}


DDP_RUN = ["trainer.max_steps=100", "trainer.eval_every=20", "task.hidden_size=48", "cell=tt", "rank=3",
           "device=cpu"]


def _torchrun(*args: str, cwd: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "tensorlstm", "train", *args]
    return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _children(pid: int) -> list[int]:
    """Child processes of pid (Linux /proc): torchrun starts its workers in sessions of their own."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _valid_records(run: Path) -> list[dict]:
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["split"] == "valid"]


def test_torchrun_two_processes_killed_and_resumed_equal_one_process(train_run, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    runs = work / "outputs" / "addition" / "tt"
    log1 = tmp_path / "first.log"
    proc = _torchrun(*TINY, *DDP_RUN, cwd=work, log=log1)
    deadline = time.time() + 240
    while not (runs.exists() and any((d / "checkpoints" / "last.pt").exists() for d in runs.iterdir())):
        assert proc.poll() is None, log1.read_text()[-3000:]
        assert time.time() < deadline, "no checkpoint within 240 s"
        time.sleep(0.02)
    for pid in [*_children(proc.pid), proc.pid]:  # both workers (own sessions) and torchrun, mid-run
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    time.sleep(0.5)
    (run,) = list(runs.iterdir())
    assert not (run / "summary.json").exists(), "the run finished before it was killed; make it slower"
    killed_at = max(r["step"] for r in _valid_records(run))
    assert killed_at < 100

    log2 = tmp_path / "resumed.log"
    resumed = _torchrun(*TINY, *DDP_RUN, "resume=auto", cwd=work, log=log2)
    assert resumed.wait(timeout=300) == 0, log2.read_text()[-3000:]
    out = log2.read_text()
    assert "resuming" in out and out.count("run dir:") == 1  # rank 0 alone reports
    assert list(runs.iterdir()) == [run]  # one run dir for both launches and both ranks
    assert sorted(p.name for p in work.iterdir()) == ["outputs"]  # rank 1 made no Hydra dirs of its own
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 100

    single = train_run(tmp_path / "single", *DDP_RUN)
    assert single["world_size"] == 1
    ddp_state = load_checkpoint(run / "checkpoints" / "last.pt")
    one_state = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")
    assert ddp_state["model"].keys() == one_state["model"].keys()  # no `module.` prefix
    for k, v in one_state["model"].items():
        torch.testing.assert_close(ddp_state["model"][k], v, rtol=1e-5, atol=1e-5, msg=k)
    ddp_valid, one_valid = _valid_records(run), _valid_records(tmp_path / "single")
    assert [r["step"] for r in ddp_valid] == [r["step"] for r in one_valid] == [20, 40, 60, 80, 100]
    for a, b in zip(ddp_valid, one_valid):
        for key in ("loss", "accuracy", "seq_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6)
    for key, value in single["test"].items():
        assert summary["test"][key] == pytest.approx(value, rel=1e-5, abs=1e-6)

    main(["eval", str(run)])  # the DDP run's best.pt in a single process: the summary's own test metrics
    evaluated = json.loads((run / "eval.json").read_text())
    assert {k: evaluated[k] for k in summary["test"]} == summary["test"]


def test_train_outside_torchrun_refuses_a_world_without_rendezvous(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", *TINY_RUN, f"hydra.run.dir={tmp_path / 'x'}"])
    assert exit_info.value.code == 2
    assert "torchrun" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_preemption_signal_saves_last_pt_then_hands_over_to_the_previous_handler(train_run, tmp_path):
    """SIGUSR1 mid-run (SLURM's warning before a time limit): last.pt at the next step, then the handler that was
    installed before the run (submitit's requeue) is called; resume=auto then continues the run."""
    import threading

    called = []
    old = signal.signal(signal.SIGUSR1, lambda signum, frame: called.append(signum))
    run = tmp_path / "run"
    slow = ["trainer.max_steps=150", "trainer.eval_every=20", "task.hidden_size=32", "cell=tt", "rank=3"]

    def send_when_checkpointed():
        deadline = time.time() + 120
        while not (run / "checkpoints" / "last.pt").exists() and time.time() < deadline:
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGUSR1)

    sender = threading.Thread(target=send_when_checkpointed)
    sender.start()
    try:
        with pytest.raises(SystemExit) as exit_info:
            train_run(run, *slow)
    finally:
        sender.join()
        signal.signal(signal.SIGUSR1, old)
    assert exit_info.value.code == 128 + signal.SIGUSR1
    assert called == [signal.SIGUSR1]  # passed on after the checkpoint
    stopped_at = load_checkpoint(run / "checkpoints" / "last.pt")["step"]
    assert 20 <= stopped_at < 150 and not (run / "summary.json").exists()
    summary = train_run(run, *slow, "resume=auto")
    assert summary["steps"] == 150
