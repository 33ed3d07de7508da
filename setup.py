"""Bundles the board definitions and the device package into the wheel (pyproject.toml has the rest).

`pip install .`, `pipx install .` and a wheel built from an sdist get host_tools/_data/ with
boards/, partitions.csv and device/ (the MicroPython package `mpota deploy` copies to a board);
host_tools/bundled.py finds them there, or in the source tree for an editable install.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# (source, glob) pairs copied below host_tools/_data/, keeping their paths
BUNDLED = (("boards", "*.json"), ("boards", "*.csv"), (".", "partitions.csv"),
           ("device", "package.json"), ("device", "manifest.py"), ("device/mpota", "*.py"),
           ("device/examples", "*.py"))


class BuildWithData(build_py):
    def run(self) -> None:
        super().run()
        out = Path(self.build_lib) / "host_tools" / "_data"
        for folder, pattern in BUNDLED:
            found = sorted((ROOT / folder).glob(pattern))
            if not found:
                raise SystemExit(f"setup.py: nothing matches {folder}/{pattern}")
            for src in found:
                dest = out / src.relative_to(ROOT)
                dest.parent.mkdir(parents=True, exist_ok=True)
                self.copy_file(str(src), str(dest))


setup(cmdclass={"build_py": BuildWithData})
