"""Shared test harness: tiny configs, a temp output dir, W&B disabled, one CPU thread."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("OMP_NUM_THREADS", "1")

TINY_RUN = ["trainer.log_every=5", "logger.mode=disabled", "threads=1", "trainer.progress=false"]
# the fastest real run: 2-digit addition, a 16-wide net, small fixed valid/test sets
TINY = [*TINY_RUN, "task=addition", "task.digits=2", "task.hidden_size=16", "task.batch_size=8",
        "task.valid_size=40", "task.test_size=40"]


def _run_tlstm(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 120,
               **popen) -> subprocess.CompletedProcess:
    merged = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    return subprocess.run([sys.executable, "-m", "tensorlstm.cli", *args], cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout, env=merged, **popen)


def _train_run(run_dir: Path, *overrides: str, base: list[str] = TINY) -> dict:
    from tensorlstm.cli import main

    main(["train", *base, *overrides, f"hydra.run.dir={run_dir}"])
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="session")
def tlstm():
    """`tlstm(*args, cwd=, env=, timeout=)`: run `tlstm` in a subprocess (for exit codes, signals and stderr);
    env values of None unset a variable. Returns the CompletedProcess (text stdout/stderr)."""
    return _run_tlstm


@pytest.fixture(scope="session")
def train_run():
    """`train_run(run_dir, *overrides, base=TINY)`: `tlstm train` in this process (fast); returns summary.json."""
    return _train_run


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """Tests run many tiny ops: one thread is fastest and immune to a busy machine (OpenMP spin contention)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
