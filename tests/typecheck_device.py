"""Type-check device/mpota against MicroPython's own stubs (micropython-esp32-stubs + stdlib stubs).

The stub wheels install loose .pyi files into site-packages, which mypy will not read from
there; this gathers them (symlinks) into .venv/mpy-typings and points mypy at it:
the esp32/machine/micropython stubs on MYPYPATH and MicroPython's stdlib as the typeshed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def gather(dest: Path) -> None:
    site = Path(sysconfig.get_paths()["purelib"])
    if dest.exists():
        subprocess.run(["rm", "-rf", str(dest)], check=True)
    for dist in ("micropython-esp32-stubs", "micropython-stdlib-stubs"):
        for f in metadata.files(dist) or []:
            rel = str(f)
            if not rel.endswith(".pyi") and not rel.endswith("VERSIONS"):
                continue
            target = dest / ("typeshed" if rel.startswith("stdlib/") else "stubs") / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                os.symlink(site / rel, target)


    # mypy insists on finding mypy_extensions in any custom typeshed: lend it its own copy.
    import mypy

    ext = Path(mypy.__file__).parent / "typeshed" / "stubs" / "mypy-extensions"
    (dest / "typeshed" / "stubs").mkdir(parents=True, exist_ok=True)
    os.symlink(ext, dest / "typeshed" / "stubs" / "mypy-extensions")


def main() -> int:
    dest = ROOT / ".venv" / "mpy-typings"
    gather(dest)
    env = dict(os.environ, MYPYPATH=f"{ROOT / 'device'}:{dest / 'stubs'}")
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "device" / "mypy.ini"),
           "--custom-typeshed-dir", str(dest / "typeshed")]
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
