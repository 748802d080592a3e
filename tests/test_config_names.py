"""Renamed config keys: the old name is refused with a one-line hint; runs saved with it still load and resume."""

from __future__ import annotations

import pytest

from tensorlstm.cli import main
from tensorlstm.defaults import cell_config
from tensorlstm.engine.checkpoint import config_differences, load_checkpoint, save_checkpoint


def test_old_cell_mode_is_refused_with_the_new_name(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["info", "cell=tt", "cell.mode=reconstruct"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: cell.mode was renamed cell.forward (factorized | reconstruct | auto); " \
                  "write cell.forward=reconstruct"


def test_a_checkpoint_saved_with_cell_mode_loads_and_resumes(tmp_path):
    new = {"seed": 1, "cell": cell_config("tt", forward="reconstruct")}
    old = {"seed": 1, "cell": {("mode" if k == "forward" else k): v for k, v in new["cell"].items()}}
    path = save_checkpoint({"model": {}, "config": old}, tmp_path / "last.pt")
    loaded = load_checkpoint(path)["config"]["cell"]
    assert loaded["forward"] == "reconstruct" and "mode" not in loaded
    assert config_differences(old, new) == []  # resume=auto still finds the old run
    assert config_differences(old, {**new, "cell": {**new["cell"], "forward": "auto"}}) == [
        "cell.forward: 'reconstruct' -> 'auto'"]


def test_a_checkpoint_saved_before_cell_kernel_rebuilds_torch_nn(tmp_path):
    """Configs from before cell.kernel ran torch.nn.LSTM: loading one adds kernel=torch, so the same module (and
    state dict) is rebuilt, and resuming it sees no config change."""
    from tensorlstm.cells import build_cell
    from tensorlstm.cells.recurrent import FusedRecurrent

    new = {"cell": cell_config("gru", kernel="torch")}
    old = {"cell": {k: v for k, v in new["cell"].items() if k != "kernel"}}
    path = save_checkpoint({"model": {}, "config": old}, tmp_path / "old.pt")
    cell = load_checkpoint(path)["config"]["cell"]
    assert cell["kernel"] == "torch"
    assert isinstance(build_cell(cell, 6, 4), FusedRecurrent)
    assert config_differences(old, new) == []
    assert config_differences(old, {"cell": {**new["cell"], "kernel": "loop"}}) == ["cell.kernel: 'torch' -> 'loop'"]
