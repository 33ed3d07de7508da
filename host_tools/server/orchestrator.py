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

Who counts (README "Rollouts" says the same for operators):
- a device counts in the stage of the first step that targets it: its board and channel are the
  rollout's (registered channel, "stable" if none) and its *registered* group is in the step's
  groups or its sticky bucket is below the step's percentage. A group a device only claims in
  its reports never counts.
- it counts once it reported progress for this rollout after the rollout started. Progress from
  any other device (another board or channel, a group or bucket not reached yet, or stored
  before the rollout existed) is "unexpected": shown, never judged.
- a targeted device that already runs the target version (or newer) and sent nothing is not
  waited for ("up to date").
A started device that neither confirmed nor failed within in_progress_timeout of its attempt's
start counts as failed (timed out). Rates are over a stage's finished devices; failures the
operator accepted by resuming count as finished but not as failures. The gate compares exact
fractions (bad * 100 > threshold * finished), never rounded rates.

When a step passes: on the stage's last step, the stage targets at least one device (or says
skip_if_empty) and at least min_finished devices (those already on the version included; a step
inside a percentage ramp may add nobody); min_finished of the stage's devices that need the
update finished (all of them, if fewer); min_finished of the step's new devices (or all) finished,
the stage has no device in progress (waited for at most in_progress_timeout after the rest was
met), and the soak held: soak counts from the moment the devices were met (``ready_at``) and,
with a window, only time inside the window.
"""

from __future__ import annotations

import re
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Protocol

from host_tools.errors import MpotaError
from host_tools.server.bucket import bucket
from host_tools.server.plans import RolloutPlan, Stage, window_seconds
from host_tools.server.store import DeviceProgress, Rollout, Store
from host_tools.versions import VersionError, compare_versions

if TYPE_CHECKING:
    from host_tools.feed import SeqClaim

_ROLLOUT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}\Z")  # \Z: "$" also takes a final newline
_BIG = 1 << 30
DEFAULT_CHANNEL = "stable"
DEVICE_STATE = {"active": "active", "paused": "paused", "aborted": "halted", "completed": "active"}
_LIMITS = (("failure rate", "failure_rate_threshold", "bad"),
           ("rollback rate", "rollback_rate_threshold", "bad_rolled_back"),
           ("health check failure rate", "health_check_failure_rate", "bad_health"))


class RolloutError(MpotaError):
    pass


class RolloutNotFound(RolloutError):
    pass


class ChannelPublisher(Protocol):
    """Where channel documents go: the real one signs into the feed (publish.FeedPublisher)."""

    def publish(self, board: str, channel: str, version: str, rollout: dict[str, Any],
                claim: SeqClaim | None = None) -> int | None:
        """Re-sign and atomically write the channel document; returns its new seq. With claim the
        seq comes from the store (feed.write_channel); None: a newer decision is published instead."""
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
    accepted: int = 0          # failed/rolled back/timed out, accepted by an operator resume
    bad: int = 0               # failed + rolled back + timed out, not accepted
    bad_rolled_back: int = 0
    bad_health: int = 0
    up_to_date: int = 0        # eligible, already on the target version, sent nothing: not waited for

    @property
    def finished(self) -> int:
        return self.confirmed + self.failed + self.rolled_back + self.timed_out

    def add(self, other: Counts) -> None:
        for name in self.__dataclass_fields__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class StageStats:
    name: str
    steps: list[int]
    counts: Counts
    reached: bool = False
    verdict: str = "pending"   # pending | waiting | pass | fail
    reason: str | None = None
    failure_rate: float | None = None      # percent of finished (for display; the gate is exact)
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
    unexpected: int = 0                     # devices with progress that do not count (see above)
    unexpected_ids: list[str] = field(default_factory=list)  # the first few
    waiting: str | None = None              # what the current step's devices still lack


@dataclass
class Decision:
    action: str                 # none | ready | advance | pause | complete
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


def _at_or_above(target: str) -> Callable[[str], bool]:
    """version -> runs target or newer (a device will not install it); unparsable: False."""
    memo: dict[str, bool] = {target: True}

    def check(version: str) -> bool:
        hit = memo.get(version)
        if hit is None:
            try:
                hit = compare_versions(version, target) >= 0
            except VersionError:
                hit = False
            memo[version] = hit
        return hit
    return check


def step_needs(plan: RolloutPlan, k: int, stage_total: Counts, cohort: Counts) -> str | None:
    """What step k still needs from its devices before its soak starts (None: nothing)."""
    step = plan.steps[k]
    stage = plan.stages[step.stage]
    gate = stage.gate
    last = k == plan.last_step_of_stage(step.stage)
    size = stage_total.targeted + stage_total.up_to_date
    if last and size == 0 and not stage.skip_if_empty:
        return (f"{stage.name}: targets no device (register devices for it, or set skip_if_empty = true "
                f"on the stage)")
    if last and 0 < size < gate.min_finished:
        return (f"{stage.name}: targets {size} device(s), fewer than its min_finished {gate.min_finished} "
                f"(register more devices for it)")
    # devices already on the version count towards the stage's size but are not waited for
    need = min(gate.min_finished, stage_total.targeted)
    if stage_total.finished < need:
        return f"{stage.name}: {stage_total.finished} of {need} devices finished"
    new = min(gate.min_finished, cohort.targeted)
    if cohort.finished < new:
        return f"step {k + 1}: {cohort.finished} of {new} new devices finished"
    return None


def compute_stats(plan: RolloutPlan, rollout: Rollout, devices: Sequence[DeviceProgress], now: float,
                  buckets: BucketCache | None = None) -> RolloutStats:
    k = min(rollout.step, len(plan.steps) - 1)
    step_counts, unexpected, unexpected_ids = _count_devices(plan, rollout, devices, now, k,
                                                             buckets or BucketCache())
    stages, waiting = _judge_stages(plan, k, step_counts)
    return RolloutStats(step=k, stages=stages, step_counts=step_counts, now=now, unexpected=unexpected,
                        unexpected_ids=unexpected_ids, waiting=waiting)


def _first_step_of_groups(plan: RolloutPlan) -> dict[str, int]:
    group_step: dict[str, int] = {}
    for s in plan.steps:
        for g in s.groups:
            group_step.setdefault(g, s.index)
    return group_step


def _count_devices(plan: RolloutPlan, rollout: Rollout, devices: Sequence[DeviceProgress], now: float,
                   k: int, cache: BucketCache) -> tuple[list[Counts], int, list[str]]:
    """Counts per step: each device in the first step up to k that targets it (who counts: see the
    module's docstring); and the devices with progress that do not count: how many, the first few."""
    group_step = _first_step_of_groups(plan)
    pcts = [s.percentage for s in plan.steps]
    use_pct = pcts[k] > 0
    step_counts = [Counts() for _ in plan.steps]
    timeout = plan.in_progress_timeout_s
    rid = rollout.id
    channel = rollout.channel
    created = rollout.created_at
    up_to_date = _at_or_above(rollout.version)
    unexpected = 0
    unexpected_ids: list[str] = []
    # The placement stays inline: this loop runs once per device of the fleet (bench_decision).
    for (device_id, group, status, started_at, _finished_at, health_failed, accepted, version, dev_channel,
         on_board) in devices:
        first = _BIG
        if on_board and (dev_channel or DEFAULT_CHANNEL) == channel:
            if group is not None:
                first = group_step.get(group, _BIG)
            if use_pct and first > k:
                first = min(first, bisect_right(pcts, cache.get(rid, device_id)))
        if status is not None and (started_at is None or started_at < created):
            first = _BIG  # stored before this rollout existed: nobody was offered it then
        if first > k:
            if status is not None:
                unexpected += 1
                if len(unexpected_ids) < 10:
                    unexpected_ids.append(device_id)
            continue
        c = step_counts[first]
        if status is None:
            if version is not None and up_to_date(version):
                c.up_to_date += 1
            else:
                c.targeted += 1
            continue
        _count_attempt(c, status, started_at, health_failed, accepted, now, timeout)
    return step_counts, unexpected, unexpected_ids


def _count_attempt(c: Counts, status: str, started_at: float | None, health_failed: bool, accepted: bool,
                   now: float, timeout: float) -> None:
    """One targeted device's attempt: in progress, timed out (started timeout or more before now), or
    its outcome; failures and health failures count against the gate unless an operator accepted them."""
    c.targeted += 1
    c.started += 1
    if status == "started":
        if now - (started_at or now) < timeout:
            c.in_progress += 1
            return
        c.timed_out += 1
        bad = True
    elif status == "confirmed":
        c.confirmed += 1
        bad = False
    elif status == "rolled_back":
        c.rolled_back += 1
        bad = True
    else:
        c.failed += 1
        bad = True
    if health_failed:
        c.health_failed += 1
    if accepted and (bad or health_failed):
        c.accepted += 1
        return
    if bad:
        c.bad += 1
        if status == "rolled_back":
            c.bad_rolled_back += 1
    if health_failed:
        c.bad_health += 1


def _judge_stages(plan: RolloutPlan, k: int,
                  step_counts: list[Counts]) -> tuple[list[StageStats], str | None]:
    """Each stage's totals and verdict; and what step k's devices still lack (None: nothing)."""
    stages: list[StageStats] = []
    current_stage = plan.steps[k].stage
    waiting: str | None = None
    for si in range(len(plan.stages)):
        st = _stage_stats(plan, si, step_counts, reached=si <= current_stage)
        if st.reached:
            if si == current_stage:
                waiting = step_needs(plan, k, st.counts, step_counts[k])
            st.verdict = "waiting" if waiting is not None and si == current_stage else "pass"
            reason = _gate_failure(plan.stages[si], st.counts)
            if reason is not None:
                st.verdict, st.reason = "fail", reason
        stages.append(st)
    return stages, waiting


def _stage_stats(plan: RolloutPlan, si: int, step_counts: list[Counts], reached: bool) -> StageStats:
    """Stage si's counts (its steps' added up), rates and thresholds; verdict still pending."""
    stage = plan.stages[si]
    idx = [s.index for s in plan.steps if s.stage == si]
    total = Counts()
    for i in idx:
        total.add(step_counts[i])
    gate = stage.gate
    finished = total.finished
    return StageStats(name=stage.name, steps=idx, counts=total, reached=reached,
                      min_finished=gate.min_finished,
                      thresholds={"failure_rate": gate.failure_rate_threshold,
                                  "rollback_rate": gate.rollback_rate_threshold,
                                  "health_check_failure_rate": gate.health_check_failure_rate},
                      failure_rate=_rate(total.bad, finished),
                      rollback_rate=_rate(total.bad_rolled_back, finished),
                      health_check_failure_rate=_rate(total.bad_health, finished))


def _gate_failure(stage: Stage, total: Counts) -> str | None:
    """Why the stage's gate fails (the first limit over), or None; judged from min_finished on."""
    gate = stage.gate
    finished = total.finished
    if finished < gate.min_finished:
        return None
    for label, key, part_name in _LIMITS:
        limit = getattr(gate, key)
        part = getattr(total, part_name)
        if part * 100 > limit * finished:  # exact: 20.4% is above 20%
            return (f"{stage.name}: {label} {100.0 * part / finished:.1f}% > {limit:g}% "
                    f"({part} of {finished} finished devices)")
    return None


def latest_per_channel(rollouts: Sequence[Rollout]) -> set[str]:
    """Ids of the newest rollout of each board/channel: the one its channel document belongs to."""
    newest: dict[tuple[str, str], Rollout] = {}
    for r in rollouts:
        cur = newest.get((r.board, r.channel))
        if cur is None or r.created_at >= cur.created_at:
            newest[(r.board, r.channel)] = r
    return {r.id for r in newest.values()}


def decide(plan: RolloutPlan, rollout: Rollout, stats: RolloutStats, now: float) -> Decision:
    if rollout.state == "completed":
        # watched for plan.watch after completion: late failures still pause it
        if now < (rollout.completed_at or 0.0) + plan.watch_s:
            for st in stats.stages:
                if st.verdict == "fail":
                    return Decision("pause", f"after completion: {st.reason}", numbers=st.to_dict())
            return Decision("none", waiting_for="completed; watching the gates")
        return Decision("none", waiting_for="rollout is completed")
    if rollout.state != "active":
        return Decision("none", waiting_for=f"rollout is {rollout.state}")
    for st in stats.stages:
        if st.verdict == "fail":
            return Decision("pause", st.reason or f"{st.name} gate failed", numbers=st.to_dict())
    k = stats.step
    step = plan.steps[k]
    stage = stats.stages[step.stage]
    if stats.waiting is not None:
        return Decision("none", waiting_for=stats.waiting)
    ready = rollout.ready_at
    if ready is None:
        return Decision("ready", f"{stage.name}: step {k + 1} has the devices it needs; soak "
                                 f"{step.soak_s:g}s starts")
    if stage.counts.in_progress and now - ready < plan.in_progress_timeout_s:
        return Decision("none", waiting_for=f"{stage.name}: {stage.counts.in_progress} device(s) in progress")
    left = step.soak_s - window_seconds(plan.window, ready, now)
    if left > 0:
        where = " (counting window time only)" if plan.window else ""
        return Decision("none", waiting_for=f"{stage.name}: soaking, {left:.0f}s left{where}")
    # what the gate saw when it let the step pass, kept in the history
    seen = {"stages": [st.to_dict() for st in stats.stages if st.reached], "ready_at": ready}
    if k + 1 >= len(plan.steps):
        return Decision("complete", "every stage passed", numbers=seen)
    nxt = plan.steps[k + 1]
    return Decision("advance", f"{stage.name} passed; next: {nxt.stage_name} "
                               f"(groups {', '.join(nxt.groups) or '-'}, {nxt.percentage:g}%)", numbers=seen)


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
        board, channel, rid, revision = rollout.board, rollout.channel, rollout.id, rollout.revision

        def claim(floor: int, sign: Callable[[int], bytes]) -> tuple[int, bytes] | None:
            # seq from the database, the rollout marked published in the same transaction
            return self.store.publish_channel(board, channel, floor, sign, rid, revision)
        seq = pub.publish(board, channel, rollout.version, doc, claim)
        if seq is None:  # another replica moved the rollout on meanwhile and publishes that
            return
        rollout.published_revision = revision
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
                              revision=1, published_revision=0)
            warnings = self.check_fleet(rollout, plan)
            self.store.create_rollout(rollout)
            first = plan.steps[0]
            self.store.add_history(rid, now, "start",
                                   f"started {version} on {board}/{channel}: {first.stage_name} "
                                   f"(groups {', '.join(first.groups) or '-'}, {first.percentage:g}%)")
            for line in warnings:
                self.store.add_history(rid, now, "warning", line)
            self._publish_if_needed(rollout)
            return rollout

    def check_fleet(self, rollout: Rollout, plan: RolloutPlan) -> list[str]:
        """Refuse a rollout whose first stage targets no device today; warnings for later stages
        that target none or fewer than their min_finished (devices may still register)."""
        whole = Rollout.from_dict({**rollout.to_dict(), "step": len(plan.steps) - 1})
        stats = compute_stats(plan, whole, self.store.rollout_progress(rollout.board, rollout.id),
                              rollout.created_at, self._buckets)
        where = f"{rollout.board}/{rollout.channel}"
        warnings = []
        for i, (stage, st) in enumerate(zip(plan.stages, stats.stages, strict=True)):
            size = st.counts.targeted + st.counts.up_to_date
            if size == 0 and not stage.skip_if_empty:
                what = f"stage {stage.name} targets no device of {where}"
                if i == 0:
                    raise RolloutError(f"{what}: register devices for it (mpota deploy --server, or POST "
                                       f"/v1/devices), or set skip_if_empty = true on the stage")
                warnings.append(f"{what} yet: it will wait until devices register")
            elif 0 < size < stage.gate.min_finished:
                warnings.append(f"stage {stage.name} targets {size} device(s) of {where}, fewer than its "
                                f"min_finished {stage.gate.min_finished}: it will wait until more register")
        return warnings

    def pause(self, rollout_id: str, reason: str = "paused by operator") -> Rollout:
        with self._lock:
            r = self._get(rollout_id)
            self._check_current(r, "paused")
            if r.state not in ("active", "completed"):
                raise RolloutError(f"rollout {rollout_id} is {r.state}, not active")

            def mutate(x: Rollout) -> None:
                x.state, x.reason, x.numbers = "paused", reason, None
            return self._change(r, "pause", reason, None, mutate)

    def _check_current(self, r: Rollout, what: str) -> None:
        """A completed rollout can still be halted while its channel document is its own."""
        if r.state == "completed" and r.id not in latest_per_channel(self.store.list_rollouts()):
            raise RolloutError(f"rollout {r.id} is completed and a newer rollout owns {r.board}/{r.channel}; "
                               f"it cannot be {what}")

    def resume(self, rollout_id: str) -> Rollout:
        with self._lock:
            r = self._get(rollout_id)
            if r.state != "paused":
                raise RolloutError(f"rollout {rollout_id} is {r.state}, not paused")
            now = self.clock()
            # what tripped the gate so far is accepted by the operator; failures after this count
            accepted = self.store.accept_failures(rollout_id, now - self.plan_of(r).in_progress_timeout_s)

            def mutate(x: Rollout) -> None:
                x.state, x.reason, x.numbers = "active", None, None
            return self._change(r, "resume", f"resumed by operator ({accepted} failure(s) so far accepted)",
                                None, mutate)

    def abort(self, rollout_id: str, reason: str = "aborted by operator") -> Rollout:
        with self._lock:
            r = self._get(rollout_id)
            self._check_current(r, "aborted")
            if r.state not in ("active", "paused", "completed"):
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
            if rollout.state not in ("active", "completed"):
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
            if d.action not in ("advance", "ready"):
                return d
        return decision

    def _act(self, r: Rollout, plan: RolloutPlan, d: Decision, now: float) -> None:
        if d.action == "pause":
            def pause(x: Rollout) -> None:
                x.state, x.reason, x.numbers = "paused", d.reason, d.numbers
            self._change(r, "auto-pause", d.reason, d.numbers, pause)
        elif d.action == "ready":
            def ready(x: Rollout) -> None:
                x.ready_at = now
            self._change(r, "ready", d.reason, None, ready)
        elif d.action == "advance":
            nxt = plan.steps[r.step + 1]

            def advance(x: Rollout) -> None:
                x.step += 1
                x.step_started_at = now
                x.ready_at = None
            self._change(r, "advance", f"step {nxt.index + 1}/{len(plan.steps)}: {d.reason}", d.numbers,
                         advance)
        elif d.action == "complete":
            def complete(x: Rollout) -> None:
                x.state, x.reason, x.completed_at = "completed", None, now
            self._change(r, "complete", d.reason, d.numbers, complete)

    def evaluate_all(self) -> list[tuple[str, Decision]]:
        out = []
        rollouts = self.store.list_rollouts()
        current = latest_per_channel(rollouts)
        now = self.clock()
        for r in rollouts:
            watched = (r.state == "completed" and r.id in current
                       and now < (r.completed_at or 0.0) + float(r.plan.get("watch", 3600.0)))
            if r.state == "active" or watched:
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
                "unexpected": {"devices": stats.unexpected, "first": stats.unexpected_ids},
                "waiting": stats.waiting, "installs": self.store.install_kinds(rollout_id),
                "next": asdict(decision), "history": self.store.history(rollout_id)}
