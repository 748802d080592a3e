"""The package installs as a wheel: `configs/` and the gate kernels' C++ source travel inside it and an installed
`tlstm` runs from any folder."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("tensorlstm", "configs", "pyproject.toml", "setup.py", "MANIFEST.in", "README.md")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built by pip from a copy of the source tree (so the build leaves nothing in the checkout)."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "conf"))
        else:
            shutil.copy2(ROOT / name, src / name)
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", *isolation, str(src), "-w", str(tmp)],
                   check=True, capture_output=True, timeout=300)
    (whl,) = tmp.glob("tensorlstm-*.whl")
    return whl


def test_wheel_carries_every_config_unchanged(wheel):
    configs = {p.relative_to(ROOT / "configs").as_posix(): p.read_bytes()
               for p in (ROOT / "configs").rglob("*.yaml")}
    with zipfile.ZipFile(wheel) as z:
        packaged = {n.removeprefix("tensorlstm/conf/"): z.read(n) for n in z.namelist()
                    if n.startswith("tensorlstm/conf/") and n.endswith(".yaml")}
        modules = {n for n in z.namelist() if n.endswith(".py")}
        assert z.read("tensorlstm/native.cpp") == (ROOT / "tensorlstm/native.cpp").read_bytes()
    assert packaged == configs
    assert {f"tensorlstm/{p.relative_to(ROOT / 'tensorlstm').as_posix()}"
            for p in (ROOT / "tensorlstm").rglob("*.py")} <= modules  # every subpackage is shipped


def test_installed_tlstm_runs_from_any_folder(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "disabled"}
    env.pop("TLSTM_CONFIG_DIR", None)
    script = ("import sys, tensorlstm.cli as c; "
              f"assert c.CONFIG_DIR == c.Path({str(site / 'tensorlstm' / 'conf')!r}), c.CONFIG_DIR; "
              "sys.exit(c.main(sys.argv[1:]))")

    def tlstm(*args):
        return subprocess.run([sys.executable, "-c", script, *args], cwd=work, env=env, capture_output=True,
                              text=True, timeout=120)

    info = tlstm("info", "experiment=demo")
    assert info.returncode == 0, info.stderr
    assert '"params_input_map": 5632' in info.stdout  # 4 gates x 128 x 11 symbols: the demo's LSTM
    run = tlstm("train", "experiment=demo", "trainer.max_steps=2", "trainer.eval_every=2", "logger.mode=disabled",
                "task.valid_size=20", "task.test_size=20")
    assert run.returncode == 0, run.stderr
    assert list((work / "outputs" / "addition" / "lstm").glob("*/summary.json"))
