"""README.md runs as written: every ```sh block of its usage sections, in order, in an empty folder.

The blocks are taken from the README itself, so the two cannot drift. A block preceded by
``<!-- readme-test: skip (why) -->`` is not run (installing, hardware); the marker
``<!-- readme-test: register boards ... -->`` stands where `mpota deploy` would have registered
boards, and the test registers a few in its place. A command line ending in `&` is what the README
runs in its own terminal: the script starts it in the background and waits for "serving on", as a
person would. The script runs in a network namespace of its own, so the README's port 8080 is free.
The only input the README assumes is the firmware: two genuine app images under build/.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from host_tools.imagebuild import build_app_image

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MARKER = re.compile(r"<!--\s*readme-test:\s*(\w+)")
BLOCK = re.compile(r"^```sh\n(.*?)^```", re.S | re.M)
BOARDS = (("canary-1", "canary"), ("pilot-1", "pilot"), ("pilot-2", "pilot"), ("field-1", "general"))

# Bring up loopback inside the new network namespace (no iproute2 needed), then run the script.
NETNS_RUNNER = """
import fcntl, os, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sH14s", fcntl.ioctl(s, 0x8913, struct.pack("16sH14s", b"lo", 0, b"")))[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sH14s", b"lo", flags | 1, b""))
os.execvp("bash", ["bash", sys.argv[1]])
"""

REGISTER = """{py} - <<'PYEOF'
from host_tools.deploy import register_device
from host_tools.fleet import load_secret
for device_id, group in {boards!r}:
    register_device("http://127.0.0.1:8080", load_secret("keys/fleet.secret"), device_id,
                    "esp32-generic-4mb", group)
print("registered {n} boards")
PYEOF
"""


def readme_blocks(text: str) -> list[tuple[str, str]]:
    """(marker, block) in document order: a marker right before a ```sh block applies to it; a marker
    standing alone comes as (marker, "")."""
    items = sorted([(m.start(), m.end(), "marker", m.group(1)) for m in MARKER.finditer(text)]
                   + [(m.start(), m.end(), "block", m.group(1)) for m in BLOCK.finditer(text)])
    out: list[tuple[str, str]] = []
    pending: tuple[int, str] | None = None  # (end of the marker comment, word)
    for start, end, kind, value in items:
        if kind == "marker":
            if pending:
                out.append((pending[1], ""))
            close = text.find("-->", end)
            pending = (close + 3, value)
        elif pending and not text[pending[0]:start].strip():
            out.append((pending[1], value))
            pending = None
        else:
            if pending:
                out.append((pending[1], ""))
                pending = None
            out.append(("", value))
    if pending:
        out.append((pending[1], ""))
    return out


def readme_script(text: str) -> tuple[str, list[str]]:
    """The bash script the README's blocks make, and the commands it runs (for the assertions)."""
    lines = ["set -euo pipefail", "BG=", "trap '[ -z \"$BG\" ] || kill $BG 2>/dev/null || true' EXIT"]
    commands: list[str] = []
    for marker, block in readme_blocks(text):
        if marker == "skip":
            continue
        if marker == "register":
            lines.append(REGISTER.format(py=shlex.quote(sys.executable), boards=BOARDS, n=len(BOARDS)))
            continue
        assert marker == "", f"unknown readme-test marker {marker!r}"
        for line in block.replace("\\\n", " ").splitlines():
            bare = line.split("  #")[0].rstrip()
            if bare.startswith("mpota "):
                commands.append(bare)
            if bare.endswith("&") and not bare.endswith("&&"):
                lines.append(f"{bare[:-1]} > bg.log 2>&1 & BG=$!")
                lines.append("for _ in $(seq 300); do grep -q 'serving on' bg.log && break; sleep 0.1; done")
                lines.append("grep -q 'serving on' bg.log || { cat bg.log; exit 1; }")
            else:
                lines.append(line)
    return "\n".join(lines) + "\n", commands


def test_readme_blocks_are_found() -> None:
    text = (REPO / "README.md").read_text()
    _, commands = readme_script(text)
    # the usage sections' key steps are there and are run, not skipped
    for needed in ("mpota keygen", "mpota sign", "mpota feed add", "mpota serve", "mpota rollout start",
                   "mpota rollout pause", "mpota rollout rollback", "mpota devices"):
        assert any(c.startswith(needed) for c in commands), needed
    assert not any(c.startswith(("mpota flash", "mpota deploy")) for c in commands)  # hardware: skipped


def test_readme_runs_as_written(tmp_path: Path) -> None:
    script, _ = readme_script((REPO / "README.md").read_text())
    work = tmp_path / "fresh"
    (work / "build").mkdir(parents=True)
    for version in ("1.3.0", "1.4.0"):  # two builds of your firmware, made like MicroPython's own:
        (work / "build" / f"app-{version}.bin").write_bytes(  # no version in the app description
            build_app_image("esp32", "", "", 0, code_size=0x8000, build=version))
    (tmp_path / "readme.sh").write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPOTA_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(["unshare", "-rn", sys.executable, "-c", NETNS_RUNNER, str(tmp_path / "readme.sh")],
                          cwd=work, env=env, capture_output=True, text=True, timeout=240)
    log = (work / "bg.log").read_text() if (work / "bg.log").exists() else ""
    assert proc.returncode == 0, f"README script failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{log}"
    out = proc.stdout
    assert "registered 4 boards" in out
    assert "r-1.4.0" in out
    assert "4 device(s)" in out
    for path in ("keys/release.pem", "keys/rollout.pem.pub", "releases/1.3.0/manifest.json",
                 "feed/releases/esp32-generic-4mb/1.4.0/manifest.json",
                 "feed/releases/esp32-generic-4mb/1.4.1/manifest.json",
                 "feed/channels/esp32-generic-4mb/stable.json"):
        assert (work / path).is_file(), path
    assert oct((work / "keys" / "release.pem").stat().st_mode & 0o777) == "0o600"
