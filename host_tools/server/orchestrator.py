"""The rollout orchestrator: per-stage statistics, the gate, and advancing/pausing/completing.

Pure part (``compute_stats``, ``decide``): from the plan, the rollout and every device's progress,
work out who each step targets (the device's own eligibility rule, see bucket.py), per-stage
counts, rates and a verdict, and what to do next. bench/bench_decision.py times these.

Acting part (``Orchestrator``): changes a rollout with crash safety in three steps:
1. store the new state with a higher ``revision`` (the intent),
2. publish the channel document for it (re-signed, higher seq, atomic file replace),
3. record ``published_revision``.
A crash between 1 and 3 leaves published_revision < revision; ``reconcile()`` (at start and on
every tick) compares the document on disk with the stored state and republishes or just marks.

A device counts in the stage of the first step that targets it. A started device that neither
confirmed nor failed within the plan's in_progress_timeout counts as failed (timed out).
Rates are over *judged* devices: finished ones, and only those finishing at/after the last
operator resume (so a resume overrides what was already seen).
"""

from __future__ import annotations

import re
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Protocol

from host_tools.errors import MpotaError
from host_tools.server.bucket import bucket
from host_tools.server.plans import RolloutPlan
from host_tools.server.store import DeviceProgress, Rollout, Store

_ROLLOUT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_BIG = 1 << 30
DEVICE_STATE = {"active": "active", "paused": "paused", "aborted": "halted", "completed": "active"}


class RolloutError(MpotaError):
    pass


class RolloutNotFound(RolloutError):
    pass


class ChannelPublisher(Protocol):
    """Where channel documents go: the real one signs into the feed (publish.FeedPublisher)."""

    def publish(self, board: str, channel: str, version: str, rollout: dict[str, Any]) -> int:
        """Re-sign and atomically write the channel document; returns its new seq."""
        ...

    def current(self, board: str, channel: str) -> dict[str, Any] | None:
        """{"seq", "version", "rollout"} of the channel document on disk, or None."""
        ...

    def release_exists(self, board: str, version: str) -> bool: ...


@dataclass
class Counts:
    targeted: int = 0
    started: int = 0
    in_progress: int = 0
    confirmed: int = 0
    failed: int = 0
    rolled_back: int = 0
    timed_out: int = 0
    health_failed: int = 0
    judged: int = 0
    judged_bad: int = 0        # failed + rolled back + timed out, among judged
    judged_rolled_back: int = 0
    judged_health: int = 0

    @property
    def finished(self) -> int:
        return self.confirmed + self.failed + self.rolled_back + self.timed_out


@dataclass
class StageStats:
    name: str
    steps: list[int]
    counts: Counts
    reached: bool = False
    verdict: str = "pending"   # pending | waiting | pass | fail
    reason: str | None = None
    failure_rate: float | None = None      # percent of judged
    rollback_rate: float | None = None
    health_check_failure_rate: float | None = None
    thresholds: dict[str, float] = field(default_factory=dict)
    min_finished: int = 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["counts"]["finished"] = self.counts.finished
        return d


@dataclass
class RolloutStats:
    step: int
    stages: list[StageStats]
    step_counts: list[Counts]
    now: float


@dataclass
class Decision:
    action: str                 # none | advance | pause | complete
    reason: str = ""
    numbers: dict[str, Any] | None = None
    waiting_for: str = ""


class BucketCache:
    """Buckets per (rollout, device): one SHA-256 per device per rollout, not per decision."""

    def __init__(self) -> None:
        self._rollout: str | None = None
        self._values: dict[str, float] = {}

    def get(self, rollout_id: str, device_id: str) -> float:
        if rollout_id != self._rollout:
            self._rollout = rollout_id
            self._values = {}
        value = self._values.get(device_id)
        if value is None:
            value = self._values[device_id] = bucket(rollout_id, device_id)
        return value


def _rate(part: int, whole: int) -> float | None:
    return None if whole == 0 else round(100.0 * part / whole, 2)


