"""Build hook: ship the top-level `configs/` (the one folder users edit) inside the package as `tensorlstm/conf/`.

Everything else about the package is in pyproject.toml. The copy happens when a wheel is built (from the source
tree or from an sdist, which carries `configs/` via MANIFEST.in), so the installed `tlstm` finds its configs from
any working directory. A source checkout keeps reading `configs/` directly (see tensorlstm/paths.py).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithConfigs(build_py):
    def run(self):
        super().run()
        src = Path(__file__).resolve().parent / "configs"
        if not src.is_dir():
            raise FileNotFoundError(f"{src}: the configs/ folder is missing from the source tree")
        dst = Path(self.build_lib) / "tensorlstm" / "conf"
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithConfigs})
