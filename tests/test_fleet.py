"""The fleet simulator (sim/fleet.py) against the real rollout server on loopback: boards running
the real device code update through a staged rollout, a bad release rolls back and pauses it,
and the fault profiles really inject their faults."""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.client import IncompleteRead
from pathlib import Path
from typing import Any

import pytest

from host_tools.keys import generate_key, load_private_key
from host_tools.server.app import ServerConfig, make_publisher
from sim.fleet import PROFILES, FaultProfile, FaultProxy, Fleet, group_plan
from sim.serverkit import ServerThread, publish_test_release

BOARD = "esp32-generic-4mb"
SECRET = b"\x5a" * 32
PLAN = {"soak": 0, "min_finished": 1, "in_progress_timeout": "10m",
        "stages": [{"name": "canary"}, {"name": "internal"}, {"name": "pilot"},
                   {"name": "general", "batch_size_percentage": 100}]}


@dataclass
class Env:
    root: Path
    srv: ServerThread
    keys: dict[str, list[str]]
    v1: bytes


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[Env]:
    key = tmp_path / "k.pem"
    generate_key(key, "both")
    pk = load_private_key(key)
    feed = tmp_path / "feed"
    work = tmp_path / "work"
    # stock-style images, as MicroPython's own builds: the version is only in the signed manifests
    publish_test_release(feed, work, key, "1.0.0", BOARD, channel="stable", stock=True)
    publish_test_release(feed, work, key, "1.1.0", BOARD, stock=True)
    publish_test_release(feed, work, key, "1.2.0", BOARD, sim_flags="health=fail", stock=True)
    config = ServerConfig(feed_dir=feed, db_url=f"sqlite:///{tmp_path / 'db.sqlite'}", fleet_secret=SECRET,
                          tick_s=0.1)
    with ServerThread(config, make_publisher(feed, str(key), any_role=True)) as srv:
        yield Env(tmp_path, srv, {"release": [pk.public_hex], "rollout": [pk.public_hex]},
                  (work / "app-1.0.0.bin").read_bytes())


def _fleet(env: Env, n: int, interpreter: str = "cpython", **kw: Any) -> Fleet:
    fleet = Fleet(env.root / f"boards-{interpreter}", env.srv.url, env.srv.url + "/", n, secret=SECRET,
                  keys=env.keys, image=env.v1, factory_version="1.0.0", interpreter=interpreter, workers=4,
                  **kw)
    for v in ("1.1.0", "1.2.0"):
        fleet.name_image((env.root / "work" / f"app-{v}.bin").read_bytes(), v)
    return fleet


def _drive(fleet: Fleet, rid: str, until: set[str], rounds: int = 8) -> dict[str, Any]:
    for _ in range(rounds):
        fleet.poll_all()
        deadline = time.monotonic() + 2
        while True:
            st = fleet.rollout_status(rid)
            if st["rollout"]["state"] in until or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        if st["rollout"]["state"] in until:
            return st
    raise AssertionError(f"rollout {rid} stuck: {st['next']}")


def _start(fleet: Fleet, version: str, rid: str) -> None:
    body = {"board": BOARD, "channel": "stable", "version": version, "plan": PLAN, "id": rid}
    status, doc = fleet.operator("POST", "/v1/rollouts", body)
    assert status == 201, doc


def test_group_plan() -> None:
    assert group_plan(6, {"canary": 1, "pilot": 2}) == ["canary", "pilot", "pilot", "general", "general",
                                                        "general"]
    with pytest.raises(ValueError):
        group_plan(2, {"canary": 3})