def compute_stats(plan: RolloutPlan, rollout: Rollout, devices: Sequence[DeviceProgress], now: float,
                  buckets: BucketCache | None = None) -> RolloutStats:
    steps = plan.steps
    k = min(rollout.step, len(steps) - 1)
    cache = buckets or BucketCache()
    group_step: dict[str, int] = {}
    for s in steps:
        for g in s.groups:
            group_step.setdefault(g, s.index)
    pcts = [s.percentage for s in steps]
    use_pct = pcts[k] > 0
    step_counts = [Counts() for _ in steps]
    timeout = plan.in_progress_timeout_s
    since = rollout.gate_since
    rid = rollout.id
    for device_id, group, status, started_at, finished_at, health_failed in devices:
        first = group_step.get(group, _BIG) if group is not None else _BIG
        if use_pct and first > k:
            first = min(first, bisect_right(pcts, cache.get(rid, device_id)))
        if first > k:
            if status is None:
                continue
            first = k  # reported progress without being targeted (group changed): count it where we are
        c = step_counts[first]
        c.targeted += 1
        if status is None:
            continue
        c.started += 1
        if health_failed:
            c.health_failed += 1
        if status == "started":
            started = started_at or now
            if now - started >= timeout:
                c.timed_out += 1
                if started + timeout >= since:
                    c.judged += 1
                    c.judged_bad += 1
            else:
                c.in_progress += 1
            continue
        if status == "confirmed":
            c.confirmed += 1
        elif status == "failed":
            c.failed += 1
        elif status == "rolled_back":
            c.rolled_back += 1
        if (finished_at or now) >= since:
            c.judged += 1
            if status != "confirmed":
                c.judged_bad += 1
            if status == "rolled_back":
                c.judged_rolled_back += 1
            if health_failed:
                c.judged_health += 1
    stages: list[StageStats] = []
    current_stage = steps[k].stage
    for si, stage in enumerate(plan.stages):
        idx = [s.index for s in steps if s.stage == si]
        total = Counts()
        for i in idx:
            for name in total.__dataclass_fields__:
                setattr(total, name, getattr(total, name) + getattr(step_counts[i], name))
        gate = stage.gate
        st = StageStats(name=stage.name, steps=idx, counts=total, reached=si <= current_stage,
                        min_finished=gate.min_finished,
                        thresholds={"failure_rate": gate.failure_rate_threshold,
                                    "rollback_rate": gate.rollback_rate_threshold,
                                    "health_check_failure_rate": gate.health_check_failure_rate})
        st.failure_rate = _rate(total.judged_bad, total.judged)
        st.rollback_rate = _rate(total.judged_rolled_back, total.judged)
        st.health_check_failure_rate = _rate(total.judged_health, total.judged)
        if st.reached:
            needed = min(gate.min_finished, total.targeted)
            st.verdict = "waiting" if total.finished < needed else "pass"
            if total.judged >= max(needed, 1):
                for label, rate, limit, part in (
                        ("failure rate", st.failure_rate, gate.failure_rate_threshold, total.judged_bad),
                        ("rollback rate", st.rollback_rate, gate.rollback_rate_threshold,
                         total.judged_rolled_back),
                        ("health check failure rate", st.health_check_failure_rate,
                         gate.health_check_failure_rate, total.judged_health)):
                    if rate is not None and rate > limit:
                        st.verdict = "fail"
                        st.reason = (f"{stage.name}: {label} {rate:.1f}% > {limit:g}% "
                                     f"({part} of {total.judged} finished devices)")
                        break
        stages.append(st)
    return RolloutStats(step=k, stages=stages, step_counts=step_counts, now=now)


def decide(plan: RolloutPlan, rollout: Rollout, stats: RolloutStats, now: float) -> Decision:
    if rollout.state != "active":
        return Decision("none", waiting_for=f"rollout is {rollout.state}")
    for st in stats.stages:
        if st.verdict == "fail":
            return Decision("pause", st.reason or f"{st.name} gate failed", numbers=st.to_dict())
    k = stats.step
    step = plan.steps[k]
    stage = stats.stages[step.stage]
    gate = plan.stages[step.stage].gate
    if stage.verdict == "waiting":
        need = min(gate.min_finished, stage.counts.targeted)
        return Decision("none",
                        waiting_for=f"{stage.name}: {stage.counts.finished} of {need} devices finished")
    if stage.counts.in_progress:
        return Decision("none", waiting_for=f"{stage.name}: {stage.counts.in_progress} device(s) in progress")
    cohort = stats.step_counts[k]
    need = min(gate.min_finished, cohort.targeted)
    if cohort.finished < need:
        return Decision("none", waiting_for=f"step {k + 1}: {cohort.finished} of {need} new devices finished")
    left = step.soak_s - (now - rollout.step_started_at)
    if cohort.targeted and left > 0:
        return Decision("none", waiting_for=f"{stage.name}: soaking, {left:.0f}s left")
    if k + 1 >= len(plan.steps):
        return Decision("complete", "every stage passed")
    nxt = plan.steps[k + 1]
    return Decision("advance", f"{stage.name} passed; next: {nxt.stage_name} "
                               f"(groups {', '.join(nxt.groups) or '-'}, {nxt.percentage:g}%)")


