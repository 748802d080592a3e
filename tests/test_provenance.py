"""A run records the code that made it: one entry per stretch of steps, a new one when a resume runs other code."""

from __future__ import annotations

import json
import subprocess

import torch
from conftest import ROOT

import tensorlstm
from tensorlstm.engine import provenance


def test_code_version_is_this_checkout():
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    got = provenance.code_version()
    assert got["version"] == tensorlstm.__version__ and got["torch"] == torch.__version__
    if head.returncode == 0:  # a git checkout (CI clones one); a wheel or an exported tree has no commit
        assert got["commit"] == head.stdout.strip() and isinstance(got["dirty"], bool)
    else:
        assert got["commit"] is None and got["dirty"] is None


def test_a_resume_on_other_code_adds_a_stretch(train_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    first = train_run(run, "trainer.max_steps=4", "trainer.eval_every=2")
    now = provenance.code_version()
    assert first["code"] == [{"from_step": 0, **now}]
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert ckpt["code"] == first["code"]

    newer = {**now, "commit": "0" * 40, "dirty": False}
    monkeypatch.setattr(provenance, "code_version", lambda: newer)
    resumed = train_run(run, "trainer.max_steps=6", "trainer.eval_every=2",
                        "resume=auto")
    assert resumed["code"] == [{"from_step": 0, **now}, {"from_step": 4, **newer}]
    assert json.loads((run / "summary.json").read_text())["code"] == resumed["code"]
    again = train_run(run, "trainer.max_steps=8", "trainer.eval_every=2",
                      "resume=auto")
    assert again["code"] == resumed["code"]  # the same code again: no new stretch
