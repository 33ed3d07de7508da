"""Case 9: "any static host can serve the feed". Published files are world-readable (0644, folders
0755) whatever the publisher's umask, writes stay atomic, secrets stay private; a web server
running as another user (`runuser -u nobody -- python3 -m http.server`) serves the feed and a
board on the MicroPython unix port updates from it."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import free_port, run_cli

from sim.feedkit import Board, Keys, image, update_script

ROOT = Path(__file__).resolve().parent.parent
BOARD = "esp32-generic-4mb"


def mpota(*args: str, cwd: Path) -> None:
    """The CLI as a careful operator runs it: umask 077 (files private unless the tool says so)."""
    r = run_cli(*args, cwd=cwd, timeout=120, preexec_fn=lambda: os.umask(0o077))
    assert r.returncode == 0, r.stderr


def modes(root: Path) -> dict[str, int]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = stat.S_IMODE(p.lstat().st_mode)
    return out


@pytest.fixture()
def www() -> Iterator[Path]:
    # stands for /var/www: a folder other users may enter (pytest's own tmp folders are 0700)
    base = Path(tempfile.mkdtemp(prefix="mpota-www-"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_published_files_are_world_readable_and_secrets_are_not(www: Path, tmp_path: Path) -> None:
    work = tmp_path
    mpota("keygen", "rel.pem", "--role", "release", cwd=work)
    mpota("keygen", "roll.pem", "--role", "rollout", cwd=work)
    mpota("fleet", "secret", "fleet.secret", cwd=work)
    (work / "app.bin").write_bytes(image("1.1.0"))
    mpota("sign", "app.bin", "--key", "rel.pem", "--board", BOARD, "--version", "1.1.0", "--out", "rel",
          "--compress", cwd=work)
    feed = www / "feed"
    mpota("feed", "publish", "rel", "--feed", str(feed), "--channel", "stable", "--key", "roll.pem", cwd=work)
    mpota("partitions", "build", BOARD, "--out", str(www / "out" / "partitions.bin"), cwd=work)
    published = {k: v for k, v in modes(feed).items() if not Path(k).name.startswith(".")}
    assert published, "nothing published?"
    for rel, mode in published.items():
        want = 0o755 if (feed / rel).is_dir() else 0o644
        assert mode == want, f"{rel}: {oct(mode)}"
    assert {"channels", "releases", f"releases/{BOARD}/1.1.0/manifest.json"} <= set(published)
    assert stat.S_IMODE((www / "out" / "partitions.bin").stat().st_mode) == 0o644
    assert stat.S_IMODE((www / "out").stat().st_mode) == 0o755
    assert not [n for n in os.listdir(feed / "channels" / BOARD) if n.endswith(".tmp")]  # no leftovers
    # what must stay private does
    for secret in ("rel.pem", "roll.pem", "fleet.secret"):
        assert stat.S_IMODE((work / secret).stat().st_mode) == 0o600, secret
    assert stat.S_IMODE((work / "rel.pem.pub").stat().st_mode) == 0o644



@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("runuser"),
                    reason="serving as another user needs root (runuser)")
def test_a_web_server_running_as_nobody_serves_the_feed_to_a_board(www: Path, tmp_path: Path) -> None:
    keys = Keys(tmp_path / "keys")
    feed = www / "feed"
    (tmp_path / "app.bin").write_bytes(image("1.1.0"))
    mpota("sign", "app.bin", "--key", str(keys.paths["release"]), "--board", BOARD, "--version", "1.1.0",
          "--out", "rel", cwd=tmp_path)
    mpota("feed", "publish", "rel", "--feed", str(feed), "--channel", "stable", "--key",
          str(keys.paths["rollout"]), cwd=tmp_path)
    port = free_port()
    server = subprocess.Popen(["runuser", "-u", "nobody", "--", "/usr/bin/python3", "-m", "http.server",
                               "--bind", "127.0.0.1", "--directory", str(feed), str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline and server.poll() is None, "http.server did not start"
                time.sleep(0.1)
        cfg = {"device_id": "perm-1", "board": BOARD, "group": "general", "channel": "stable",
               "feed_url": f"http://127.0.0.1:{port}/", "keys": keys.config_keys(), "timeout_ms": 5000,
               "retries": 1, "backoff_ms": 20, "max_backoff_ms": 50}
        board = Board(tmp_path / "sim", image("1.0.0"), cfg, "mpy")
        out = board.run(update_script(), "micropython")
        assert out.returncode == 0, out.stdout + out.stderr
        res = out.result()
        assert res["outcome"] == "ok" and res["version"] == "1.1.0", (res, out.stdout)
    finally:
        server.terminate()
        server.wait(10)
    assert server.stderr is not None
    log = server.stderr.read()
    assert '"GET /channels/' in log and " 200 " in log and " 404 " not in log, log
