"""What one group commit of reports writes, worked out the same way for both store backends.

``plan_ingest`` takes the requests of a commit (a device id and its validated reports each) and
returns the rows to write: an events row per stored report, one ``DeviceRow`` per device
(the inventory its newest report describes), the rollout progress that moved, and a result per
request. A request holding a seq the device already sent is refused whole (the replay check).
The backend says what it knows: a device's key and highest stored seq (``KnownDevice``; a new
device gets its devices row first), whether a seq is stored, a device's progress in a rollout.

The store checks what its columns need (text without NUL, valid Unicode, integers in range) and
raises UnstorableError for anything else a report holds that it cannot write: a 4xx the device
drops. Any other exception is the server's fault and must not be passed off as the client's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, NoReturn

import orjson

# A validated report, as the app hands it over (see ingest.validate_report).
Report = dict[str, Any]

# Integers a report may hold: JSON-safe, and within every integer column of both databases.
MAX_INT = 1 << 53

# Rollout progress of one device: status is None (targeted, nothing yet), "started", "confirmed",
# "failed" or "rolled_back"; health_failed is sticky once a health_failed event arrived; accepted
# is set by an operator resume (the failure so far no longer counts) and cleared by a new attempt.
STARTED_EVENTS = frozenset({"downloading", "downloaded", "installed"})
# `failed` reasons that say the board, not the release, stopped the install (a power cut
# before set_boot() finished): the device retries, so the rollout still counts it as started,
# with its in-progress clock restarted for the next attempt.
RETRIED_REASONS = frozenset({"interrupted"})
# `failed` reasons that change nothing: update() was called again while the installed update
# waits for its trial boot; that install goes on (same attempt, same clock).
WAITING_REASONS = frozenset({"pending"})
# Every `failed` reason that does not count against a rollout (docs/ARCHITECTURE.md "Reports").
EXCUSED_REASONS = RETRIED_REASONS | WAITING_REASONS
PROGRESS_EVENTS = STARTED_EVENTS | {"confirmed", "failed", "health_failed", "rolled_back"}


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0     # > 0: the request was refused whole (409), nothing stored
    progress: bool = False  # some accepted report moved a rollout


@dataclass
class Progress:
    status: str | None
    started_at: float | None
    finished_at: float | None
    health_failed: int
    accepted: int = 0


class KnownDevice(NamedTuple):
    """What the store knows of a device before a commit."""

    key: int       # devices.device_key: what events rows and the replay index hold
    last_seq: int  # highest seq stored (-1: none)


# One events row. Rows are plain tuples in EVENT_COLUMNS order, made in one place (event_rows):
# sqlite3 binds an exact tuple about 45% faster than a NamedTuple (it takes the generic sequence
# path for a subclass), and this is the hot path of ingest. Columns are what queries select or
# filter on; the rest of the report is one compact JSON object (REPORT_FIELDS, None left out):
# every column bound costs the insert about as much as encoding a field.
EVENT_COLUMNS = ("received", "device_key", "seq", "event", "rollout", "report")
EventRow = tuple[float, int, int, str, "str | None", str]
REPORT_FIELDS = ("time", "uptime_ms", "board", "group", "version", "slot", "target", "detail")  # in "report"
# Fields stored as text columns (checked: no NUL, valid Unicode): the events row's, for every
# report; the devices row's, for the report that sets it. The rest goes into the JSON object,
# where orjson refuses a lone surrogate and writes a NUL as an escape.
_EVENT_TEXT = ("event", "rollout")
_DEVICE_TEXT = ("event", "board", "group", "version", "slot", "rollout", "target")


INSERT_EVENT = (f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(EVENT_COLUMNS))})")


@dataclass(slots=True)
class DeviceRow:
    """The update of one devices row (UPDATE_DEVICE): None keeps the stored value. A report's
    group is only what the device claims; its board counts until an operator registered it."""

    device_key: int
    last_seen: float
    last_seq: int
    board: str | None = None
    claimed_group: str | None = None
    version: str | None = None
    slot: str | None = None
    rollout: str | None = None
    target: str | None = None
    last_event: str | None = None
    last_event_at: float | None = None
    health: str | None = None
    free_mem: int | None = None

    def params(self) -> tuple[Any, ...]:
        return (self.board, self.claimed_group, self.last_seen, self.last_seen, self.version, self.slot,
                self.last_event, self.last_event_at, self.health, self.free_mem, self.rollout, self.target,
                self.last_seq, self.device_key)

    def inventory(self) -> Inventory:
        """What this update asks of the inventory columns. The UPDATE is idempotent: asked again,
        with no other write to the row in between, it changes none of them."""
        return (self.board, self.claimed_group, self.version, self.slot, self.last_event, self.health,
                self.rollout, self.target)

    def seen_params(self) -> tuple[Any, ...]:
        return (self.last_seen, self.last_event_at, self.free_mem, self.last_seq, self.device_key)


# What a report sets in a devices row besides when it was seen (board, claimed group, version,
# slot, last event, health, rollout, target): the same from one report to the next, mostly.
Inventory = tuple["str | None", ...]


# last_seq is set, not compared: the plan read it under the same write lock (SQLite's single
# writer, PostgreSQL's row lock), so it is the stored value or a higher one.
UPDATE_DEVICE = """
UPDATE devices SET
    board = CASE WHEN registered_at IS NULL THEN COALESCE(?, board) ELSE board END,
    claimed_grp = COALESCE(?, claimed_grp), first_seen = COALESCE(first_seen, ?), last_seen = ?,
    version = COALESCE(?, version),
    slot = COALESCE(?, slot), last_event = COALESCE(?, last_event),
    last_event_at = COALESCE(?, last_event_at), health = COALESCE(?, health),
    free_mem = COALESCE(?, free_mem), rollout = COALESCE(?, rollout), target = COALESCE(?, target),
    last_seq = ?
