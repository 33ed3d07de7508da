"""Staged rollouts end to end over real HTTP on loopback: simulated devices read the signed channel
document from the server, decide eligibility like a board does, and report; the server advances,
pauses itself or completes, re-signing the channel document with the real rollout key each time."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from host_tools.channel import ChannelDoc
from host_tools.keys import PublicKey, load_public_key
from host_tools.server.auth import operator_token
from host_tools.server.bucket import is_eligible
from sim.serverkit import (
    HttpClient,
    ReportingDevice,
    ServerThread,
    fetch_channel,
    operator_call,
    register,
    rollout_server,
)

BOARD = "esp32-generic-4mb"
SECRET = b"\x42" * 32
FLEET = [("canary", 2), ("internal", 2), ("pilot", 4), ("general", 24)]


@dataclass
class Env:
    root: Path
    feed: Path
    key: Path
    pub: PublicKey
    srv: ServerThread
    devices: list[ReportingDevice]
    docs: list[ChannelDoc]

    def op(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return operator_call(self.srv.url, SECRET, method, path, body)

    def channel(self) -> ChannelDoc:
        """The channel document as a device gets it: over HTTP, signature checked with the real key."""
        doc = fetch_channel(self.srv.url, self.pub, BOARD)
        if not self.docs or self.docs[-1].seq != doc.seq:
            assert not self.docs or doc.seq > self.docs[-1].seq  # seq only grows
            self.docs.append(doc)
        return doc

    def status(self, rid: str) -> dict[str, Any]:
        code, st = self.op("GET", f"/v1/rollouts/{rid}")
        assert code == 200, st
        return dict(st)

    def drive(self, rid: str, outcome: Callable[[ReportingDevice], str], until: set[str],
              timeout: float = 20.0) -> dict[str, Any]:
        """Devices act on each channel document until the rollout state is in `until`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            doc = self.channel()
            ro = doc.rollout.to_dict()
            if ro["state"] == "active" and doc.release.version == "1.1.0":
                for d in self.devices:
                    if d.version != "1.1.0" and not getattr(d, "tried", False) \
                            and is_eligible(ro, d.device_id, d.group):
                        d.tried = True  # type: ignore[attr-defined]
                        assert all(code == 200 for code in d.update(rid, "1.1.0", outcome(d)))
            st = self.status(rid)
            if st["rollout"]["state"] in until:
                return st
            time.sleep(0.05)
        raise AssertionError(f"rollout did not reach {until}: {self.status(rid)['next']}")


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[Env]:
    with rollout_server(tmp_path, SECRET, tick_s=0.05) as srv:
        devices = register(srv.url, SECRET, [(f"{g}-{i:02d}", g) for g, n in FLEET for i in range(n)], True)
        key = tmp_path / "rollout.pem"
        e = Env(tmp_path, tmp_path / "feed", key, load_public_key(str(key) + ".pub"), srv, devices, [])
        yield e
        for d in devices:
            d.close()


PLAN = {"soak": 0, "min_finished": 1, "in_progress_timeout": "30m",
        "stages": [{"name": "canary"}, {"name": "internal"}, {"name": "pilot", "min_finished": 2},
                   {"name": "general", "batch_size_percentage": 50}]}


def _start(env: Env, plan: dict[str, Any] = PLAN, rid: str = "r-good") -> dict[str, Any]:
    code, st = env.op("POST", "/v1/rollouts", {"board": BOARD, "channel": "stable", "version": "1.1.0",
                                               "plan": plan, "id": rid})
    assert code == 201, st
    return dict(st)


def test_rollout_through_every_stage_to_100_percent(env: Env) -> None:
    st = _start(env)
    assert st["channel_rollout"] == {"id": "r-good", "state": "active", "groups": ["canary"],
                                     "percentage": 0.0, "window": None}
    st = env.drive("r-good", lambda d: "confirmed", {"completed", "paused"})
    assert st["rollout"]["state"] == "completed", st["rollout"]
    assert all(d.version == "1.1.0" for d in env.devices)
    # every step was published, in order, each re-signed with a higher seq
    steps = [(d.release.version, d.rollout.groups, d.rollout.percentage) for d in env.docs]
    assert ("1.1.0", ["canary"], 0.0) in steps
    assert steps[-1] == ("1.1.0", ["canary", "internal", "pilot"], 100.0)
    stages = [(d.rollout.groups[-1], d.rollout.percentage) for d in env.docs if d.release.version == "1.1.0"]
    assert stages == [("canary", 0.0), ("internal", 0.0), ("pilot", 0.0), ("pilot", 50.0), ("pilot", 100.0)]
    counts = {s["name"]: (s["counts"]["targeted"], s["counts"]["confirmed"], s["verdict"])
              for s in st["stages"]}
    assert counts == {"canary": (2, 2, "pass"), "internal": (2, 2, "pass"), "pilot": (4, 4, "pass"),
                      "general": (24, 24, "pass")}
    kinds = [h["kind"] for h in st["history"]]
    assert kinds == ["start"] + ["ready", "advance"] * 4 + ["ready", "complete"]
    # the inventory shows the new version everywhere
    _, listing = env.op("GET", "/v1/devices")
    assert {d["version"] for d in listing["devices"]} == {"1.1.0"}
    assert {d["last_event"] for d in listing["devices"]} == {"confirmed"}


