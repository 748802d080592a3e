"""Checkpoints: written to a temporary file and renamed, so a crash mid-save keeps the previous one."""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from tensorlstm.engine import faults
from tensorlstm.errors import UserError

# config keys that may change when a run is resumed (how long, how it logs, where it runs; `compress` acts before
# the first step only, and the trainer checks its source separately); all others must match
RESUMABLE_CHANGES = frozenset({"resume", "logger", "trainer", "device", "threads", "run_name", "compress"})


def upgrade_config(cfg: dict) -> dict:
    """A config saved before a key was renamed or added, in today's terms; others unchanged.

    cell.mode is now cell.forward; a config from before cell.kernel existed ran torch.nn.LSTM/GRU, so it gets
    kernel=torch (its checkpoint holds that module's weights)."""
    cell = cfg.get("cell")
    if not isinstance(cell, dict):
        return cfg
    if "mode" in cell and "forward" not in cell:
        cell = {("forward" if k == "mode" else k): v for k, v in cell.items()}
    if "kernel" not in cell:
        cell = {**cell, "kernel": "torch"}
    return cfg if cell is cfg["cell"] else {**cfg, "cell": cell}


def config_differences(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, ignoring RESUMABLE_CHANGES."""
    old, new = upgrade_config(old), upgrade_config(new)
    out: list[str] = []

    def walk(a, b, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if not path and k in RESUMABLE_CHANGES:
                    continue
                walk(a.get(k), b.get(k), f"{path}.{k}" if path else k)
        elif a != b:
            out.append(f"{path}: {a!r} -> {b!r}")

    walk(old, new, "")
    return out


def check_resumable(old: dict, new: dict, what: str) -> None:
    """UserError when `new` is not a resumption of the run trained with config `old`."""
    changed = config_differences(old, new)
    if changed:
        raise UserError(f"resume: {what} was trained with another config ({'; '.join(changed[:3])}); "
                        "pass the run's overrides again or start a new run")


def save_checkpoint(obj: dict[str, Any], path: str | Path) -> Path:
    """Atomically write `obj` to `path` (temp file in the same folder, fsync, rename), readable like every
    other file of the run (0644 under the usual umask, not mkstemp's 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            if faults.armed("checkpoint"):  # test hook: die mid-save, half the file written
                f.truncate(f.tell() // 2)
                os.fsync(f.fileno())
                faults.kill()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_stale_temp_files(ckpt_dir: str | Path) -> list[Path]:
    """Delete the temp files of saves that a kill interrupted (.last.pt.*.tmp); a run dir holds one writer."""
    stale = sorted(Path(ckpt_dir).glob(f".*.pt.*{TEMP_SUFFIX}")) if Path(ckpt_dir).is_dir() else []
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu", mmap: bool = False) -> dict[str, Any]:
    """Load a checkpoint; a missing, truncated or corrupt file gives a one-line UserError. `mmap=True` maps the
    tensors instead of reading them (a cheap check that the file is whole)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist; pass a run directory or a .pt file written by tlstm train")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=False, mmap=mmap or None)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(
            f"checkpoint {path} is corrupt or truncated ({reason}); delete it and resume from "
            f"{path.with_name('best.pt') if path.name != 'best.pt' else 'another run'} or start a new run"
        ) from e
    if not isinstance(obj, dict) or "model" not in obj or "config" not in obj:
        raise UserError(f"{path} is not a tensorlstm checkpoint (no model/config); pass one written by tlstm train")
    obj["config"] = upgrade_config(obj["config"])
    return obj


def run_dir_of(path: str | Path) -> Path:
    """The run directory a path names: itself, or for a .pt file the run holding it (<run>/checkpoints/x.pt)."""
    path = Path(path)
    if path.suffix != ".pt":
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def find_checkpoint(path: str | Path, name: str = "last.pt") -> Path:
    """A checkpoint file from a run directory, its checkpoints/ folder, or the file itself."""
    path = Path(path)
    if path.is_file():
        return path
    for candidate in (path / "checkpoints" / name, path / name):
        if candidate.is_file():
            return candidate
    raise UserError(f"no checkpoint {name} under {path}; pass a run directory of tlstm train or a .pt file")