WHERE device_key = ?
"""

# The columns that move with every report, alone: what UPDATE_DEVICE writes when it asks the
# same inventory as the previous update of the row (its other SETs would change nothing).
UPDATE_DEVICE_SEEN = """
UPDATE devices SET last_seen = ?, last_event_at = COALESCE(?, last_event_at),
    free_mem = COALESCE(?, free_mem), last_seq = ?
WHERE device_key = ?
"""

UPSERT_PROGRESS = """
INSERT INTO progress (rollout_id, device_id, status, started_at, finished_at, health_failed, updated_at,
                      accepted)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(rollout_id, device_id) DO UPDATE SET status = excluded.status,
    started_at = excluded.started_at, finished_at = excluded.finished_at,
    health_failed = excluded.health_failed, updated_at = excluded.updated_at, accepted = excluded.accepted
"""


@dataclass
class IngestPlan:
    """What one group commit writes."""

    now: float
    results: list[IngestResult] = field(default_factory=list)
    events: list[EventRow] = field(default_factory=list)
    devices: dict[str, DeviceRow] = field(default_factory=dict)
    progress: dict[tuple[str, str], Progress] = field(default_factory=dict)  # (rollout, device)

    def device_params(self) -> list[tuple[Any, ...]]:
        return [row.params() for row in self.devices.values()]

    def known(self) -> dict[str, KnownDevice]:
        """Each device's key and highest seq once this commit is stored."""
        return {d: KnownDevice(row.device_key, row.last_seq) for d, row in self.devices.items()}

    def progress_params(self) -> list[tuple[Any, ...]]:
        now = self.now
        return [(rollout, device, p.status, p.started_at, p.finished_at, p.health_failed, now, p.accepted)
                for (rollout, device), p in self.progress.items()]


