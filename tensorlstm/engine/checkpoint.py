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

# config keys (top-level, or dotted) that may change when a run is resumed (how long, how it logs, where and how fast
# it runs; `compress` acts before the first step only, and the trainer checks its source separately); all others
# must match. A dotted key here is also never pinned to the saved value on resume (it changes no number).
RESUMABLE_CHANGES = frozenset({"resume", "logger", "trainer", "device", "threads", "run_name", "compress",
                               "cell.host_memory"})


# How a config saved by an older tensorlstm reads today: each key renamed, removed or added since the first release,
# with the value that makes the code do what it did before the key existed. `upgrade_config` applies this table
# (and only it); `resume_pins` then keeps the run's saved values where today's defaults moved (e.g.
# task.predict_first false -> true), so an old run resumes and trains as it did. One entry per change, oldest first.
RENAMED = {
    "cell.mode": "cell.forward",  # c776ef8: `mode` meant three things; the forward strategy is cell.forward
}
REMOVED = {
    "trainer.tbptt": "5a2a8ee: dropped, the trainer never read it",
}
# (dotted key, which configs have it, value before the key existed: cfg -> value, why). "which" tells the cell and
# task families apart: plain/factorized cells (configs/cell/lstm.yaml and its children) have `format`, tLSTM has `norm`.
ADDED = (
    ("task.reverse_digits", lambda c: c["task"]["name"] == "addition", lambda c: False,
     "d794329: addition wrote the most significant digit first"),
    ("cell.reset_after", lambda c: "format" in c["cell"], lambda c: True,
     "d2038f7: the GRU was torch's form (reset applied after U_h, one extra bias)"),
    ("trainer.stop_at", lambda c: True, lambda c: None, "db8e50a: no early stop"),
    ("trainer.checkpoint_every_s", lambda c: True, lambda c: None, "36d3d78: last.pt at evaluations only"),
    ("trainer.progress_every_s", lambda c: True, lambda c: 30.0,
     "36d3d78: plain progress lines are new; logging only, today's period"),
    ("cell.allow_lookahead", lambda c: "norm" in c["cell"], lambda c: c["cell"]["norm"] == "cn",
     "4836146: norm=cn on a next-step task was not refused yet"),
    ("compress", lambda c: "trainer" in c, lambda c: {"source": None}, "b14794f: every run started from a random init"),
    ("trainer.amp_dtype", lambda c: True, lambda c: "fp16",
     "4368259: trainer.amp was fp16 autocast, CUDA only (fp16 on a CPU is ignored today too)"),
    ("trainer.tf32", lambda c: True, lambda c: False,
     "4368259: strict fp32 matmuls (torch's default); torch's default also let cuDNN use TF32, which only an "
     "nn.LSTM/GRU on an Ampere+ GPU would notice"),
    ("optim.implementation", lambda c: True, lambda c: "default",
     "5899d4e: torch chose the kernel (foreach on CUDA, the per-parameter loop on a CPU)"),
    ("cell.kernel", lambda c: "format" in c["cell"], lambda c: "torch",
     "ed51805: plain dense cells ran torch.nn.LSTM/GRU (the checkpoint holds that module's weights)"),
    ("task.feature_device", lambda c: c["task"]["name"] == "captioning", lambda c: c["device"],
     "2c6640e: captioning extracted its features on the run's device"),
    ("cell.host_memory", lambda c: "cell" in c, lambda c: "system", "c4d0e26: glibc's defaults for freed memory"),
    ("cell.gates", lambda c: "format" in c["cell"] or "norm" in c["cell"], lambda c: "torch",
     "d7ffafa: the fused loops' gate math ran on torch ops (before tensorlstm/native.cpp)"),
    ("cell.denormals", lambda c: "cell" in c, lambda c: "ieee",
     "30f8db4: IEEE gradual underflow (denormal floats kept, not flushed to zero)"),
)
# values whose type changed: (dotted key, old value -> today's)
RETYPED = (
    ("task.prefetch", {True: 1, False: 0}, "d794329: a bool (one background thread) became a thread count"),
)


def _lookup(cfg: dict, dotted: str):
    """(parent dict, last key) of a dotted key, or (None, key) when a parent is missing."""
    *parents, last = dotted.split(".")
    node = cfg
    for k in parents:
        node = node.get(k) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), last


def upgrade_config(cfg: dict) -> dict:
    """A config saved before keys were renamed, removed or added (RENAMED, REMOVED, ADDED, RETYPED), in today's
    terms, with the values that reproduce the behaviour it was trained with; a copy, the input is unchanged."""
    import copy

    cfg = copy.deepcopy(cfg)
    for old, new in RENAMED.items():
        parent, key = _lookup(cfg, old)
        new_parent, new_key = _lookup(cfg, new)
        if parent is not None and key in parent and new_parent is parent and new_key not in parent:
            parent[new_key] = parent.pop(key)
    for dotted in REMOVED:
        parent, key = _lookup(cfg, dotted)
        if parent is not None:
            parent.pop(key, None)
    for dotted, applies, before, _why in ADDED:
        parent, key = _lookup(cfg, dotted)
        if parent is not None and key not in parent:
            try:
                if not applies(cfg):
                    continue
            except (KeyError, TypeError):  # a partial config (a test's, or a group without the marker key)
                continue
            parent[key] = before(cfg)
    for dotted, mapping, _why in RETYPED:
        parent, key = _lookup(cfg, dotted)
        if parent is not None and isinstance(parent.get(key), bool):
            parent[key] = mapping[parent[key]]
    return cfg


def leaf_values(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every non-dict entry."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        if isinstance(v, dict) and v:
            out.update(leaf_values(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# top-level keys a resumed run never takes from its saved config: how it was asked to resume, a name derived from
# the task and cell, and `compress` (acts before the first step only)
NOT_PINNED = ("resume", "run_name", "compress", "hydra")


def resume_pins(saved: dict, today: dict, named: set[str]) -> dict[str, Any]:
    """The saved run's values (after `upgrade_config`) of the keys where today's composition differs, other than
    the keys the user names now (`named`: dotted keys or prefixes of them) and NOT_PINNED: what keeps an old run
    training as it did when a default moved since. Keys today's config lacks are left to `check_resumable`."""
    old, new = leaf_values(upgrade_config(saved)), leaf_values(today)
    pins = {}
    for key, value in old.items():
        if key not in new or new[key] == value or key.split(".")[0] in NOT_PINNED or key in RESUMABLE_CHANGES:
            continue
        if any(key == n or key.startswith(n + ".") for n in named):
            continue
        pins[key] = value
    return pins


def config_differences(old: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between two resolved configs, ignoring RESUMABLE_CHANGES."""
    old, new = upgrade_config(old), upgrade_config(new)
    out: list[str] = []

    def walk(a, b, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if (f"{path}.{k}" if path else k) in RESUMABLE_CHANGES:
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
