"""The plan means what it says: what an operator saw go wrong with the rollout gate, each case
over real HTTP against a running server (real store, real signed channel documents).

Issue #14 (seen 1-7), and the gate parts of issue #13 (who counts, the group is the operator's,
no gate passes on nobody). Each test failed on the code before the fix.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sim.serverkit import HttpClient, ReportingDevice, ServerThread, operator_call, rollout_server

BOARD = "esp32-generic-4mb"
SECRET = b"\x17" * 32


@dataclass
class Env:
    srv: ServerThread
    devices: list[ReportingDevice]

    def op(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return operator_call(self.srv.url, SECRET, method, path, body)

    def device(self, device_id: str, group: str | None, version: str = "1.0.0", register: bool = True,
               channel: str | None = None, board: str = BOARD) -> ReportingDevice:
        """A device the operator registered (group, channel), known at `version` from a heartbeat."""
        d = ReportingDevice(self.srv.url, SECRET, device_id, group, board=board, version=version)
        if register:
            body = {"device_id": device_id, "board": board, "group": group}
            if channel is not None:
                body["channel"] = channel
            assert self.op("POST", "/v1/devices", body)[0] == 200
        assert d.report("heartbeat", health="OK") == 200
        self.devices.append(d)
        return d

    def start(self, plan: dict[str, Any], rid: str, version: str = "1.1.0",
              channel: str = "stable") -> dict[str, Any]:
        code, st = self.op("POST", "/v1/rollouts", {"board": BOARD, "channel": channel, "version": version,
                                                     "plan": plan, "id": rid})
        assert code == 201, st
        return dict(st)

    def status(self, rid: str) -> dict[str, Any]:
        code, st = self.op("GET", f"/v1/rollouts/{rid}")
        assert code == 200, st
        return dict(st)

    def wait(self, rid: str, done: Callable[[dict[str, Any]], bool], timeout: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            st = self.status(rid)
            if done(st):
                return st
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; rollout {st['rollout']} next {st['next']}")
            time.sleep(0.05)

    def settle(self, rid: str, seconds: float = 0.6) -> dict[str, Any]:
        """Give the orchestrator (ticking every 0.05 s) time to act, then the status."""
        time.sleep(seconds)
        return self.status(rid)


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[Env]:
    with rollout_server(tmp_path, SECRET, tick_s=0.05) as srv:
        e = Env(srv, [])
        yield e
        for d in e.devices:
            d.close()


def _stage(st: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in st["stages"] if s["name"] == name)


def _updating(d: ReportingDevice, rid: str) -> None:
    for event in ("downloading", "downloaded", "installed"):
        assert d.report(event, rid, "1.1.0") == 200


def _rolled_back(d: ReportingDevice, rid: str) -> None:
    assert d.report("health_failed", rid, "1.1.0", check="wifi") == 200
    assert d.report("rolled_back", rid, "1.1.0", reason="health_check") == 200


# ----------------------------------------------------------------------------- issue #14, seen cases
def test_failures_after_a_resume_are_judged(env: Env) -> None:
    """Seen 1: pilot min_finished 4, 2 of 4 fail, resumed while 3 more are mid-update; all 3 roll back.
    Before: rates were judged only on the 3 finished since the resume (< min_finished), the gate said
    "pass" at 100% rollbacks and general started."""
    pilots = [env.device(f"pilot-{i}", "pilot") for i in range(7)]
    env.device("general-0", "general")
    plan = {"soak": 0, "stages": [{"name": "pilot", "min_finished": 4},
                                  {"name": "general", "percentages": [100]}]}
    env.start(plan, "r1")
    for d in pilots[4:]:
        _updating(d, "r1")          # mid-update
    for d in pilots[:2]:
        d.update("r1", "1.1.0", "confirmed")
    for d in pilots[2:4]:
        _rolled_back(d, "r1")
    st = env.wait("r1", lambda s: s["rollout"]["state"] == "paused")
    assert st["rollout"]["reason"].startswith("pilot: failure rate 50.0% > 20%")
    assert env.op("POST", "/v1/rollouts/r1/resume")[0] == 200
    for d in pilots[4:]:
        assert d.report("health_failed", "r1", "1.1.0", check="wifi") == 200
        assert d.report("rolled_back", "r1", "1.1.0", reason="health_check") == 200
    st = env.wait("r1", lambda s: s["rollout"]["state"] != "active" or s["step"]["index"] > 0)
    assert st["rollout"]["state"] == "paused" and st["step"]["index"] == 0, st["rollout"]
    # the gate may judge after the second or the third new rollback (the reports race the tick);
    # either way the 2 accepted ones no longer count
    judged = r"pilot: failure rate (33\.3% > 20% \(2 of 6|42\.9% > 20% \(3 of 7) finished devices\)"
    assert re.fullmatch(judged, st["rollout"]["reason"]), st["rollout"]["reason"]
    st = env.wait("r1", lambda s: _stage(s, "pilot")["counts"]["finished"] == 7)
    pilot = _stage(st, "pilot")
    assert pilot["verdict"] == "fail" and pilot["counts"]["accepted"] == 2
    assert pilot["failure_rate"] == 42.86 and st["rollout"]["state"] == "paused"
    assert st["channel_rollout"]["percentage"] == 0.0  # general never offered


def test_a_restarted_rollout_does_not_wait_for_devices_already_on_the_version(env: Env) -> None:
    """Seen 2: abort 1.1.0 after the canaries confirmed, start 1.1.0 again under a new id: the
    canaries run 1.1.0 and send nothing. Before: "canary: 0 of 1 devices finished" forever."""
    canaries = [env.device(f"canary-{i}", "canary") for i in range(2)]
    internal = env.device("internal-0", "internal")
    plan = {"soak": 0, "stages": [{"name": "canary"}, {"name": "internal"}]}
    env.start(plan, "r1")
    for d in canaries:
        d.update("r1", "1.1.0")
    env.wait("r1", lambda s: s["step"]["index"] == 1)
    assert env.op("POST", "/v1/rollouts/r1/abort")[0] == 200
    env.start(plan, "r2")
    st = env.wait("r2", lambda s: s["step"]["index"] == 1)
    assert _stage(st, "canary")["counts"]["up_to_date"] == 2 and _stage(st, "canary")["verdict"] == "pass"
    internal.update("r2", "1.1.0")
    assert env.wait("r2", lambda s: s["rollout"]["state"] == "completed")


def test_a_factory_flashed_board_is_not_waited_for(env: Env) -> None:
    """Seen 2: a board flashed with the target version never reports progress. Before, with
    min_finished 2 and two canaries, the stage waited for it forever."""
    env.device("canary-0", "canary", version="1.1.0")
    fresh = env.device("canary-1", "canary")
    env.start({"soak": 0, "min_finished": 2, "stages": [{"name": "canary"}]}, "r1")
    fresh.update("r1", "1.1.0")
    st = env.wait("r1", lambda s: s["rollout"]["state"] == "completed")
    c = _stage(st, "canary")["counts"]
    assert (c["targeted"], c["up_to_date"], c["confirmed"]) == (1, 1, 1)


def test_a_rollout_counts_only_devices_of_its_channel(env: Env) -> None:
    """Seen 2: two rollouts on two channels of one board both counted every device of the board."""
    beta = [env.device(f"beta-{i}", "canary", channel="beta") for i in range(2)]
    for i in range(3):
        env.device(f"stable-{i}", "canary")
    st = env.start({"soak": 0, "min_finished": 2, "stages": [{"name": "canary"}]}, "r-beta", channel="beta")
    assert _stage(st, "canary")["counts"]["targeted"] == 2
    for d in beta:
        d.update("r-beta", "1.1.0")
    env.wait("r-beta", lambda s: s["rollout"]["state"] == "completed")
    st = env.start({"soak": 0, "min_finished": 3, "stages": [{"name": "canary"}]}, "r-stable")
    assert _stage(st, "canary")["counts"]["targeted"] == 3


def test_an_accepted_failure_does_not_pause_again(env: Env) -> None:
    """Seen 4: the gate trips on health_failed, the operator resumes, that device's rolled_back
    arrives. Before: it re-paused with "1 of 1"."""
    a = env.device("canary-0", "canary")
    b = env.device("canary-1", "canary")
    env.device("internal-0", "internal")
    env.start({"soak": 0, "stages": [{"name": "canary"}, {"name": "internal"}]}, "r1")
    _updating(a, "r1")
    assert a.report("health_failed", "r1", "1.1.0", check="wifi") == 200
    env.wait("r1", lambda s: s["rollout"]["state"] == "paused")
    assert env.op("POST", "/v1/rollouts/r1/resume")[0] == 200
    assert a.report("rolled_back", "r1", "1.1.0", reason="health_check") == 200
    st = env.settle("r1")
    assert st["rollout"]["state"] == "active", st["rollout"]
    b.update("r1", "1.1.0")
    st = env.wait("r1", lambda s: s["step"]["index"] == 1)
    assert st["rollout"]["state"] == "active" and [h["kind"] for h in st["history"]].count("auto-pause") == 1


def test_a_stage_that_can_never_target_anyone_is_refused(env: Env) -> None:
    """Seen 5: a stage named general without batch_size_percentage targeted nobody and the rollout
    reported "every stage passed" with the channel at 0%."""
    env.device("canary-0", "canary")
    code, err = env.op("POST", "/v1/rollouts", {"board": BOARD, "version": "1.1.0", "plan": {
        "stages": [{"name": "canary"}, {"name": "general"}]}})
    assert code == 400 and err["error"].startswith("stage general can never target a device"), err
    assert env.op("GET", "/v1/rollouts")[1]["rollouts"] == []


def test_a_retried_download_gets_its_own_timeout(env: Env) -> None:
    """Seen 7: `failed` (download) then `downloading` again kept the first attempt's start time,
    so the retry was timed out at once."""
    a = env.device("canary-0", "canary")
    b = env.device("canary-1", "canary")
    plan = {"soak": 0, "min_finished": 2, "failure_rate_threshold": 40, "in_progress_timeout": "1s",
            "stages": [{"name": "canary"}]}
    env.start(plan, "r1")
    assert a.report("downloading", "r1", "1.1.0", progress=0) == 200
    assert a.report("failed", "r1", "1.1.0", reason="download") == 200
    time.sleep(1.2)
    assert a.report("downloading", "r1", "1.1.0", progress=0) == 200  # the retry, past the first timeout
    b.update("r1", "1.1.0")
    st = env.status("r1")
    c = _stage(st, "canary")["counts"]
    assert (c["in_progress"], c["timed_out"], c["confirmed"]) == (1, 0, 1), c
    assert env.settle("r1", 0.3)["rollout"]["state"] == "active"
    a.update("r1", "1.1.0")
    assert env.wait("r1", lambda s: s["rollout"]["state"] == "completed")


# ----------------------------------------------------------------------------- issue #13: who counts
def test_reports_from_untargeted_devices_never_move_a_rollout(env: Env) -> None:
    """#13 seen 1: one confirmed report from a device the step never targeted met min_finished at
    every step; the rollout completed with none of its canaries having reported."""
    env.device("canary-0", "canary")
    general = env.device("general-0", "general")
    stranger = env.device("stranger-0", None, register=False)    # not registered at all
    plan = {"soak": 0, "stages": [{"name": "canary"}, {"name": "general", "percentages": [100]}]}
    env.start(plan, "r1")
    for d in (general, stranger):
        d.update("r1", "1.1.0", "confirmed")
    st = env.settle("r1")
    assert st["rollout"]["state"] == "active" and st["step"]["index"] == 0, st["rollout"]
    assert st["unexpected"]["devices"] == 2 and set(st["unexpected"]["first"]) == {"general-0", "stranger-0"}
    assert _stage(st, "canary")["counts"]["finished"] == 0
    # failures from them do not pause it either
    env.device("internal-9", "internal").update("r1", "1.1.0", "rolled_back")
    st = env.settle("r1")
    assert st["rollout"]["state"] == "active" and st["unexpected"]["devices"] == 3


def test_no_one_device_can_skew_a_gate_by_other_routes(env: Env) -> None:
    """#13 "who counts": reports stored before the rollout existed, for another board's rollout,
    or under another device's id do not count."""
    canary = env.device("canary-0", "canary")
    env.device("canary-1", "canary")
    other = env.device("other-0", "canary", board="esp32s3-generic-8mb")   # same group, another board
    # the default rollout id is predictable: a device reports for it before it exists
    assert canary.report("rolled_back", "r1", "1.1.0") == 200
    env.start({"soak": 0, "min_finished": 2, "stages": [{"name": "canary"}]}, "r1")
    other.update("r1", "1.1.0", "rolled_back")
    # a report under another device's id, with this device's token, is refused whole
    forged = canary.build("rolled_back", "r1", "1.1.0")
    forged["device_id"] = "canary-1"
    assert canary.post(forged)[0] in (401, 403)
    st = env.settle("r1")
    assert st["rollout"]["state"] == "active", st["rollout"]
    assert st["unexpected"]["devices"] == 2 and _stage(st, "canary")["counts"]["finished"] == 0


