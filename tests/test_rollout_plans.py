"""Plans, the eligibility bucket, per-device progress and the gate logic (pure, no HTTP)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from host_tools.server.bucket import bucket, is_eligible
from host_tools.server.ingest_plan import advance_progress
from host_tools.server.orchestrator import Orchestrator, RolloutError, compute_stats, decide
from host_tools.server.plans import PlanError, RolloutPlan, load_plan, parse_duration, plan_with_overrides
from host_tools.server.publish import RecordingPublisher
from host_tools.server.store import ConflictError, DeviceProgress, Rollout, SQLiteStore

REPO = Path(__file__).resolve().parent.parent

# (rollout id, device id, bucket): computed once, by hand-checkable SHA-256 prefixes
VECTORS = [("r-20261127-1", "dev-0001", 76.56), ("r-20261127-1", "dev-0002", 15.23),
           ("rollout-a", "esp32-aabbcc", 6.97), ("x", "y", 0.54)]


@pytest.mark.parametrize("rid,dev,want", VECTORS)
def test_bucket_fixed_vectors(rid: str, dev: str, want: float) -> None:
    assert bucket(rid, dev) == want
    digest = hashlib.sha256(f"{rid}:{dev}".encode()).digest()
    assert want == (int.from_bytes(digest[:4], "big") % 10000) / 100


def test_bucket_matches_the_device_code() -> None:
    from mpota import trust  # the device's own rules, under CPython
    for i in range(300):
        rollout = {"id": f"r-{i % 7}", "state": "active", "groups": ["canary"], "percentage": (i * 7) % 101}
        dev = f"dev-{i:04d}"
        assert trust.bucket(rollout["id"], dev) == bucket(rollout["id"], dev)
        ch = {"rollout": rollout, "release": {"version": "1.1.0"}}
        for group in ("canary", "general", None):
            assert trust.wanted(ch, group, dev, None, None) == is_eligible(rollout, dev, group)


def test_percentage_only_adds_devices() -> None:
    devices = [f"d{i}" for i in range(2000)]
    previous: set[str] = set()
    for pct in (0, 1, 5, 25, 50, 99.99, 100):
        now = {d for d in devices if is_eligible({"id": "r", "percentage": pct}, d, None)}
        assert previous <= now
        previous = now
    assert len(previous) == 2000
    assert 400 < len({d for d in devices if bucket("r", d) < 25}) < 600


def test_default_plan_steps() -> None:
    plan = RolloutPlan.from_dict({})
    assert [s.name for s in plan.stages] == ["canary", "internal", "pilot", "general"]
    assert [(s.stage_name, s.groups, s.percentage) for s in plan.steps] == [
        ("canary", ("canary",), 0.0), ("internal", ("canary", "internal"), 0.0),
        ("pilot", ("canary", "internal", "pilot"), 0.0),
        *[("general", ("canary", "internal", "pilot"), p) for p in (25.0, 50.0, 75.0, 100.0)]]
    assert plan.stages[0].gate.failure_rate_threshold == 20.0
    assert plan.in_progress_timeout_s == 1800.0
    assert RolloutPlan.from_dict(plan.to_dict()).steps == plan.steps


def test_example_plan_file_and_exponential_ramp(tmp_path: Path) -> None:
    plan = load_plan(REPO / "examples" / "rollout.toml")
    assert [s.name for s in plan.stages][:3] == ["canary", "internal", "pilot"]
    assert plan.steps[-1].percentage == 100.0
    f = tmp_path / "p.toml"
    f.write_text('soak = "2m"\nwindow = {start = "22:00", end = "04:00"}\n'
                 '[[stages]]\nname = "canary"\nmin_finished = 3\nfailure_rate_threshold = 5\n'
                 '[[stages]]\nname = "general"\nramp = "exponential"\nramp_start = 1\nramp_factor = 4\n')
    plan = load_plan(f)
    assert [s.percentage for s in plan.steps] == [0.0, 1.0, 4.0, 16.0, 64.0, 100.0]
    assert plan.stages[0].gate.min_finished == 3 and plan.stages[0].soak_s == 120.0
    assert plan.stages[0].gate.failure_rate_threshold == 5.0
    assert plan.rollout_doc("r1", 2, "active") == {
        "id": "r1", "state": "active", "groups": ["canary"], "percentage": 4.0,
        "window": {"start": "22:00", "end": "04:00"}}


@pytest.mark.parametrize("text,msg", [
    ('soak = "soon"', "not a duration"),
    ("failure_rate_threshold = 120", "between 0 and 100"),
    ("colour = 1", "unknown plan keys"),
    ('window = {start = "25:00", end = "01:00"}', "window.start"),
    ('[[stages]]\nname = "general"\nbatch_size_percentage = 0', "batch_size_percentage"),
    ('[[stages]]\nname = "a"\n[[stages]]\nname = "a"', "duplicate stage"),
    ("min_finished = -1", "whole number"),
    ("stages = [", "not valid TOML"),
])
def test_bad_plans_are_refused(tmp_path: Path, text: str, msg: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text + "\n")
    with pytest.raises(PlanError, match=msg):
        load_plan(f)


def test_overrides_and_durations() -> None:
    plan = plan_with_overrides(None, {"soak": "1s", "batch_size_percentage": 50, "failure_rate_threshold": 10,
                                      "stage_names": ["canary", "general"]})
    assert [(s.stage_name, s.percentage) for s in plan.steps] == [("canary", 0.0), ("general", 50.0),
                                                                   ("general", 100.0)]
    assert plan.stages[1].gate.failure_rate_threshold == 10.0 and plan.stages[1].soak_s == 1.0
    assert [parse_duration(x) for x in ("90", "2m", "1.5h", "500ms", 3)] == [90, 120, 5400, 0.5, 3]


@pytest.mark.parametrize("events,status,health", [
    (["downloading", "downloaded", "installed", "confirmed"], "confirmed", 0),
    (["downloading", "failed"], "failed", 0),
    (["downloading", "failed", "downloading"], "started", 0),          # a retried download
    (["installed", "health_failed", "rolled_back"], "rolled_back", 1),
    (["installed", "health_failed"], "failed", 1),
    (["rolled_back", "downloading"], "rolled_back", 0),                # no retry after a rollback
    (["confirmed", "failed"], "confirmed", 0),
    (["downloading", "installed", "failed:interrupted"], "started", 0),  # power cut mid-install: retried
    (["downloading", "failed:interrupted", "failed:hash_mismatch"], "failed", 0),
])
def test_progress_transitions(events: list[str], status: str, health: int) -> None:
    p = None
    for i, e in enumerate(events):
        event, _, reason = e.partition(":")
        p = advance_progress(p, event, float(i), reason or None)
    assert p is not None and p.status == status and p.health_failed == health


def _rollout(plan: RolloutPlan, step: int = 0, started: float = 0.0) -> Rollout:
    return Rollout(id="r1", board="b", channel="stable", version="2.0.0", plan=plan.to_dict(), step=step,
                   step_started_at=started)


def test_gate_pauses_on_failure_rate_with_min_sample() -> None:
    plan = plan_with_overrides(None, {"soak": 0, "min_finished": 3})
    r = _rollout(plan, step=2)  # pilot
    pilot = [DeviceProgress(f"p{i}", "pilot", s, 1.0, 2.0, False) for i, s in
             enumerate(["confirmed", "failed", None])]
    stats = compute_stats(plan, r, pilot, now=10.0)
    assert stats.stages[2].verdict == "waiting"  # 2 finished < 3: not judged yet
    assert decide(plan, r, stats, 10.0).action == "none"
    pilot.append(DeviceProgress("p9", "pilot", "rolled_back", 1.0, 2.0, True))
    stats = compute_stats(plan, r, pilot, now=10.0)
    d = decide(plan, r, stats, 10.0)
    assert d.action == "pause" and d.reason.startswith("pilot: failure rate 66.7% > 20%")
    assert d.numbers is not None and d.numbers["counts"]["rolled_back"] == 1


def test_timeout_counts_as_failed_and_soak_waits() -> None:
    plan = plan_with_overrides(None, {"soak": "60s", "in_progress_timeout": "100s"})
    r = _rollout(plan, step=0, started=0.0)
    devs = [DeviceProgress("c1", "canary", "confirmed", 1.0, 5.0, False)]
    # the soak starts once the step has its finished devices, not when the step started
    assert decide(plan, r, compute_stats(plan, r, devs, 30.0), 30.0).action == "ready"
    r.ready_at = 30.0
    assert decide(plan, r, compute_stats(plan, r, devs, 60.0), 60.0).waiting_for.endswith("30s left")
    assert decide(plan, r, compute_stats(plan, r, devs, 91.0), 91.0).action == "advance"
    devs.append(DeviceProgress("c2", "canary", "started", 1.0, None, False))
    d = decide(plan, r, compute_stats(plan, r, devs, 91.0), 91.0)
    assert d.action == "none" and "in progress" in d.waiting_for
    stats = compute_stats(plan, r, devs, 102.0)
    assert stats.stages[0].counts.timed_out == 1
    assert decide(plan, r, stats, 102.0).action == "pause"


def test_orchestrator_with_recording_publisher(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite")
    pub = RecordingPublisher(releases={("b", "2.0.0")})
    clock = [1000.0]
    orch = Orchestrator(store, pub, clock=lambda: clock[0])
    plan = plan_with_overrides(None, {"soak": 0, "stage_names": ["canary", "general"],
                                      "batch_size_percentage": 50})
    with pytest.raises(RolloutError, match="not in the feed"):
        orch.start("b", "stable", "9.9.9", plan, "r0")
    # no device at all: the first stage would pass on nobody, so the rollout is refused
    with pytest.raises(RolloutError, match="stage canary targets no device of b/stable"):
        orch.start("b", "stable", "2.0.0", plan, "r0")
    assert pub.calls == []
    store.register_device("c1", "b", "canary", clock[0])
    r = orch.start("b", "stable", "2.0.0", plan, "r1")
    assert pub.calls[-1]["rollout"] == {"id": "r1", "state": "active", "groups": ["canary"],
                                        "percentage": 0.0, "window": None}
    assert [h["kind"] for h in store.history("r1")] == ["start", "warning"]  # general: nobody yet
    with pytest.raises(ConflictError, match="still active"):
        orch.start("b", "stable", "2.0.0", plan, "r2")
    assert orch.evaluate("r1").action == "none"  # the canary has not reported
    clock[0] += 1
    store.ingest([("c1", [{"device_id": "c1", "seq": 1, "event": "downloading", "rollout": "r1"},
                          {"device_id": "c1", "seq": 2, "event": "confirmed", "rollout": "r1"}])], clock[0])
    # canary passes; general's 50% step adds nobody (a ramp step may), its last step waits
    d = orch.evaluate("r1")
    assert d.action == "advance"
    assert [c["rollout"]["percentage"] for c in pub.calls] == [0.0, 50.0, 100.0]
    assert [c["seq"] for c in pub.calls] == [1, 2, 3]
    st = orch.status("r1")
    assert st["rollout"]["state"] == "active" and st["waiting"].startswith("general: targets no device")
    # a plan may say so explicitly: an empty stage is skipped
    orch.abort("r1")
    skip = plan_with_overrides({"stages": [{"name": "canary"}, {"name": "general", "percentages": [100],
                                                                "skip_if_empty": True}]}, {"soak": 0})
    orch.start("b", "stable", "2.0.0", skip, "r1b")
    store.ingest([("c1", [{"device_id": "c1", "seq": 3, "event": "confirmed", "rollout": "r1b"}])],
                 clock[0] + 1)
    clock[0] += 2
    assert orch.evaluate("r1b").action == "complete"
    r = store.get_rollout("r1b")
    assert r is not None and r.state == "completed" and r.published_seq == pub.calls[-1]["seq"]
    # a publish that fails leaves the intent stored; reconcile finishes it
    orch.start("b", "stable", "2.0.0", plan, "r3")
    pub.fail_next = True
    with pytest.raises(Exception, match="injected"):
        orch.pause("r3")
    stored = store.get_rollout("r3")
    assert stored is not None and stored.state == "paused" and stored.published_revision < stored.revision
    assert orch.reconcile() == ["r3: republished revision 2"]
    assert pub.docs[("b", "stable")]["rollout"]["state"] == "paused"
    assert orch.reconcile() == []
    store.close()


def test_window_times_are_matched_whole() -> None:
    from host_tools.server.plans import check_window
    assert check_window({"start": "01:00", "end": "05:00"}) == {"start": "01:00", "end": "05:00"}
    with pytest.raises(PlanError, match="window.end: expected HH:MM"):
        check_window({"start": "01:00", "end": "05:00\n"})
