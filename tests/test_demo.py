"""Smoke test of the demo machinery (sim/demo.py), not the whole demo: the first steps run the real
CLI (keygen, fleet secret, sign, feed publish, feed verify, serve), a small CPython fleet polls the
server, and stopping the demo stops the server it started. The whole story is `make demo` (and the
slow test at the end)."""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from sim.demo import BOARD, Demo, main


@contextmanager
def served_demo(work: Path, boards: int) -> Iterator[Demo]:
    """A CPython demo through its first steps (keys, images, signed feed, server), stopped after."""
    work.mkdir()
    demo = Demo(work, boards, "cpython", workers=4)
    try:
        demo.keys_and_secret()
        demo.images()
        demo.sign_and_publish()
        demo.serve()
        yield demo
    finally:
        demo.stop()


def test_demo_first_steps_and_cleanup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    work = tmp_path / "demo-work"
    with served_demo(work, 15) as demo:
        server = demo.procs[0]
        assert server.poll() is None
        # the server serves the feed the demo published: v1.2.0 staged behind a paused channel
        url = f"{demo.server_url}/channels/{BOARD}/stable.json"
        with urllib.request.urlopen(url, timeout=10) as r:
            env = json.loads(r.read())
        assert env["payloadType"] == "application/vnd.mpota.channel+json"
        doc = json.loads(base64.b64decode(env["payload"]))
        assert doc["release"]["version"] == "1.2.0" and doc["rollout"]["state"] == "paused"
        for v in ("1.0.0", "1.1.0", "1.2.0"):
            assert (work / "feed" / "releases" / BOARD / v / "manifest.json").is_file()
        # v1.1.0 also goes out as a patch from v1.0.0, much smaller than its image
        patch = next((work / "feed" / "releases" / BOARD / "1.1.0").glob("delta-from-1.0.0.patch*"))
        image = next((work / "feed" / "releases" / BOARD / "1.1.0").glob("firmware.bin*"))
        assert patch.stat().st_size < image.stat().st_size // 4
        demo.start_fleet()
        assert demo.failures == []
        assert demo.fleet is not None and len(demo.fleet.devices) == 15
        assert set(demo.fleet.inventory()) == set(demo.fleet.by_id)
    assert server.poll() is not None, "the demo left its server running"
    with pytest.raises(OSError):
        urllib.request.urlopen(demo.server_url + "/", timeout=2)
    out = capsys.readouterr().out
    for n, title in enumerate(("Keys", "Firmware", "Sign", "Start the rollout server", "A fleet"), 1):
        assert f"[{n}] {title}" in out
    assert "$ mpota keygen" in out and "$ mpota serve" in out and "ok: all 15 boards run v1.0.0" in out


def test_expectations_are_collected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo = Demo(tmp_path, 15, "cpython", workers=2)
    assert demo.expect(True, "fine")
    assert not demo.expect(False, "the pilot gate tripped", "stage canary")
    assert demo.failures == ["the pilot gate tripped (stage canary)"]
    assert "FAILED: the pilot gate tripped (stage canary)" in capsys.readouterr().out


def test_demo_refuses_a_fleet_too_small_for_its_groups(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--boards", "4"])
    assert exc.value.code == 2
    assert "--boards must be at least" in capsys.readouterr().err


@pytest.mark.slow
def test_the_whole_story_with_a_small_cpython_fleet(tmp_path: Path) -> None:
    assert main(["--boards", "20", "--interpreter", "cpython", "--workdir", str(tmp_path / "w")]) == 0


def test_demo_app_files_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # the application-files stage on its own: an app-only release confirmed on every board, then a
    # firmware + app release whose app fails its check, rolled back together (checked by the demo)
    with served_demo(tmp_path / "demo-work", 12) as demo:
        demo.app_bundles(n=3)
    out = capsys.readouterr().out
    assert demo.failures == [], out[-3000:]
    assert "ok: all 3 boards confirmed app v1.0.1" in out
    assert "ok: all 3 boards flashed v1.1.1 and its app, failed the app's health check" in out
