"""cell.host_memory: with `keep` (the YAML's default) a process that built a cell reuses freed host memory instead
of page-faulting it back in; `system` leaves glibc's behaviour; a wrong value is a one-line error."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from tensorlstm.engine.checkpoint import config_differences, resume_pins
from tensorlstm.errors import UserError
from tensorlstm.host_memory import set_host_memory

PROBE = """
import json, resource, sys, torch
from tensorlstm.cells import build_cell
from tensorlstm.defaults import cell_config
cfg = cell_config("tt", rank=2)
if sys.argv[1] != "default":
    cfg["host_memory"] = sys.argv[1]
build_cell(cfg, 16, 8)
for _ in range(3):  # warm: the heap grows to the block once
    torch.empty(12 << 20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):  # a 48 MB temporary per 'step' (glibc maps blocks over 32 MB afresh every time by default)
    torch.empty(12 << 20).fill_(1.0)
print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before,
                  "default": cfg["host_memory"]}))
"""


def _faults(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, cwd=ROOT, timeout=300,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_keep_reuses_freed_memory_and_system_faults_it_back_in():
    pages = 20 * (48 << 20) // 4096  # what 20 fresh 48 MB blocks touch
    kept, default, system = _faults("keep"), _faults("default"), _faults("system")
    assert default["default"] == "keep"  # the YAML's default
    assert kept["faults"] < pages // 50 and default["faults"] < pages // 50
    assert system["faults"] > pages // 2


def test_an_unknown_mode_is_a_user_error():
    with pytest.raises(UserError, match="cell.host_memory 'lots'; choose one of: keep, system"):
        set_host_memory("lots")


def test_a_run_resumes_under_either_mode_and_an_older_run_takes_todays():
    """host_memory changes no number: a resume may switch it, and a run saved before the key existed is neither
    refused nor pinned to its old behaviour ('system')."""
    old = {"cell": {"name": "tt", "format": "tt", "rank": 4}, "trainer": {"max_steps": 10}}
    today = {"cell": {"name": "tt", "format": "tt", "rank": 4, "host_memory": "keep"}, "trainer": {"max_steps": 10}}
    assert config_differences(old, today) == []
    assert config_differences({**today, "cell": {**today["cell"], "host_memory": "system"}}, today) == []
    assert config_differences({**old, "cell": {**old["cell"], "rank": 2}}, today) == ["cell.rank: 2 -> 4"]
    assert resume_pins(old, today, set()) == {}