def default_rollout_id(board: str, version: str, now: float) -> str:
    stamp = datetime.fromtimestamp(now, timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"r-{stamp}-{version}"


class Orchestrator:
    """Drives rollouts; every method is safe to call from any thread (one lock for changes)."""

    def __init__(self, store: Store, publisher: ChannelPublisher | None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.publisher = publisher
        self.clock = clock
        self._lock = threading.RLock()
        self._buckets = BucketCache()

    # ----------------------------------------------------------------- helpers
    def _publisher(self) -> ChannelPublisher:
        if self.publisher is None:
            raise RolloutError("this server has no rollout key (start it with --rollout-key KEY)")
        return self.publisher

    def _get(self, rollout_id: str) -> Rollout:
        r = self.store.get_rollout(rollout_id)
        if r is None:
            raise RolloutNotFound(f"no rollout {rollout_id!r}")
        return r

    def plan_of(self, rollout: Rollout) -> RolloutPlan:
        return RolloutPlan.from_dict(rollout.plan)

    def channel_rollout(self, rollout: Rollout, plan: RolloutPlan | None = None) -> dict[str, Any]:
        plan = plan or self.plan_of(rollout)
        step = min(rollout.step, len(plan.steps) - 1)
        return plan.rollout_doc(rollout.id, step, DEVICE_STATE[rollout.state])

    def _change(self, rollout: Rollout, kind: str, message: str, numbers: dict[str, Any] | None,
                mutate: Callable[[Rollout], None]) -> Rollout:
        """Intent (store), publish, mark published; history line. Caller holds the lock."""
        before = self.channel_rollout(rollout)
        expect = rollout.revision
        mutate(rollout)
        rollout.updated_at = self.clock()
        if self.channel_rollout(rollout) != before:
            rollout.revision += 1
        self.store.save_rollout(rollout, expect)
        self.store.add_history(rollout.id, rollout.updated_at, kind, message, numbers)
        self._publish_if_needed(rollout)
        return rollout

    def _publish_if_needed(self, rollout: Rollout) -> None:
        if rollout.published_revision >= rollout.revision:
            return
        doc = self.channel_rollout(rollout)
        pub = self._publisher()
        seq = pub.publish(rollout.board, rollout.channel, rollout.version, doc)
        self.store.mark_published(rollout.id, rollout.revision, seq)
        rollout.published_revision = rollout.revision
        rollout.published_seq = seq

    # ----------------------------------------------------------------- operator
    def start(self, board: str, channel: str, version: str, plan: RolloutPlan,
              rollout_id: str | None = None) -> Rollout:
        with self._lock:
            pub = self._publisher()
            now = self.clock()
            rid = rollout_id or default_rollout_id(board, version, now)
            if not _ROLLOUT_ID.match(rid):
                raise RolloutError(f"invalid rollout id {rid!r}")
            if not pub.release_exists(board, version):
                raise RolloutError(f"release {version} for {board} is not in the feed (publish it first)")
            rollout = Rollout(id=rid, board=board, channel=channel, version=version, plan=plan.to_dict(),
                              state="active", step=0, step_started_at=now, created_at=now, updated_at=now,
                              gate_since=0.0, revision=1, published_revision=0)
            self.store.create_rollout(rollout)
            first = plan.steps[0]
            self.store.add_history(rid, now, "start",
                                   f"started {version} on {board}/{channel}: {first.stage_name} "
                                   f"(groups {', '.join(first.groups) or '-'}, {first.percentage:g}%)")
            self._publish_if_needed(rollout)
            return rollout

    def pause(self, rollout_id: str, reason: str = "paused by operator") -> Rollout:
        with self._lock:
            r = self._get(rollout_id)
            if r.state != "active":
                raise RolloutError(f"rollout {rollout_id} is {r.state}, not active")

            def mutate(x: Rollout) -> None:
                x.state, x.reason, x.numbers = "paused", reason, None
            return self._change(r, "pause", reason, None, mutate)

    def resume(self, rollout_id: str) -> Rollout:
        with self._lock:
            r = self._get(rollout_id)
            if r.state != "paused":
                raise RolloutError(f"rollout {rollout_id} is {r.state}, not paused")
            now = self.clock()

            def mutate(x: Rollout) -> None:
                x.state, x.reason, x.numbers = "active", None, None
                x.gate_since = now  # what tripped the gate so far is accepted by the operator
            return self._change(r, "resume", "resumed by operator (earlier failures accepted)", None, mutate)

    def abort(self, rollout_id: str, reason: str = "aborted by operator") -> Rollout:
        with self._lock:
            r = self._get(rollout_id)
            if r.state not in ("active", "paused"):
                raise RolloutError(f"rollout {rollout_id} is already {r.state}")

            def mutate(x: Rollout) -> None:
                x.state, x.reason = "aborted", reason
            return self._change(r, "abort", reason, None, mutate)

    # ----------------------------------------------------------------- the loop
    def stats(self, rollout: Rollout, plan: RolloutPlan | None = None) -> RolloutStats:
        plan = plan or self.plan_of(rollout)
        devices = self.store.rollout_progress(rollout.board, rollout.id)
        return compute_stats(plan, rollout, devices, self.clock(), self._buckets)

    def evaluate(self, rollout_id: str, max_steps: int = 32) -> Decision:
        """Judge the rollout now; advance (possibly several empty steps), pause or complete."""
        decision = Decision("none")
        for _ in range(max_steps):
            rollout = self._get(rollout_id)
            if rollout.state != "active":
                return decision if decision.action != "none" else Decision("none", waiting_for=rollout.state)
            plan = self.plan_of(rollout)
            stats = self.stats(rollout, plan)
            now = self.clock()
            d = decide(plan, rollout, stats, now)
            if d.action == "none":
                return d if decision.action == "none" else decision
            with self._lock:
                latest = self._get(rollout_id)
                if latest.revision != rollout.revision or latest.state != rollout.state \
                        or latest.step != rollout.step:
                    continue  # changed meanwhile: judge again
                self._act(latest, plan, d, now)
            decision = d
            if d.action != "advance":
                return d
        return decision

    def _act(self, r: Rollout, plan: RolloutPlan, d: Decision, now: float) -> None:
        if d.action == "pause":
            def pause(x: Rollout) -> None:
                x.state, x.reason, x.numbers = "paused", d.reason, d.numbers
            self._change(r, "auto-pause", d.reason, d.numbers, pause)
        elif d.action == "advance":
            nxt = plan.steps[r.step + 1]

            def advance(x: Rollout) -> None:
                x.step += 1
                x.step_started_at = now
            self._change(r, "advance", f"step {nxt.index + 1}/{len(plan.steps)}: {d.reason}", None, advance)
        elif d.action == "complete":
            def complete(x: Rollout) -> None:
                x.state, x.reason = "completed", None
            self._change(r, "complete", d.reason, None, complete)

    def evaluate_all(self) -> list[tuple[str, Decision]]:
        out = []
        for r in self.store.list_rollouts():
            if r.state == "active":
                try:
                    out.append((r.id, self.evaluate(r.id)))
                except MpotaError as exc:
                    self.store.add_history(r.id, self.clock(), "error", str(exc))
        return out

    def reconcile(self) -> list[str]:
        """Make the feed agree with the store: republish what was decided but not published."""
        fixed = []
        with self._lock:
            for r in self.store.list_rollouts():
                if r.published_revision >= r.revision or self.publisher is None:
                    continue
                current = self.publisher.current(r.board, r.channel)
                wanted = self.channel_rollout(r)
                if current is not None and current.get("version") == r.version \
                        and current.get("rollout") == wanted:
                    self.store.mark_published(r.id, r.revision, int(current["seq"]))
                    fixed.append(f"{r.id}: marked published (seq {current['seq']})")
                else:
                    self._publish_if_needed(r)
                    fixed.append(f"{r.id}: republished revision {r.revision}")
        return fixed

    def status(self, rollout_id: str) -> dict[str, Any]:
        rollout = self._get(rollout_id)
        plan = self.plan_of(rollout)
        stats = self.stats(rollout, plan)
        decision = decide(plan, rollout, stats, stats.now)
        step = plan.steps[stats.step]
        return {"rollout": rollout.to_dict(), "plan": plan.to_dict(),
                "step": {"index": stats.step, "count": len(plan.steps), "stage": step.stage_name,
                         "groups": list(step.groups), "percentage": step.percentage},
                "channel_rollout": self.channel_rollout(rollout, plan),
                "stages": [s.to_dict() for s in stats.stages],
                "next": asdict(decision), "history": self.store.history(rollout_id)}