def test_bad_release_trips_the_pilot_gate_and_pauses_before_general(env: Env) -> None:
    _start(env, rid="r-bad")
    bad = {"pilot-00", "pilot-01"}
    st = env.drive("r-bad", lambda d: "rolled_back" if d.device_id in bad else "confirmed",
                   {"paused", "completed"})
    r = st["rollout"]
    assert r["state"] == "paused"
    # The gate is judged on a timer and after each report, so it may trip once the two bad pilots
    # have finished (2 of 2) or after one or two good ones too: the recorded numbers must agree.
    m = re.fullmatch(r"pilot: failure rate ([\d.]+)% > 20% \(2 of ([234]) finished devices\)", r["reason"])
    assert m, r["reason"]
    finished = int(m.group(2))
    assert float(m.group(1)) == round(200 / finished, 1)
    assert r["numbers"]["counts"]["rolled_back"] == 2
    assert r["numbers"]["counts"]["confirmed"] == finished - 2
    pilot = next(s for s in st["stages"] if s["name"] == "pilot")
    assert pilot["verdict"] == "fail" and pilot["rollback_rate"] == 50.0
    assert pilot["health_check_failure_rate"] == 50.0
    doc = env.channel()
    assert doc.rollout.state == "paused" and doc.rollout.groups == ["canary", "internal", "pilot"]
    assert doc.rollout.percentage == 0.0  # general never started
    assert all(d.version == "1.0.0" for d in env.devices if d.group == "general")
    assert st["history"][-1]["kind"] == "auto-pause" and st["history"][-1]["numbers"]["name"] == "pilot"
    # the console shows it too (to the operator)
    c = HttpClient(env.srv.url)
    _, _, page = c.request("GET", "/", headers={"Authorization": f"Bearer {operator_token(SECRET)}"})
    c.close()
    assert b"paused" in page and html.escape(r["reason"]).encode() in page
    # abort: devices get "halted"
    code, st = env.op("POST", "/v1/rollouts/r-bad/abort", {"reason": "bad build"})
    assert code == 200 and st["rollout"]["state"] == "aborted" and env.channel().rollout.state == "halted"
    assert env.op("POST", "/v1/rollouts/r-bad/resume")[0] == 409


def test_a_device_that_never_finishes_times_out_and_pauses(env: Env) -> None:
    plan = dict(PLAN, in_progress_timeout="1s")
    _start(env, plan, rid="r-slow")
    st = env.drive("r-slow", lambda d: "stall", {"paused", "completed"}, timeout=15)
    assert st["rollout"]["state"] == "paused"
    canary = st["stages"][0]
    assert canary["counts"]["timed_out"] == 2 and canary["counts"]["in_progress"] == 0
    assert st["rollout"]["reason"].startswith("canary: failure rate 100.0% > 20%")
    assert env.channel().rollout.state == "paused"


def test_operator_pause_resume_and_window(env: Env) -> None:
    plan = dict(PLAN, soak="1h", window={"start": "01:00", "end": "05:00"})
    _start(env, plan, rid="r-ops")
    doc = env.channel()
    assert doc.rollout.window == {"start": "01:00", "end": "05:00"}
    assert env.op("POST", "/v1/rollouts/r-ops/pause", {"reason": "holiday"})[0] == 200
    assert env.channel().rollout.state == "paused"
    assert env.status("r-ops")["rollout"]["reason"] == "holiday"
    assert env.op("POST", "/v1/rollouts/r-ops/pause")[0] == 409
    code, st = env.op("POST", "/v1/rollouts/r-ops/resume")
    assert code == 200 and st["rollout"]["state"] == "active" and env.channel().rollout.state == "active"
    for d in env.devices[:2]:
        d.update("r-ops", "1.1.0")
    time.sleep(0.3)
    st = env.status("r-ops")
    assert st["step"]["index"] == 0 and "soaking" in st["next"]["waiting_for"]  # 1 h soak holds it
    assert env.op("POST", "/v1/rollouts", {"board": BOARD, "version": "1.1.0"})[0] == 409  # one at a time
    assert env.op("POST", "/v1/rollouts", {"board": BOARD, "version": "9.9.9"})[0] == 409
    bad_plan = {"board": BOARD, "version": "1.1.0", "plan": {"soak": "x"}}
    assert env.op("POST", "/v1/rollouts", bad_plan)[0] == 400
    assert env.op("GET", "/v1/rollouts/nope")[0] == 404
    seqs = [d.seq for d in env.docs]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
