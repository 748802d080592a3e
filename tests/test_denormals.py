"""cell.denormals: with `flush` (the YAML's default) a process that built a cell, or a `tlstm train` run, does its
CPU arithmetic with denormal floats flushed to zero, in torch's intra-op threads too; `ieee` keeps them; runs saved
before the key resume on `ieee`; a wrong value is a one-line error."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from tensorlstm.defaults import cell_config
from tensorlstm.denormals import set_denormals
from tensorlstm.engine.checkpoint import load_checkpoint, save_checkpoint
from tensorlstm.errors import UserError

PROBE = """
import json, sys, torch
from tensorlstm.cells import build_cell
from tensorlstm.defaults import cell_config
from tensorlstm.denormals import flushed
cfg = cell_config("lstm")
if sys.argv[1] != "default":
    cfg["denormals"] = sys.argv[1]
before = flushed()
build_cell(cfg, 6, 4)
torch.set_num_threads(2)
tiny = torch.full((1 << 22,), 1e-39)  # denormal float32, split over both intra-op threads
print(json.dumps({"before": before, "main": flushed(), "zeros": (tiny * 1.0 == 0).float().mean().item(),
                  "default": cell_config("lstm")["denormals"]}))
"""


def _probe(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("mode", ["default", "flush", "ieee"])
def test_building_a_cell_sets_the_process_mode_for_every_thread(mode):
    got = _probe(mode)
    assert got["default"] == "flush" and got["before"] is False
    flush = mode != "ieee"
    assert got["main"] is flush
    assert got["zeros"] == (1.0 if flush else 0.0)  # torch's intra-op threads, started after, inherit the mode


def test_an_unknown_mode_is_a_user_error():
    with pytest.raises(UserError, match="cell.denormals 'sometimes'; choose one of: flush, ieee"):
        set_denormals("sometimes")


def test_a_run_saved_before_the_key_resumes_with_ieee_denormals(tmp_path):
    """Flushing changes results wherever a denormal arises, so a run saved before the key keeps IEEE arithmetic."""
    new = {"cell": cell_config("lstm")}
    old = {"cell": {k: v for k, v in new["cell"].items() if k != "denormals"}}
    path = save_checkpoint({"model": {}, "config": old}, tmp_path / "old.pt")
    assert load_checkpoint(path)["config"]["cell"]["denormals"] == "ieee"
