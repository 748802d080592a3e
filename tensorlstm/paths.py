"""Where the Hydra configs live.

One folder holds them: `configs/` at the top of the source tree, the folder users edit. A wheel or an sdist
install carries a copy of it inside the package as `tensorlstm/conf/` (setup.py copies it at build time), so
an installed `tlstm` works from any working directory. `TLSTM_CONFIG_DIR=<dir>` points at a folder of your
own (e.g. a copy of the packaged one) and wins over both.
"""

from __future__ import annotations

import os
from pathlib import Path

from tensorlstm.errors import UserError

_PACKAGE = Path(__file__).resolve().parent


def source_root() -> Path:
    """The folder above the package: a source checkout's top when run from one (an editable install), else
    wherever the package was installed (site-packages)."""
    return _PACKAGE.parent


def config_dir() -> Path:
    """The config folder in use: $TLSTM_CONFIG_DIR, else the source checkout's configs/, else the packaged copy."""
    env = os.environ.get("TLSTM_CONFIG_DIR")
    if env:
        return Path(env).expanduser().resolve()
    checkout = source_root() / "configs"
    if (checkout / "train.yaml").is_file():
        return checkout
    return _PACKAGE / "conf"


def check_config_dir(path: Path) -> None:
    """A one-line error when the config folder has no train.yaml (a wrong TLSTM_CONFIG_DIR, a broken install)."""
    if not (path / "train.yaml").is_file():
        hint = ("TLSTM_CONFIG_DIR points there; point it at a copy of the package's configs/ or unset it"
                if os.environ.get("TLSTM_CONFIG_DIR") else "reinstall the package (pip install <path or git URL>)")
        raise UserError(f"config folder {path} has no train.yaml: {hint}")


SUBDIR_MAX = 120  # bytes of a sweep job's folder name kept readable; a file name may hold 255 bytes


def sweep_subdir(overrides: str) -> str:
    """A sweep job's folder name from Hydra's override_dirname: '/' in a value (a path) becomes '_' so the job
    gets one folder, not a nest of them, and a name longer than SUBDIR_MAX is cut and ends in a hash of the
    whole, so long override lists neither overflow the file-name limit nor collide (the full list stays in
    the job's .hydra/overrides.yaml)."""
    import hashlib

    name = overrides.replace(os.sep, "_").encode()
    if len(name) <= SUBDIR_MAX:
        return name.decode()
    digest = hashlib.sha1(overrides.encode()).hexdigest()[:10]
    return f"{name[:SUBDIR_MAX - 11].decode(errors='ignore')}-{digest}"  # never half a UTF-8 character


def register_resolvers() -> None:
    """The `${tlstm_subdir:...}` resolver configs/hydra/default.yaml names a sweep job's folder with."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("tlstm_subdir", sweep_subdir, replace=True)
