"""The defaults of one config group entry, read from the YAML (the only place defaults live).

`group_config("cell", "tt")` is configs/cell/tt.yaml as a plain dict, with its same-group defaults list followed
(tt.yaml extends lstm.yaml) and `${key}` interpolations resolved against the top-level keys of train.yaml (e.g.
`rank: ${rank}`). `tlstm train` composes the same files with Hydra; this is for code that builds a model
without the CLI: tests, the bench, DRAW's decoder given by name. Overrides must name existing keys.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from tensorlstm.errors import UserError
from tensorlstm.paths import config_dir


def _load(path: Path):
    from omegaconf import OmegaConf

    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        raise UserError(f"no config {path}; choose one of: {names}")
    return OmegaConf.load(path)


@cache
def _group_tree(root: Path, group: str, name: str):
    """The entry with its defaults list applied (same-group parents only), interpolations unresolved."""
    from omegaconf import OmegaConf

    raw = _load(root / group / f"{name}.yaml")
    parents = list(raw.pop("defaults", []))
    parts, self_seen = [], False
    for entry in parents:
        if entry == "_self_":
            parts.append(raw)
            self_seen = True
        elif isinstance(entry, str):
            parts.append(_group_tree(root, group, entry))
        else:
            raise ValueError(f"{group}/{name}.yaml: only same-group defaults are supported here, got {entry!r}")
    if not self_seen:
        parts.append(raw)
    return OmegaConf.merge(*parts) if parts else raw


def group_config(group: str, name: str, /, **overrides) -> dict:
    """configs/<group>/<name>.yaml as a resolved plain dict, with `overrides` (existing keys only) applied."""
    from omegaconf import OmegaConf

    root = config_dir()
    entry = _group_tree(root, group, name).copy()
    unknown = sorted(set(overrides) - set(entry.keys()))
    if unknown:
        raise KeyError(f"{group}/{name}.yaml has no key(s) {', '.join(unknown)}")
    top = {k: v for k, v in OmegaConf.to_container(_load(root / "train.yaml")).items()
           if k != "defaults" and not isinstance(v, (dict, list)) and not (isinstance(v, str) and "${" in v)}
    tree = OmegaConf.create({**top, group: entry})
    for key, value in overrides.items():
        tree[group][key] = value
    return OmegaConf.to_container(tree[group], resolve=True)


def cell_config(name: str, /, **overrides) -> dict:
    """The cell config `cell=<name>` composes to, with overrides: what `build_cell` expects."""
    return group_config("cell", name, **overrides)
