"""Never lost work: SIGKILL at random moments, mid-append of metrics.jsonl and mid-save of a checkpoint, each
followed by a resume, ends bit-identical to an uninterrupted run with no duplicate record; W&B online with a
fake key and no route to the server starts training within seconds and writes an offline run."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import time
from pathlib import Path

import torch
from conftest import TINY

from tensorlstm.engine.checkpoint import load_checkpoint, save_checkpoint

# 160 steps with a checkpoint at every evaluation (20 steps) and by time (checkpoint_every_s), so kills land
# between, at and during both kinds; recurrent dropout draws from the RNG the checkpoints must restore
RUN = [*TINY, "trainer.max_steps=160", "trainer.eval_every=20", "trainer.log_every=4", "cell=tt", "rank=2",
       "task.hidden_size=24", "cell.recurrent_dropout=0.2", "trainer.checkpoint_every_s=0.05"]


def _child(argv: list[str], fault: str | None) -> None:
    if fault:
        os.environ["TLSTM_FAULT"] = fault
    from tensorlstm.cli import main

    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    os._exit(code or 0)


def _start(run: Path, fault: str | None = None):
    """`tlstm train` in a forked child (torch already imported: ~0.1 s to start instead of seconds)."""
    proc = multiprocessing.get_context("fork").Process(
        target=_child, args=(["train", *RUN, "resume=auto", f"hydra.run.dir={run}"], fault))
    proc.start()
    return proc


def _records(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def _lines(run: Path) -> int:
    path = run / "metrics.jsonl"
    return len(path.read_bytes().split(b"\n")) if path.exists() else 0


def test_ten_kills_resume_bit_identical(train_run, tmp_path):
    straight = train_run(tmp_path / "straight", *[a for a in RUN if a not in TINY])
    run = tmp_path / "killed"
    rng = random.Random(12)
    # deterministic kills mid-write (the n-th write of that process), random kills in between
    plan = ["metrics:3", None, "checkpoint:2", None, "metrics:1", None, "checkpoint:1", None, "metrics:6", None]
    kills = 0
    for fault in plan:
        before = _lines(run)
        proc = _start(run, fault)
        if fault is None:  # a random moment: after 1-3 new records (4-12 steps), plus up to 20 ms
            end, wait = time.time() + 60, rng.randint(1, 3)
            while _lines(run) < before + wait and proc.is_alive() and time.time() < end:
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, 0.02))
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGKILL)
        proc.join(60)
        assert proc.exitcode == -signal.SIGKILL, f"{fault or 'random kill'}: the run ended ({proc.exitcode})"
        assert not (run / "summary.json").exists()
        kills += 1
    assert kills == 10
    proc = _start(run)  # the last resume runs to the end
    proc.join(120)
    assert proc.exitcode == 0
    summary = json.loads((run / "summary.json").read_text())
    for key in ("test", "valid", "best_valid", "steps"):
        assert summary[key] == straight[key], key
    assert summary["seconds_per_step"] > 0
    a = load_checkpoint(run / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def strip(records):
        return [{k: v for k, v in r.items() if k != "wall_time"} for r in records]

    mine, ref = _records(run), _records(tmp_path / "straight")
    assert len({(r["step"], r["split"]) for r in mine}) == len(mine)  # no duplicate record
    assert strip(mine) == strip(ref)  # the same records, bit for bit
    assert not list((run / "checkpoints").glob(".*.tmp"))  # the temp files of killed saves are gone


def test_metrics_partial_line_and_restart_before_first_checkpoint(train_run, tmp_path):
    run = tmp_path / "run"
    (run).mkdir()
    (run / "metrics.jsonl").write_text('{"step": 5, "split": "train", "loss": 1.0}\n{"step": 10, "spl')
    summary = train_run(run, "trainer.max_steps=8", "trainer.eval_every=4")
    records = _records(run)  # every line parses: the partial one and the stale run's record are gone
    assert [r["step"] for r in records if r["split"] == "valid"] == [4, 8]
    assert [r["step"] for r in records if r["split"] == "train"] == [5, 8]  # this run only (log_every=5)
    assert summary["steps"] == 8


def test_resume_of_a_finished_run_keeps_one_test_record(train_run, tmp_path):
    run = tmp_path / "run"
    first = train_run(run, "trainer.max_steps=6", "trainer.eval_every=3")
    again = train_run(run, "trainer.max_steps=6", "trainer.eval_every=3", f"resume={run}")
    assert [r["split"] for r in _records(run)].count("test") == 1
    assert again["seconds_per_step"] == first["seconds_per_step"] > 0  # no 0.0 from a loop that did not run
    assert again["test"] == first["test"]


def test_stale_temp_files_are_removed_and_checkpoints_are_0644(train_run, tmp_path):
    ckpt = tmp_path / "run" / "checkpoints"
    ckpt.mkdir(parents=True)
    stale = ckpt / ".last.pt.abc123.tmp"
    stale.write_bytes(b"x" * 1000)
    train_run(tmp_path / "run", "trainer.max_steps=2", "trainer.eval_every=2")
    assert not stale.exists()
    old = os.umask(0o022)
    try:
        path = save_checkpoint({"model": {}, "config": {}}, tmp_path / "x.pt")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644


def test_time_based_checkpoint_between_evaluations(train_run, tmp_path):
    run = tmp_path / "run"
    train_run(run, "trainer.max_steps=30", "trainer.eval_every=30", "trainer.checkpoint_every_s=1e-9",
                    "trainer.test_at_end=false")
    # with a tiny interval every step saves last.pt; without time-based checkpoints only step 30 would
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 30
    straight = train_run(tmp_path / "b", "trainer.max_steps=30", "trainer.eval_every=30",
                               "trainer.checkpoint_every_s=null", "trainer.test_at_end=false")
    assert json.loads((run / "summary.json").read_text())["valid"] == straight["valid"]


def test_plain_progress_lines_when_not_a_tty(tlstm, tmp_path):
    r = tlstm("train", *[a for a in TINY if a != "trainer.progress=false"], "trainer.max_steps=6",
                  "trainer.eval_every=6", "trainer.progress_every_s=1e-9", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stderr
    lines = [ln for ln in (tmp_path / "run" / "train.log").read_text().splitlines() if "steps/s, ETA" in ln]
    assert len(lines) >= 5 and "step 6/6 (100%): loss " in lines[-1]
    final = [ln for ln in r.stdout.splitlines() if ln.startswith("final metrics: ")]
    metrics = json.loads(final[0].removeprefix("final metrics: "))
    assert set(metrics) == {"best_valid_seq_accuracy", "test_loss", "test_accuracy", "test_seq_accuracy"}
    assert all(len(repr(v).split(".")[-1]) <= 6 for v in metrics.values() if isinstance(v, float))


def test_wandb_online_with_a_fake_key_and_no_network_goes_offline_fast(train_run, tmp_path, monkeypatch, capsys):
    import wandb  # noqa: F401 - imported first: the import costs the same in every mode, the set-up is timed

    run = tmp_path / "run"
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "f" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # a closed port: no route to a server
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.setenv("HOME", str(tmp_path))
    base = [a for a in TINY if not a.startswith(("logger", "trainer.log_every"))]
    args = ["trainer.log_every=1", "trainer.max_steps=3", "trainer.eval_every=3"]
    train_run(tmp_path / "offline", "logger.mode=offline", *args, base=base)
    offline = _records(tmp_path / "offline")[0]["wall_time"]  # plain offline W&B set-up + one step, here and now
    capsys.readouterr()
    train_run(run, "logger.mode=online", *args, base=base)
    notice = [ln for ln in capsys.readouterr().out.splitlines() if "W&B online unavailable" in ln]
    assert len(notice) == 1 and f"wandb sync {run}/wandb/offline-run-*" in notice[0]
    first = _records(run)[0]
    # training starts within 5 s (on a machine so busy that offline W&B alone takes longer: within 3 s of that)
    assert first["step"] == 1 and first["wall_time"] < max(5.0, offline + 3.0), (first["wall_time"], offline)
    assert list((run / "wandb").glob("offline-run-*"))