def test_the_registered_group_is_authoritative(env: Env) -> None:
    """#13 seen 2: a report's group overwrote the registered one; one `failed` claiming `canary`
    paused the rollout, again right after the operator resumed it."""
    env.device("canary-0", "canary")
    liar = env.device("general-0", "general")
    env.start({"soak": "1h", "stages": [{"name": "canary"}, {"name": "general", "percentages": [100]}]}, "r1")
    liar.group = "canary"
    assert liar.report("failed", "r1", "1.1.0", reason="hash_mismatch") == 200
    st = env.settle("r1")
    assert st["rollout"]["state"] == "active" and st["unexpected"]["devices"] == 1
    assert _stage(st, "canary")["counts"]["targeted"] == 1
    code, dev = env.op("GET", "/v1/devices/general-0")
    assert (dev["group"], dev["claimed_group"]) == ("general", "canary")
    # a device registering itself with its own token only claims a group
    c = HttpClient(env.srv.url)
    body = json.dumps({"device_id": "general-0", "board": BOARD, "group": "canary"}).encode()
    assert c.request("POST", "/v1/devices", body, {"Authorization": f"Bearer {liar.token}"})[0] == 200
    c.close()
    assert env.op("GET", "/v1/devices/general-0")[1]["group"] == "general"


def test_a_rollout_with_nobody_to_judge_does_not_start(env: Env) -> None:
    """#13 seen 8: with no device registered a rollout "completed" within a second (every step
    targeted nobody, soaks skipped, channel at 100%)."""
    code, err = env.op("POST", "/v1/rollouts", {"board": BOARD, "version": "1.1.0", "id": "r1",
                                                "plan": {"soak": 0}})
    assert code == 409 and err["error"].startswith("stage canary targets no device of"), err
    # devices only claiming a group in their reports do not make it targetable
    env.device("canary-0", "canary", register=False)
    assert env.op("POST", "/v1/rollouts", {"board": BOARD, "version": "1.1.0", "id": "r1",
                                           "plan": {"soak": 0}})[0] == 409