def test_fleet_rolls_out_and_a_bad_release_rolls_back(env: Env) -> None:
    groups = {"canary": 1, "internal": 1, "pilot": 2}
    with _fleet(env, 8, groups=groups, profiles={"flaky": 0.25, "powercut": 0.25},
                profile_groups=("general",), seed=3) as fleet:
        assert fleet.register() == 8
        assert Counter(d.group for d in fleet.devices) == Counter({"canary": 1, "internal": 1, "pilot": 2,
                                                                    "general": 4})
        profiles = Counter(d.profile.name for d in fleet.devices)
        assert profiles == Counter({"clean": 6, "flaky": 1, "powercut": 1})
        first = fleet.poll_all()
        assert first.unsettled == [] and first.crashed == []
        assert set(fleet.versions().values()) == {"1.0.0"}

        _start(fleet, "1.1.0", "r-good")
        st = _drive(fleet, "r-good", {"completed", "paused"})
        assert st["rollout"]["state"] == "completed", json.dumps(st)
        for _ in range(2):  # stragglers that polled before the last step
            if set(fleet.versions().values()) == {"1.1.0"}:
                break
            fleet.poll_all()
        assert set(fleet.versions().values()) == {"1.1.0"}
        for d in fleet.by_id:
            f = fleet.flash_report(d)
            assert f["valid"] and f["ota_state"] == "VALID" and not f["state"]["pending"], (d, f)
        inv = fleet.inventory()
        assert {inv[d]["version"] for d in fleet.by_id} == {"1.1.0"}

        # every board has the sensor: the canary board fails its health check, rolls back, the gate trips
        _start(fleet, "1.2.0", "r-bad")
        st = _drive(fleet, "r-bad", {"completed", "paused"})
        assert st["rollout"]["state"] == "paused" and st["step"]["stage"] == "canary", st["rollout"]
        fleet.poll_all()
        canary = next(d for d in fleet.devices if d.group == "canary")
        f = fleet.flash_report(canary.device_id)
        assert f["version"] == "1.1.0" and f["valid"] and ["1.2.0", "r-bad"] in f["state"]["failed"]
        assert fleet.inventory()[canary.device_id]["last_event"] in ("rolled_back", "heartbeat")
        assert set(fleet.versions().values()) == {"1.1.0"}


def test_micropython_fleet_updates(env: Env) -> None:
    with _fleet(env, 3, "micropython", groups={"canary": 3}) as fleet:
        fleet.register()
        _start(fleet, "1.1.0", "r-mpy")
        s = fleet.poll_all()
        assert s.count("boot") == Counter({"confirmed": 3}), [o.result for o in s.outcomes]
        assert all(o.kinds == ["reset", "exit"] for o in s.outcomes)
        assert set(fleet.versions().values()) == {"1.1.0"}
        # installed as deployed: the device package as .mpy
        assert all((d.board.fs / "lib" / "mpota" / "updater.mpy").exists() for d in fleet.devices)


def test_sensorless_boards_pass_a_firmware_with_a_broken_sensor(env: Env) -> None:
    with _fleet(env, 2, groups={"canary": 1, "internal": 1}, sensor_groups=("internal",)) as fleet:
        fleet.register()
        canary, internal = (d.device_id for d in fleet.devices)
        _start(fleet, "1.2.0", "r-lab")
        st = _drive(fleet, "r-lab", {"paused", "completed"})
        # the canary board has no sensor: the broken driver does not show, it confirms;
        # the internal board has one: its health check fails, it rolls back, the gate trips there
        assert st["rollout"]["state"] == "paused" and st["step"]["stage"] == "internal", st["rollout"]
        fleet.poll_all()
        assert fleet.versions() == {canary: "1.2.0", internal: "1.0.0"}
        assert ["1.2.0", "r-lab"] in fleet.device_state(internal)["failed"]


def test_power_cut_profile_cuts_and_the_board_recovers(env: Env) -> None:
    prof = FaultProfile("always-cut", powercut_rate=1.0, cut_within=30)  # an update boot has > 30 ops
    with _fleet(env, 2, groups={"canary": 2}, profiles={prof: 1.0}, seed=11) as fleet:
        fleet.register()
        _start(fleet, "1.1.0", "r-cut")
        s = fleet.poll_all()
        assert sum(o.powercut for o in s.outcomes) >= 1
        for _ in range(3):
            if set(fleet.versions().values()) == {"1.1.0"}:
                break
            fleet.poll_all()
        assert set(fleet.versions().values()) == {"1.1.0"}
        assert all(fleet.flash_report(d)["ota_state"] == "VALID" for d in fleet.by_id)


def test_fault_proxy_cuts_and_throttles(env: Env) -> None:
    url = env.srv.url + f"/releases/{BOARD}/1.1.0/manifest.json"
    with urllib.request.urlopen(url) as r:
        whole = r.read()
    cutter = FaultProxy(env.srv.url, FaultProfile("cut", drop_rate=1.0, drop_within=len(whole) // 2))
    slow = FaultProxy(env.srv.url, FaultProfile("slow", bytes_per_s=8 * 1024, latency_ms=100))
    try:
        with pytest.raises((IncompleteRead, ConnectionError, OSError)):
            with urllib.request.urlopen(cutter.url_for(url)) as r:
                r.read()
        assert cutter.dropped == 1
        t = time.monotonic()
        with urllib.request.urlopen(slow.url_for(url)) as r:
            assert r.read() == whole
        assert time.monotonic() - t >= 0.1 + len(whole) / (8 * 1024) * 0.5
    finally:
        cutter.close()
        slow.close()
    assert PROFILES["flaky"].needs_proxy and not PROFILES["powercut"].needs_proxy
