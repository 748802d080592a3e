"""Which code made a run: the package version, the git commit of the source checkout it runs from (and whether
that checkout's code or configs had uncommitted changes) and torch's version. A resumed run may run other code
than the steps before it, so a run keeps one entry per stretch of steps (in every checkpoint and in
summary.json)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

import torch

import tensorlstm
from tensorlstm.paths import source_root


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


@functools.cache
def code_version() -> dict:
    """{version, commit, dirty, torch}; commit and dirty are None outside a git checkout of tensorlstm (a wheel)."""
    root = source_root()
    commit = dirty = None
    top = _git(root, "rev-parse", "--show-toplevel")
    if top is not None and Path(top).resolve() == root:  # the package's own checkout, not a repo around a venv
        commit = _git(root, "rev-parse", "HEAD")
        status = _git(root, "status", "--porcelain", "--untracked-files=no", "--", "tensorlstm", "configs")
        dirty = None if status is None else bool(status)
    return {"version": tensorlstm.__version__, "commit": commit, "dirty": dirty, "torch": torch.__version__}


def extend(stretches: list[dict], step: int) -> list[dict]:
    """The run's code stretches with this process's code from `step` on (unchanged when it is the last one's)."""
    now = code_version()
    if stretches and {k: v for k, v in stretches[-1].items() if k != "from_step"} == now:
        return stretches
    return [*stretches, {"from_step": step, **now}]