def test_an_empty_stage_waits_unless_the_plan_says_skip_and_soak_always_holds(env: Env) -> None:
    """#13 "no gate passes on nobody": a later empty stage waits with the reason; a plan may let
    an empty stage pass (skip_if_empty), and its soak still holds."""
    canary = env.device("canary-0", "canary")
    env.device("general-0", "general")
    st = env.start({"soak": 0, "stages": [{"name": "canary"}, {"name": "internal"},
                                          {"name": "general", "percentages": [100]}]}, "r1")
    assert any(h["kind"] == "warning" and "stage internal targets no device" in h["message"]
               for h in st["history"])
    canary.update("r1", "1.1.0")
    st = env.wait("r1", lambda s: s["step"]["index"] == 1 and bool(s["waiting"]))
    st = env.settle("r1")
    assert st["step"]["index"] == 1 and st["waiting"].startswith("internal: targets no device")
    assert env.op("POST", "/v1/rollouts/r1/abort")[0] == 200
    st = env.start({"soak": 0, "stages": [{"name": "canary"}, {"name": "internal", "skip_if_empty": True,
                                                               "soak": "1h"},
                                          {"name": "general", "percentages": [100]}]}, "r2")
    canary.update("r2", "1.1.0")
    st = env.wait("r2", lambda s: s["step"]["index"] == 1 and "soaking" in s["next"]["waiting_for"])
    assert st["next"]["waiting_for"].startswith("internal: soaking, 3600s left")