def plan_ingest(requests: Sequence[tuple[str, Sequence[Report]]], now: float,
                known: Callable[[str], KnownDevice], seen: Callable[[int, int], bool],
                progress_of: Callable[[tuple[str, str]], Progress | None]) -> IngestPlan:
    """The rows a batch of requests writes. known(device_id): its key and highest stored seq;
    seen(device_key, seq): that seq is stored (only asked for seq <= the highest); progress_of:
    the stored progress of (rollout, device)."""
    plan = IngestPlan(now)
    results, events, devices = plan.results, plan.events, plan.devices
    in_commit: set[tuple[int, int]] = set()  # (device key, seq) stored by earlier requests of this commit
    for device_id, reports in requests:
        earlier = devices.get(device_id)  # the row of an earlier request of this commit
        device = known(device_id) if earlier is None else KnownDevice(earlier.device_key, earlier.last_seq)
        replays = count_replays(device, reports, in_commit, seen)
        if replays:  # all or nothing: the request changes nothing
            results.append(IngestResult(0, replays))
            continue
        events += event_rows(device.key, reports, now, in_commit)
        devices[device_id] = describe_device(device, reports, now, earlier)
        moved = advance_rollouts(plan.progress, device_id, reports, now, progress_of)
        results.append(IngestResult(len(reports), 0, moved))
    return plan


def count_replays(device: KnownDevice, reports: Sequence[Report], in_commit: set[tuple[int, int]],
                  seen: Callable[[int, int], bool]) -> int:
    """How many of the reports hold a seq already stored (exact match)."""
    top, key = device.last_seq, device.key
    replays = 0
    for r in reports:
        seq = r["seq"]
        if type(seq) is not int or not 0 <= seq < MAX_INT:
            _refuse(f"seq {str(seq)[:24]} is not a whole number in [0, 2^53)")
        if seq <= top and ((key, seq) in in_commit or seen(key, seq)):
            replays += 1
    return replays


def event_rows(device_key: int, reports: Sequence[Report], now: float,
               in_commit: set[tuple[int, int]]) -> list[EventRow]:
    rows: list[EventRow] = []
    for r in reports:
        in_commit.add((device_key, r["seq"]))
        check_text_fields(r, _EVENT_TEXT)
        rest = {k: v for k in REPORT_FIELDS if (v := r.get(k)) is not None}
        try:
            report_json = _dumps(rest)
        except (ValueError, TypeError, RecursionError) as exc:  # NaN, a value JSON has no form for
            _refuse(f"report is not JSON ({exc})")
        rows.append((now, device_key, r["seq"], r["event"], r.get("rollout"), report_json))
    return rows


# the report fields the newest report sets in DeviceRow, in its order after last_seq
_INVENTORY_FIELDS = ("board", "group", "version", "slot", "rollout", "target")


def describe_device(device: KnownDevice, reports: Sequence[Report], now: float,
                    earlier: DeviceRow | None) -> DeviceRow:
    """The device's row after this request: the inventory its newest report describes (a late
    older report only counts as seen), health marked by a health_failed report anywhere in it;
    merged into the row of an earlier request of the same commit."""
    top = device.last_seq if earlier is None else earlier.last_seq
    newest = None
    health = None
    for r in reports:
        if r["seq"] > top:
            top = r["seq"]
            newest = r
        if r["event"] == "health_failed":
            health = failed_health(r.get("detail"))
    if newest is None:
        row = DeviceRow(device.key, now, top, health=health)
    else:
        check_text_fields(newest, _DEVICE_TEXT)
        row = DeviceRow(device.key, now, top, *map(newest.get, _INVENTORY_FIELDS))
        row.health = health
        event = row.last_event = newest["event"]
        row.last_event_at = now
        detail = newest.get("detail")
        if detail:
            said = detail.get("health")
            if type(said) is str:
                row.health = column_text(said[:32], "detail.health")
            free = detail.get("free")
            if type(free) is int and -MAX_INT < free < MAX_INT:
                row.free_mem = free
        if event == "confirmed":
            row.health = "ok"
        elif event == "health_failed":
            row.health = failed_health(detail)
    return row if earlier is None else merge_device_rows(earlier, row)


def merge_device_rows(earlier: DeviceRow, later: DeviceRow) -> DeviceRow:
    """What two requests of one commit write into the device's row: the later's values where
    it has them (None keeps, as in the UPDATE)."""
    for name in DeviceRow.__slots__:
        value = getattr(later, name)
        if value is not None:
            setattr(earlier, name, value)
    return earlier


