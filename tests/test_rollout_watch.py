"""`mpota rollout status` for scripts and people: exit status by state, --wait, --watch, and the
server's log line for every gate decision (with its numbers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from host_tools.server.auth import operator_token
from sim.serverkit import HttpClient, ReportingDevice, ServerThread, operator_call, register, rollout_server

BOARD = "esp32-generic-4mb"
SECRET = b"\x57" * 32
OP = operator_token(SECRET)
MPOTA = str(Path(sys.executable).with_name("mpota"))
PLAN = {"soak": 0, "stages": [{"name": "canary"}, {"name": "pilot", "min_finished": 2},
                              {"name": "general", "batch_size_percentage": 50}]}


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[ServerThread, list[ReportingDevice]]]:
    with rollout_server(tmp_path, SECRET) as srv:
        devices = register(srv.url, SECRET,
                           [("c1", "canary"), ("p1", "pilot"), ("p2", "pilot"), ("g1", "general")])
        status, data = operator_call(srv.url, SECRET, "POST", "/v1/rollouts", {
            "board": BOARD, "channel": "stable", "version": "1.1.0", "plan": PLAN, "id": "r-w"})
        assert status == 201, data
        yield srv, devices
        for d in devices:
            d.close()


def _until(done: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _cli(srv: ServerThread, *args: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MPOTA_")}
    return subprocess.Popen([MPOTA, "rollout", "status", "r-w", "--server", srv.url, "--token", OP, *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _step(srv: ServerThread) -> str:
    c = HttpClient(srv.url)
    _, _, data = c.request("GET", "/v1/rollouts/r-w", headers={"Authorization": f"Bearer {OP}"})
    c.close()
    return str(json.loads(data)["step"]["stage"])


def test_wait_blocks_until_the_gate_pauses_and_exits_3(served: tuple[ServerThread, list[ReportingDevice]],
                                                        capfd: pytest.CaptureFixture[str]) -> None:
    srv, devices = served
    assert _cli(srv).wait(30) == 0  # active: 0
    waiting = _cli(srv, "--wait", "--interval", "0.1")
    time.sleep(0.5)
    assert waiting.poll() is None  # still active: it blocks
    c1, p1, p2, _ = devices
    assert all(code == 200 for code in c1.update("r-w", "1.1.0", "confirmed"))
    deadline = time.monotonic() + 20
    while _step(srv) != "pilot":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    for d in (p1, p2):
        assert all(code == 200 for code in d.update("r-w", "1.1.0", "rolled_back"))
    out, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 3, (out, err)
    assert "PAUSED" in out and "pilot: failure rate 100.0% > 20%" in out
    assert "failure = failed + rolled back + timed out" in out  # the table says what its rates count
    assert "limits (failure/rollback/health): canary 20/20/20%, pilot 20/20/20%" in out
    assert _cli(srv).wait(30) == 3  # paused: 3, without --wait too
    # the server said each decision on its log, the pause with the numbers behind it
    log = capfd.readouterr().err
    assert "rollout r-w: advance: step 2/4: canary passed" in log
    pause = next(line for line in log.splitlines() if "rollout r-w: auto-pause: pilot: failure rate" in line)
    assert '"rolled_back": 2' in pause
    # aborted: 4
    c = HttpClient(srv.url)
    assert c.request("POST", "/v1/rollouts/r-w/abort", b"{}", {"Authorization": f"Bearer {OP}"})[0] == 200
    c.close()
    assert _cli(srv).wait(30) == 4


def test_watch_redraws_until_the_rollout_ends(served: tuple[ServerThread, list[ReportingDevice]]) -> None:
    srv, devices = served
    watching = _cli(srv, "--watch", "--interval", "0.1")
    stdout = watching.stdout
    assert stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(stdout.readline, "")), daemon=True)
    reader.start()
    _until(lambda: "ACTIVE" in "".join(lines))  # the first frame, however slow the CLI starts
    assert watching.poll() is None
    frames_before = "".join(lines).count("--- ")
    assert all(code == 200 for code in devices[0].update("r-w", "1.1.0", "confirmed"))
    _until(lambda: "".join(lines).count("--- ") > frames_before)  # redrawn for the confirmed report
    c = HttpClient(srv.url)
    assert c.request("POST", "/v1/rollouts/r-w/abort", b"{}", {"Authorization": f"Bearer {OP}"})[0] == 200
    c.close()
    watching.wait(30)
    reader.join(10)
    out = "".join(lines)
    assert watching.returncode == 4
    frames = out.split("--- ")
    assert len(frames) >= 3  # a new table each time something changed (not a terminal: no redraw codes)
    assert "ACTIVE" in frames[1] and "ABORTED" in frames[-1] and "\x1b[" not in out


def test_gives_up_after_the_timeout(served: tuple[ServerThread, list[ReportingDevice]]) -> None:
    srv, _ = served
    proc = _cli(srv, "--wait", "--interval", "0.1", "--wait-timeout", "0.5")
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 5 and "still active after 0.5 s" in err
