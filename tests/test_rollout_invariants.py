"""Property test: random plans and random device event streams, with operator pauses and resumes
and server restarts, driven against the real server over HTTP; after every round the invariants
an operator relies on are checked.

- no stage passes (advance or complete in the history, with the figures the gate saw) with a
  rate above its threshold over at least min_finished finished devices, nor with fewer finished
  devices than the plan asks, nor on nobody (unless the stage says skip_if_empty);
- every soak holds: a step's "ready" comes after the step started and the step passes no sooner
  than its soak after that;
- the channel document's seq only grows, across restarts too, and is signed by the rollout key;
- `rollout status` counts equal what was sent: per stage targeted / started / in progress /
  confirmed / failed / rolled back / accepted / already on the version, and the "unexpected"
  devices, from an independent model of the reports this test sent.

Seeded (reproducible): MPOTA_INVARIANT_SEED picks the first seed; `make test` runs a few examples,
the slow-marked variant (`pytest -m slow tests/test_rollout_invariants.py`) many more.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from host_tools.channel import ChannelDoc
from host_tools.fleet import device_token
from host_tools.keys import PublicKey, generate_key, load_public_key
from host_tools.server.app import ServerConfig, make_publisher
from host_tools.server.auth import operator_token
from host_tools.server.bucket import is_eligible
from host_tools.server.ingest_plan import RETRIED_REASONS
from host_tools.server.plans import RolloutPlan
from sim.serverkit import HttpClient, ServerThread, publish_test_release

BOARD = "esp32-generic-4mb"
SECRET = b"\x5a" * 32
TARGET = "1.1.0"
GROUPS = ("canary", "internal", "pilot")
BAD = ("failed", "rolled_back")


@dataclass
class Dev:
    device_id: str
    group: str | None          # registered group (None: never registered)
    claims: str | None         # the group its reports say
    channel: str               # registered channel
    version: str
    board: str = BOARD
    seq: int = 0
    status: str | None = None  # the model of its progress in the example's rollout
    health: bool = False
    accepted: bool = False
    busy: bool = False         # mid-update (downloading sent, no outcome yet)
    reported: bool = False


@dataclass
class Example:
    rng: random.Random
    channel: str
    rid: str
    plan: dict[str, Any]
    devices: list[Dev]
    steps: list[Any] = field(default_factory=list)


class World:
    """One server (restartable on the same database and feed) shared by the examples."""

    def __init__(self, root: Path) -> None:
        self.root = root
        key = root / "rollout.pem"
        generate_key(key, "both")
        self.key = key
        self.pub: PublicKey = load_public_key(str(key) + ".pub")
        self.feed = root / "feed"
        publish_test_release(self.feed, root / "work", key, "1.0.0", BOARD)
        publish_test_release(self.feed, root / "work", key, TARGET, BOARD)
        self.config = ServerConfig(feed_dir=self.feed, db_url=f"sqlite:///{root / 'db.sqlite'}",
                                   fleet_secret=SECRET, tick_s=0.02)
        self.srv = ServerThread(self.config, make_publisher(self.feed, str(key)))
        self.http = HttpClient(self.srv.url)
        self.seqs: dict[str, int] = {}

    def restart(self) -> None:
        self.http.close()
        self.srv.stop()
        self.srv = ServerThread(self.config, make_publisher(self.feed, str(self.key)))
        self.http = HttpClient(self.srv.url)

    def close(self) -> None:
        self.http.close()
        self.srv.stop()

    def op(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, _, data = self.http.request(method, path, None if body is None else json.dumps(body).encode(),
                                            {"Authorization": f"Bearer {operator_token(SECRET)}"})
        return status, json.loads(data)

    def report(self, d: Dev, event: str, rid: str, **detail: Any) -> None:
        d.seq += 1
        body = {"device_id": d.device_id, "seq": d.seq, "event": event, "board": d.board, "group": d.claims,
                "version": d.version, "rollout": rid, "target": TARGET, "detail": detail or None}
        status, _, data = self.http.request(
            "POST", "/v1/reports", json.dumps(body).encode(),
            {"Authorization": f"Bearer {device_token(SECRET, d.device_id)}", "X-Mpota-Device": d.device_id,
             "Content-Type": "application/json"})
        assert status == 200, data
        if event != "heartbeat":
            d.reported = True
            _model(d, event, detail.get("reason"))

    def channel_seq(self, channel: str) -> int:
        status, _, data = self.http.request("GET", f"/channels/{BOARD}/{channel}.json")
        assert status == 200
        return ChannelDoc.from_envelope_bytes(data, [self.pub]).seq


def _model(d: Dev, event: str, reason: object) -> None:
    """What a device's reports say about it, written from the README's rules."""
    if event == "failed" and reason in RETRIED_REASONS:  # the one definition of "the device retries"
        if d.status in (None, "started", "failed"):
            d.status, d.accepted = "started", False
    elif event in ("downloading", "downloaded", "installed"):
        if d.status in (None, "failed"):
            d.status, d.accepted = "started", False
    elif event == "confirmed":
        d.status = "confirmed"
    elif event == "health_failed":
        d.health = True
        if d.status != "rolled_back":
            d.status = "failed"
    elif event == "failed":
        if d.status not in ("confirmed", "rolled_back"):
            d.status = "failed"
    elif event == "rolled_back":
        d.status = "rolled_back"


def _random_plan(rng: random.Random) -> dict[str, Any]:
    stages: list[dict[str, Any]] = []
    for g in GROUPS:
        if rng.random() < 0.6:
            stages.append({"name": g, "groups": [g]})
    if not stages or rng.random() < 0.7:
        n = rng.randint(1, 3)
        pcts = sorted({round(rng.uniform(5, 95), 2) for _ in range(n - 1)}) + [100.0]
        stages.append({"name": "general", "groups": [], "percentages": pcts})
    for s in stages:
        s["min_finished"] = rng.randint(1, 3)
        s["failure_rate_threshold"] = rng.choice([10, 20, 34, 50, 100])
        s["rollback_rate_threshold"] = rng.choice([0, 20, 50, 100])
        s["health_check_failure_rate"] = rng.choice([0, 25, 100])
        s["soak"] = rng.choice([0, 0, 0.05, 0.15])
        s["skip_if_empty"] = rng.random() < 0.3
    stages[0]["skip_if_empty"] = True  # the first stage may be empty in a random fleet
    return {"in_progress_timeout": "1h", "watch": "1h", "stages": stages}


def _random_fleet(rng: random.Random, tag: str, channel: str) -> list[Dev]:
    devs: list[Dev] = []
    for g in (*GROUPS, "general"):
        for i in range(rng.randint(0, 4 if g != "general" else 8)):
            version = TARGET if rng.random() < 0.1 else "1.0.0"
            claims = g if rng.random() < 0.85 else rng.choice(GROUPS)   # some claim another group
            devs.append(Dev(f"{tag}-{g}-{i}", g, claims, channel, version))
    for i in range(rng.randint(0, 2)):     # never registered: bucket only, default channel (stable)
        devs.append(Dev(f"{tag}-anon-{i}", None, rng.choice(GROUPS), "stable", "1.0.0"))
    for i in range(rng.randint(0, 2)):     # registered on another channel or board
        devs.append(Dev(f"{tag}-other-{i}", rng.choice(GROUPS), None, "other", "1.0.0"))
    if rng.random() < 0.5:
        devs.append(Dev(f"{tag}-s3-0", "canary", "canary", channel, "1.0.0", board="esp32s3-generic-8mb"))
    return devs


def _first_step(ex: Example, d: Dev, rid: str, k: int) -> int | None:
    """The first step (<= k) that targets the device, by its registered group or bucket."""
    if d.board != BOARD or d.channel != ex.channel:
        return None
    for step in ex.steps[:k + 1]:
        doc = {"id": rid, "groups": list(step.groups), "percentage": step.percentage}
        if is_eligible(doc, d.device_id, d.group):
            return int(step.index)
    return None


def _expected(ex: Example, st: dict[str, Any]) -> tuple[dict[str, dict[str, int]], int]:
    k = st["step"]["index"]
    plan = RolloutPlan.from_dict(st["plan"])
    stage_of = {s.index: plan.stages[s.stage].name for s in plan.steps}
    out = {s.name: {"targeted": 0, "started": 0, "active": 0, "confirmed": 0, "failed": 0, "rolled_back": 0,
                    "accepted": 0, "up_to_date": 0} for s in plan.stages}
    unexpected = 0
    for d in ex.devices:
        first = _first_step(ex, d, ex.rid, k)
        if first is None:
            unexpected += d.reported
            continue
        c = out[stage_of[first]]
        if d.status is None:
            c["up_to_date" if d.version == TARGET else "targeted"] += 1
            continue
        c["targeted"] += 1
        c["started"] += 1
        c["active" if d.status == "started" else d.status] += 1
        if d.accepted and d.status != "started" and (d.status in BAD or d.health):
            c["accepted"] += 1   # accepted failures of finished devices
    return out, unexpected


def _check_status(world: World, ex: Example, st: dict[str, Any], last_seq: list[int]) -> None:
    seq = world.channel_seq(ex.channel)
    assert seq >= last_seq[0], "the channel document's seq went down"
    last_seq[0] = seq
    want, unexpected = _expected(ex, st)
    for s in st["stages"]:
        c = s["counts"]
        got = {"targeted": c["targeted"], "started": c["started"],
               "active": c["in_progress"] + c["timed_out"],
               "confirmed": c["confirmed"], "failed": c["failed"], "rolled_back": c["rolled_back"],
               "accepted": c["accepted"], "up_to_date": c["up_to_date"]}
        assert got == want[s["name"]], (s["name"], got, want[s["name"]])
    assert st["unexpected"]["devices"] == unexpected
    _check_history(st)


def _check_history(st: dict[str, Any]) -> None:
    plan = RolloutPlan.from_dict(st["plan"])
    step = 0
    step_started = ready = None
    for h in st["history"]:
        if h["kind"] == "start":
            step_started = h["time"]
        elif h["kind"] == "ready":
            assert step_started is not None and h["time"] >= step_started
            ready = h["time"]
        elif h["kind"] in ("advance", "complete"):
            s = plan.steps[step]
            assert ready is not None, f"step {step + 1} passed without being ready"
            ready_at = h["numbers"]["ready_at"]  # the time the server soaked from
            assert ready_at >= step_started and ready_at <= ready
            assert h["time"] - ready_at >= s.soak_s, ("soak cut short", step, h["time"] - ready_at, s.soak_s)
            for seen in h["numbers"]["stages"]:
                stage = next(x for x in plan.stages if x.name == seen["name"])
                c = seen["counts"]
                fin = c["finished"]
                if fin >= stage.gate.min_finished:
                    for part, limit in ((c["bad"], stage.gate.failure_rate_threshold),
                                        (c["bad_rolled_back"], stage.gate.rollback_rate_threshold),
                                        (c["bad_health"], stage.gate.health_check_failure_rate)):
                        assert part * 100 <= limit * fin, ("passed above a threshold", seen)
            cur = next(x for x in h["numbers"]["stages"] if x["name"] == s.stage_name)["counts"]
            size = cur["targeted"] + cur["up_to_date"]
            if step == plan.last_step_of_stage(s.stage):
                stage = plan.stages[s.stage]
                assert size >= stage.gate.min_finished or (size == 0 and stage.skip_if_empty), \
                    ("passed on fewer devices than min_finished", cur)
            assert cur["finished"] >= min(plan.stages[s.stage].gate.min_finished, cur["targeted"]), cur
            if h["kind"] == "advance":
                step += 1
                step_started, ready = h["time"], None


def _run_example(world: World, seed: int) -> None:
    rng = random.Random(seed)
    channel = f"c{seed}"
    rid = f"r-{seed}"
    plan = _random_plan(rng)
    ex = Example(rng, channel, rid, plan, _random_fleet(rng, f"e{seed}", channel))
    ex.steps = list(RolloutPlan.from_dict(plan).steps)
    for d in ex.devices:
        if d.group is not None:
            body = {"device_id": d.device_id, "board": d.board, "group": d.group, "channel": d.channel}
            assert world.op("POST", "/v1/devices", body)[0] == 200
        world.report(d, "heartbeat", None)  # type: ignore[arg-type]
    code, st = world.op("POST", "/v1/rollouts", {"board": BOARD, "channel": channel, "version": TARGET,
                                                 "plan": plan, "id": rid})
    assert code == 201, st
    last_seq = [world.channel_seq(channel)]
    for _round in range(rng.randint(20, 40)):
        code, st = world.op("GET", f"/v1/rollouts/{rid}")
        doc = st["channel_rollout"]
        for d in rng.sample(ex.devices, k=min(len(ex.devices), rng.randint(2, 10))):
            offered = doc["state"] == "active" and is_eligible(doc, d.device_id, d.claims)
            roll = rng.random()
            if d.busy:
                outcome = rng.choices(["confirmed", "failed", "rolled_back", "interrupted", "download",
                                       "stall"],
                                      [4, 1, 1, 1, 1, 1])[0]
                if outcome == "confirmed":
                    world.report(d, "confirmed", rid)
                    d.version, d.busy = TARGET, False
                elif outcome == "failed":
                    world.report(d, "failed", rid, reason="hash_mismatch")
                    d.busy = False
                elif outcome == "rolled_back":
                    world.report(d, "health_failed", rid, check="wifi")
                    if rng.random() < 0.8:
                        world.report(d, "rolled_back", rid, reason="health_check")
                    d.busy = False
                elif outcome == "interrupted":
                    world.report(d, "failed", rid, reason="interrupted")
                elif outcome == "download":
                    world.report(d, "failed", rid, reason="download")
                    d.busy = rng.random() < 0.5
                    if d.busy:
                        world.report(d, "downloading", rid, progress=0)
            elif (offered and d.version != TARGET and d.status in (None, "failed")) or roll < 0.05:
                world.report(d, "downloading", rid, progress=0)   # roll < 0.05: reporting unasked
                d.busy = True
        action = rng.random()
        if action < 0.04:
            code, _ = world.op("POST", f"/v1/rollouts/{rid}/pause", {"reason": "operator"})
        elif action < 0.2:
            code, _ = world.op("POST", f"/v1/rollouts/{rid}/resume")
            if code == 200:  # the server accepted every failure stored so far; so does the model
                for d in ex.devices:
                    if d.status in BAD or d.health:
                        d.accepted = True
        elif action < 0.23:
            world.restart()
        time.sleep(rng.choice([0.0, 0.0, 0.03, 0.1]))  # let the orchestrator act between rounds
        code, st = world.op("GET", f"/v1/rollouts/{rid}")
        assert code == 200
        _check_status(world, ex, st, last_seq)
    code, _ = world.op("POST", f"/v1/rollouts/{rid}/abort")
    assert code in (200, 409)


def _seeds(n: int) -> list[int]:
    first = int(os.environ.get("MPOTA_INVARIANT_SEED", "1"))
    return list(range(first, first + n))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Any:
    w = World(tmp_path_factory.mktemp("invariants"))
    yield w
    w.close()


@pytest.mark.parametrize("seed", _seeds(12))
def test_rollout_invariants(world: World, seed: int) -> None:
    _run_example(world, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", _seeds(200)[12:])
def test_rollout_invariants_long(world: World, seed: int) -> None:
    _run_example(world, seed)