def failed_health(detail: dict[str, Any] | None) -> str:
    check = detail.get("check") if detail else None
    return column_text(f"failed:{check}", "detail.check") if isinstance(check, str) else "failed"


def advance_rollouts(progress: dict[tuple[str, str], Progress], device_id: str, reports: Sequence[Report],
                     now: float, progress_of: Callable[[tuple[str, str]], Progress | None]) -> bool:
    """Move the device's progress in every rollout its reports name; True when one moved."""
    moved = False
    for r in reports:
        rollout, event = r.get("rollout"), r["event"]
        if rollout and event in PROGRESS_EVENTS:
            key = (rollout, device_id)
            current = progress.get(key)
            if current is None:
                current = progress_of(key)
            detail = r.get("detail")
            progress[key] = advance_progress(current, event, now, detail.get("reason") if detail else None)
            moved = True
    return moved


def advance_progress(p: Progress | None, event: str, now: float, reason: object = None) -> Progress:
    """The progress of a device after one more event of the rollout (pure; table-tested);
    `reason` is the report's detail.reason."""
    if p is None:
        p = Progress(None, None, None, 0)
    status, started, finished, health = p.status, p.started_at, p.finished_at, p.health_failed
    accepted = p.accepted
    if event == "failed" and reason in WAITING_REASONS:
        return p
    if event == "failed" and reason in RETRIED_REASONS:
        if status in (None, "started", "failed"):  # the board retries: a new attempt, a new clock
            status, started, finished, accepted = "started", now, None, 0
    elif event in STARTED_EVENTS:
        if status in (None, "failed"):  # a new attempt (a failed download is retried): a new clock
            status, started, finished, accepted = "started", now, None, 0
    elif event == "confirmed":
        status, finished = "confirmed", now
        started = started if started is not None else now
    elif event in ("failed", "health_failed"):
        if event == "health_failed":
            health = 1
        if status != "confirmed" or event == "health_failed":
            if status != "rolled_back":
                status, finished = "failed", now
        started = started if started is not None else now
    elif event == "rolled_back":
        status, finished = "rolled_back", now
        started = started if started is not None else now
    return Progress(status, started, finished, health, accepted)


# ------------------------------------------------------------------ what the columns can hold
def check_text_fields(report: Report, names: tuple[str, ...]) -> None:
    """The report's fields `names` hold text both databases store (checked at once: one join)."""
    try:
        joined = "".join(filter(None, map(report.get, names)))
    except TypeError:
        joined = "\x00"  # not all text: the slow path below says which
    if "\x00" in joined or not (joined.isascii() or _utf8(joined)):
        for name in names:
            column_text(report.get(name), name)


def column_text(value: Any, name: str) -> Any:
    """value (None or text a column of both databases holds: no NUL, valid Unicode), else refused."""
    if value is None or (type(value) is str and "\x00" not in value and (value.isascii() or _utf8(value))):
        return value
    if type(value) is not str:
        _refuse(f"{name} is not text")
    if "\x00" in value:
        _refuse(f"{name} holds a NUL character")
    _refuse(f"{name} is not valid Unicode (a lone surrogate)")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _dumps(obj: dict[str, Any]) -> str:
    """Compact JSON, refusing what JSON has no form for. orjson (several times faster than the
    json module) refuses lone surrogates and integers beyond 64 bits but writes NaN and Infinity
    as null: a null in its output is looked at again."""
    out = orjson.dumps(obj)
    if b"null" in out and _nonfinite(obj):
        raise ValueError("NaN or Infinity")
    return out.decode()


def _nonfinite(obj: dict[str, Any] | list[Any]) -> bool:
    values: Any = obj.values() if isinstance(obj, dict) else obj
    for v in values:
        if (isinstance(v, float) and v - v != 0.0) or (isinstance(v, (dict, list)) and _nonfinite(v)):
            return True
    return False


def _refuse(why: str) -> NoReturn:
    from host_tools.server.store import UnstorableError  # store imports this module

    raise UnstorableError(f"cannot store: {why[:160]}")