def test_a_device_registered_after_its_stage_passed_still_counts_there(env: Env) -> None:
    """Decided: a device that registers once its stage passed is offered the release at once (its
    group is in the channel document) and counts in its stage: its failure pauses the rollout."""
    first = env.device("canary-0", "canary")
    env.device("internal-0", "internal")
    env.start({"soak": 0, "stages": [{"name": "canary"}, {"name": "internal"}]}, "r1")
    first.update("r1", "1.1.0")
    env.wait("r1", lambda s: s["step"]["index"] == 1)
    late = env.device("canary-9", "canary")
    late.update("r1", "1.1.0", "rolled_back")
    st = env.wait("r1", lambda s: s["rollout"]["state"] == "paused")
    assert st["rollout"]["reason"].startswith("canary: failure rate 50.0% > 20%")


def test_a_completed_rollout_keeps_watching_and_can_be_halted(env: Env) -> None:
    """Decided: after completion the gates watch for the plan's `watch` time (late rollbacks pause
    it), and the operator can still pause or abort it by its id until a newer rollout owns the
    channel."""
    a = env.device("canary-0", "canary")
    b = env.device("canary-1", "canary")
    env.start({"soak": 0, "watch": "1h", "stages": [{"name": "canary"}]}, "r1")
    a.update("r1", "1.1.0")
    b.update("r1", "1.1.0")
    env.wait("r1", lambda s: s["rollout"]["state"] == "completed")
    assert b.report("rolled_back", "r1", "1.1.0", reason="health_check") == 200
    st = env.wait("r1", lambda s: s["rollout"]["state"] == "paused")
    assert st["rollout"]["reason"].startswith("after completion: canary: failure rate 50.0%")
    assert st["channel_rollout"]["state"] == "paused"
    code, st = env.op("POST", "/v1/rollouts/r1/abort", {"reason": "bad"})
    assert code == 200 and st["channel_rollout"]["state"] == "halted"
    # a completed rollout can be halted by its id while it still owns the channel
    env.start({"soak": 0, "watch": 0, "stages": [{"name": "canary"}]}, "r2", version="1.1.0")
    for d in (a, b):
        d.update("r2", "1.1.0")
    env.wait("r2", lambda s: s["rollout"]["state"] == "completed")
    code, st = env.op("POST", "/v1/rollouts/r2/pause", {"reason": "late reports look bad"})
    assert code == 200 and st["rollout"]["state"] == "paused" and st["channel_rollout"]["state"] == "paused"
