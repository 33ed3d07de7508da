"""Server state behind one interface: devices, events, rollout progress, rollouts.

``Store`` is what the app and the orchestrator use. ``SQLStore`` holds the SQL both backends
share (one text per query, qmark parameters); ``SQLiteStore`` is the embedded default (WAL, one
transaction per group commit) and store_pg.PostgresStore the one several replicas share.
The schema and its versions live in migrations.py; ``plan_ingest`` works out what a batch of
reports writes, the same way for both.

SQLite threading: write methods are meant to run on one writer thread (the app's DB executor),
reads on any thread (each thread gets its own connection; WAL lets readers run beside the writer).
The writer keeps two caches that only it touches: last report seq per device and the rollout
progress of recently seen devices, so the replay check and the progress update need no SELECT.
(PostgreSQL may have several writers, so it keeps no cache: see store_pg.)
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from host_tools.errors import MpotaError
from host_tools.server import migrations

# A validated report, as the app hands it over (see ingest.validate_report).
Report = dict[str, Any]

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
OPEN_STATES = ("active", "paused")


class StoreError(MpotaError):
    pass


class UnstorableError(StoreError):
    """Reports this store can never hold (a value it cannot encode): retrying cannot help, so the
    request is answered with a 4xx the device drops. Passing failures (disk full, locked) stay
    plain StoreErrors (5xx, retried)."""


class ConflictError(StoreError):
    """A compare-and-set lost (someone changed the rollout first) or a uniqueness rule was hit."""


@dataclass
class Rollout:
    id: str
    board: str
    channel: str
    version: str
    plan: dict[str, Any]
    state: str = "active"          # active | paused | aborted | completed
    step: int = 0
    step_started_at: float = 0.0
    created_at: float = 0.0
    updated_at: float = 0.0
    reason: str | None = None      # why it paused / aborted
    numbers: dict[str, Any] | None = None  # the figures behind the reason
    ready_at: float | None = None  # when the current step first met its device needs (soak starts)
    completed_at: float | None = None
    revision: int = 1              # bumps on every change of what should be published
    published_revision: int = 0    # revision the channel document on disk reflects
    published_seq: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Rollout:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class DeviceProgress(NamedTuple):
    """One device's row for a rollout decision (the orchestrator's input; a tuple: 100k are cheap).

    group is the operator's (registered) group, never what reports claim; channel None means the
    default channel "stable"; on_board False: the device reported for the rollout but is not
    listed under its board."""

    device_id: str
    group: str | None
    status: str | None
    started_at: float | None
    finished_at: float | None
    health_failed: bool
    accepted: bool = False
    version: str | None = None
    channel: str | None = None
    on_board: bool = True


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0     # > 0: the request was refused whole (409), nothing stored
    progress: bool = False  # some accepted report moved a rollout


@dataclass
class _Progress:
    status: str | None
    started_at: float | None
    finished_at: float | None
    health_failed: int
    accepted: int = 0
    dirty: bool = field(default=False, compare=False)


class Store(ABC):
    @abstractmethod
    def close(self) -> None: ...

    # --- reports and inventory (writer thread) ---
    @abstractmethod
    def ingest(self, requests: Sequence[tuple[str, Sequence[Report]]], now: float) -> list[IngestResult]:
        """Store every request's reports in one transaction. A request holding a seq the device
        already sent (exact match) is refused whole: duplicates > 0 and nothing of it is stored.
        Committed (durable against a process crash) when this returns."""

    @abstractmethod
    def register_device(self, device_id: str, board: str | None, group: str | None, now: float,
                        reset_seq: bool = False, *, channel: str | None = None,
                        operator: bool = True) -> dict[str, Any]:
        """The operator's registration sets board, group and channel (authoritative); a device
        registering itself (operator=False) only records the group it claims, and its board
        while no operator registered it."""

    # --- reads (any thread) ---
    @abstractmethod
    def get_device(self, device_id: str) -> dict[str, Any] | None: ...

    @abstractmethod
    def list_devices(self, board: str | None = None) -> list[dict[str, Any]]: ...

    @abstractmethod
    def device_events(self, device_id: str | None, limit: int = 50) -> list[dict[str, Any]]: ...

    @abstractmethod
    def inventory_summary(self) -> dict[str, Any]: ...

    @abstractmethod
    def install_kinds(self, rollout_id: str | None = None) -> dict[str, int]: ...

    @abstractmethod
    def rollout_progress(self, board: str, rollout_id: str) -> list[DeviceProgress]:
        """Every known device of the board, with its progress in the rollout (None if none), and
        every other device with progress in it (on_board False)."""

    @abstractmethod
    def accept_failures(self, rollout_id: str, timed_out_before: float) -> int:
        """Mark the rollout's failed, rolled back, health-failed and timed-out (started before
        timed_out_before) devices accepted; returns how many."""

    # --- rollouts (writer thread) ---
    @abstractmethod
    def create_rollout(self, rollout: Rollout) -> None: ...

    @abstractmethod
    def save_rollout(self, rollout: Rollout, expect_revision: int) -> None:
        """Write the rollout if its stored revision is still expect_revision, else ConflictError."""

    @abstractmethod
    def mark_published(self, rollout_id: str, revision: int, seq: int) -> None: ...

    @abstractmethod
    def add_history(self, rollout_id: str, now: float, kind: str, message: str,
                    numbers: dict[str, Any] | None = None) -> None: ...

    # --- rollout reads ---
    @abstractmethod
    def get_rollout(self, rollout_id: str) -> Rollout | None: ...

    @abstractmethod
    def list_rollouts(self) -> list[Rollout]: ...

    @abstractmethod
    def history(self, rollout_id: str) -> list[dict[str, Any]]: ...

    # --- channel documents (the seq every replica publishes from) ---
    @abstractmethod
    def publish_channel(self, board: str, channel: str, floor_seq: int, sign: Callable[[int], bytes],
                        rollout_id: str | None = None, revision: int = 0) -> tuple[int, bytes] | None: ...

    @abstractmethod
    def note_channel(self, board: str, channel: str, seq: int, body: bytes) -> bool: ...

    @abstractmethod
    def channel_docs(self) -> list[tuple[str, str, int, bytes]]: ...

    @abstractmethod
    def leadership(self) -> Leadership: ...


_DEVICE_COLS = ("device_id", "board", "grp", "registered_at", "first_seen", "last_seen", "version", "slot",
                "last_event", "last_event_at", "health", "free_mem", "rollout", "target", "last_seq",
                "claimed_grp", "channel")

# A report's group is only what the device claims (claimed_grp); its board counts until an
# operator registered the device.
_UPSERT_DEVICE = """
INSERT INTO devices (device_id, board, claimed_grp, first_seen, last_seen, version, slot, last_event,
                     last_event_at, health, free_mem, rollout, target, last_seq)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(device_id) DO UPDATE SET
    board = CASE WHEN devices.registered_at IS NULL THEN COALESCE(excluded.board, devices.board)
            ELSE devices.board END,
    claimed_grp = COALESCE(excluded.claimed_grp, devices.claimed_grp),
    first_seen = COALESCE(devices.first_seen, excluded.first_seen), last_seen = excluded.last_seen,
    version = COALESCE(excluded.version, devices.version), slot = COALESCE(excluded.slot, devices.slot),
    last_event = COALESCE(excluded.last_event, devices.last_event),
    last_event_at = COALESCE(excluded.last_event_at, devices.last_event_at),
    health = COALESCE(excluded.health, devices.health),
    free_mem = COALESCE(excluded.free_mem, devices.free_mem),
    rollout = COALESCE(excluded.rollout, devices.rollout), target = COALESCE(excluded.target, devices.target),
    last_seq = CASE WHEN excluded.last_seq > devices.last_seq THEN excluded.last_seq ELSE devices.last_seq END
"""

def _compact_encoder() -> Any:
    """json.dumps(obj, separators=(",", ":"), allow_nan=False) for the flat detail dicts of every
    report: the C encoder made once (json.dumps builds a new one per call, half the cost)."""
    from json import encoder

    make = getattr(encoder, "c_make_encoder", None)
    plain = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
    if make is None:
        return plain

    def refuse(o: object) -> None:
        raise TypeError(f"{type(o).__name__} is not JSON")
    enc = make(None, refuse, encoder.encode_basestring_ascii, None, ":", ",", False, False, False)
    join = "".join
    return lambda obj: join(enc(obj, 0))


_dumps = _compact_encoder()
# the report fields stored in an events row, in column order after `received` (detail last, encoded)
_EVENT_FIELDS = ("device_id", "seq", "event", "time", "uptime_ms", "board", "group", "version", "slot",
                 "rollout", "target")
_LAST_SEQ = "SELECT last_seq FROM devices WHERE device_id = ?"
_INVENTORY_FIELDS = ((1, "board"), (2, "group"), (5, "version"), (6, "slot"), (11, "rollout"), (12, "target"))

_INSERT_EVENT = """
INSERT INTO events (received, device_id, seq, event, device_time, uptime_ms, board, grp, version, slot,
                    rollout, target, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""

_UPSERT_PROGRESS = """
INSERT INTO progress (rollout_id, device_id, status, started_at, finished_at, health_failed, updated_at,
                      accepted)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(rollout_id, device_id) DO UPDATE SET status = excluded.status,
    started_at = excluded.started_at, finished_at = excluded.finished_at,
    health_failed = excluded.health_failed, updated_at = excluded.updated_at, accepted = excluded.accepted
"""


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgres://", "postgresql://"))


def parse_db_url(url: str) -> Path:
    """sqlite:///relative/path, sqlite:////absolute/path, or a plain path."""
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    if "://" in url:
        raise StoreError(f"unsupported database URL {url.split('://')[0]}://... "
                         f"(use sqlite:///PATH or postgresql://USER@HOST:PORT/DBNAME)")
    return Path(url)


def open_store(url: str, synchronous: str = "NORMAL", migrate: bool = True) -> SQLStore:
    """The store a URL names: postgresql://... (several replicas may share it) or SQLite."""
    if is_postgres_url(url):
        try:
            from host_tools.server.store_pg import PostgresStore
        except ImportError:
            raise StoreError("a postgresql:// database needs psycopg: "
                             "pip install 'mpota[postgres]'") from None
        return PostgresStore(url, migrate=migrate)
    return SQLiteStore(parse_db_url(url), synchronous=synchronous, migrate=migrate)


def advance_progress(p: _Progress | None, event: str, now: float, reason: object = None) -> _Progress:
    """The progress of a device after one more event of the rollout (pure; table-tested);
    `reason` is the report's detail.reason."""
    if p is None:
        p = _Progress(None, None, None, 0)
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
    return _Progress(status, started, finished, health, accepted, dirty=True)


_PROGRESS_OF = ("SELECT status, started_at, finished_at, health_failed, accepted FROM progress "
                "WHERE rollout_id = ? AND device_id = ?")
_TEXT_FIELDS = ("event", "board", "group", "version", "slot", "rollout", "target")


@dataclass
class IngestPlan:
    """What one group commit writes, worked out before the transaction (the same on both backends)."""

    results: list[IngestResult]
    events: list[tuple[Any, ...]]
    devices: dict[str, list[Any]]
    new_seq: dict[str, int]
    progress: dict[tuple[str, str], _Progress]

    def progress_rows(self, now: float) -> list[tuple[Any, ...]]:
        return [(k[0], k[1], p.status, p.started_at, p.finished_at, p.health_failed, now, p.accepted)
                for k, p in self.progress.items()]


def plan_ingest(requests: Sequence[tuple[str, Sequence[Report]]], now: float,
                last_seq: Callable[[str], int], seen: Callable[[str, int], bool],
                progress_of: Callable[[tuple[str, str]], _Progress | None]) -> IngestPlan:
    """The rows a batch of requests writes. last_seq: the device's highest stored seq (-1: none);
    seen(device, seq): that seq is already stored (only asked for seq <= last_seq); progress_of:
    the stored progress of (rollout, device). A request holding a seq seen before is refused whole."""
    results: list[IngestResult] = []
    events: list[tuple[Any, ...]] = []
    devices: dict[str, list[Any]] = {}
    new_seq: dict[str, int] = {}
    pending: set[tuple[str, int]] = set()  # (device, seq) stored by earlier requests of this commit
    new_progress: dict[tuple[str, str], _Progress] = {}
    for device_id, reports in requests:
        result = IngestResult()
        results.append(result)
        top = new_seq.get(device_id)
        if top is None:
            top = last_seq(device_id)
        # all or nothing: one seq seen before (exact match) and the request changes nothing
        for r in reports:
            seq = r["seq"]
            if seq <= top and ((device_id, seq) in pending or seen(device_id, seq)):
                result.duplicates += 1
            for name in _TEXT_FIELDS:  # PostgreSQL text cannot hold NUL: refused alike on both backends
                v = r.get(name)
                if v is not None and "\x00" in v:
                    raise UnstorableError(f"{name} holds a NUL character")
        if result.duplicates:
            continue
        dev = devices.get(device_id)
        if dev is None:
            dev = [device_id, None, None, now, now] + [None] * 8 + [top]
            devices[device_id] = dev
        newest = None
        for r in reports:
            seq = r["seq"]
            pending.add((device_id, seq))
            event = r["event"]
            detail = r.get("detail")
            rollout = r.get("rollout")
            events.append((now, *map(r.get, _EVENT_FIELDS), None if detail is None else _dumps(detail)))
            if seq > top:  # the newest report describes the device; a late older one only counts as seen
                top = seq
                newest = r
            if event == "health_failed":
                check = detail.get("check") if detail else None
                dev[9] = f"failed:{check}" if isinstance(check, str) else "failed"
            if rollout and event in PROGRESS_EVENTS:
                pkey = (rollout, device_id)
                cur = new_progress.get(pkey)
                if cur is None:
                    cur = progress_of(pkey)
                new_progress[pkey] = advance_progress(cur, event, now,
                                                      detail.get("reason") if detail else None)
                result.progress = True
        result.accepted = len(reports)
        if newest is not None:
            r = newest
            dev[13] = top
            for i, name in _INVENTORY_FIELDS:
                v = r.get(name)
                if v is not None:
                    dev[i] = v
            event = dev[7] = r["event"]
            dev[8] = now
            detail = r.get("detail")
            if detail:
                h = detail.get("health")
                if type(h) is str:
                    dev[9] = h[:32]
                f = detail.get("free")
                if type(f) is int:
                    dev[10] = f
            if event == "confirmed":
                dev[9] = "ok"
            elif event == "health_failed":
                check = detail.get("check") if detail else None
                dev[9] = f"failed:{check}" if isinstance(check, str) else "failed"
        dev[4] = now
        new_seq[device_id] = top
    return IngestPlan(results, events, devices, new_seq, new_progress)


class Leadership:
    """Whether this process may run the orchestrator now (several replicas: exactly one may)."""

    shared = False  # True where other processes compete for it

    def is_leader(self) -> bool:
        return True

    def close(self) -> None:
        pass


class SQLStore(Store):
    """The SQL both backends share (qmark parameters; the PostgreSQL store translates them).
    Subclasses give connections (_conn: this thread's, autocommit), transactions (_tx) and ingest."""

    dialect = "sqlite"
    _lock: threading.RLock
    _for_update = ""  # row locks where the database has them (SQLite's BEGIN IMMEDIATE locks all)
    _integrity_errors: tuple[type[Exception], ...] = (sqlite3.IntegrityError,)

    @abstractmethod
    def _conn(self) -> Any: ...

    @abstractmethod
    def _tx(self) -> AbstractContextManager[Any]: ...

    def _forget(self, device_id: str | None = None, rollout_id: str | None = None) -> None:
        """Drop what a writer cache holds about a device or a rollout (SQLite's writer caches)."""

    def migrate(self) -> list[tuple[int, str]]:
        """Apply the schema migrations this database lacks; returns them (version, name)."""
        return migrations.migrate(self.dialect, self._tx, time.time())

    def schema_status(self) -> migrations.SchemaStatus:
        return migrations.status(self._conn(), self.dialect)

    def register_device(self, device_id: str, board: str | None, group: str | None, now: float,
                        reset_seq: bool = False, *, channel: str | None = None,
                        operator: bool = True) -> dict[str, Any]:
        with self._lock, self._tx() as conn:
            if operator:
                conn.execute(
                    "INSERT INTO devices (device_id, board, grp, channel, registered_at) "
                    "VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT(device_id) DO UPDATE SET board = COALESCE(excluded.board, devices.board), "
                    "grp = COALESCE(excluded.grp, devices.grp), "
                    "channel = COALESCE(excluded.channel, devices.channel), "
                    "registered_at = excluded.registered_at",
                    (device_id, board, group, channel, now))
            else:
                conn.execute(
                    "INSERT INTO devices (device_id, board, claimed_grp, first_seen) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(device_id) DO UPDATE SET "
                    "board = CASE WHEN devices.registered_at IS NULL "
                    "THEN COALESCE(excluded.board, devices.board) ELSE devices.board END, "
                    "claimed_grp = COALESCE(excluded.claimed_grp, devices.claimed_grp)",
                    (device_id, board, group, now))
            if reset_seq:
                # The board starts counting again (flash erased). Earlier events stay, with their seq
                # moved below every earlier one (negative: outside the replay check, seqs are >= 0).
                low = min(0, conn.execute("SELECT coalesce(min(seq), 0) FROM events WHERE device_id = ?",
                                          (device_id,)).fetchone()[0])
                conn.execute("UPDATE events SET seq = seq - ? + ? WHERE device_id = ? AND seq >= 0",
                             (1 << 53, low, device_id))
                conn.execute("UPDATE devices SET last_seq = -1 WHERE device_id = ?", (device_id,))
                self._forget(device_id=device_id)
        device = self.get_device(device_id)
        assert device is not None
        return device

    # ---------------------------------------------------------------- reads
    @staticmethod
    def _device_dict(row: Sequence[Any]) -> dict[str, Any]:
        d = dict(zip(_DEVICE_COLS, row, strict=True))
        d["group"] = d.pop("grp")
        d["claimed_group"] = d.pop("claimed_grp")
        return d

    def get_device(self, device_id: str) -> dict[str, Any] | None:
        row = self._conn().execute(f"SELECT {', '.join(_DEVICE_COLS)} FROM devices WHERE device_id = ?",
                                   (device_id,)).fetchone()
        return None if row is None else self._device_dict(row)

    def list_devices(self, board: str | None = None) -> list[dict[str, Any]]:
        sql = f"SELECT {', '.join(_DEVICE_COLS)} FROM devices"
        args: tuple[Any, ...] = ()
        if board is not None:
            sql += " WHERE board = ?"
            args = (board,)
        return [self._device_dict(r) for r in self._conn().execute(sql + " ORDER BY device_id", args)]

    def device_events(self, device_id: str | None, limit: int = 50) -> list[dict[str, Any]]:
        cols = ("received", "device_id", "seq", "event", "device_time", "uptime_ms", "board", "grp",
                "version", "slot", "rollout", "target", "detail")
        sql = f"SELECT {', '.join(cols)} FROM events"
        args: tuple[Any, ...] = (limit,)
        if device_id is not None:
            sql += " WHERE device_id = ?"
            args = (device_id, limit)
        out = []
        for row in self._conn().execute(sql + " ORDER BY id DESC LIMIT ?", args):
            d = dict(zip(cols, row, strict=True))
            d["group"] = d.pop("grp")
            d["detail"] = json.loads(d["detail"]) if d["detail"] else None
            out.append(d)
        out.reverse()
        return out

    def inventory_summary(self) -> dict[str, Any]:
        conn = self._conn()
        total = conn.execute("SELECT count(*) FROM devices").fetchone()[0]
        summary: dict[str, Any] = {"devices": total}
        for key, col in (("by_version", "version"), ("by_group", "grp"), ("by_channel", "channel"),
                         ("by_board", "board"), ("by_health", "health"), ("by_last_event", "last_event")):
            rows = conn.execute(f"SELECT {col}, count(*) FROM devices GROUP BY {col} ORDER BY 2 DESC")
            summary[key] = {str(k) if k is not None else "-": n for k, n in rows}
        summary["events"] = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        summary["by_install"] = self.install_kinds()
        return summary

    def install_kinds(self, rollout_id: str | None = None) -> dict[str, int]:
        """Installs by how the image came, from the `installed` reports' detail.delta: full (no
        patch offered), delta (a patch applied), fallback (a patch offered, the full image taken),
        and the bytes the applied patches saved on the wire (full_bytes - bytes, as reported)."""
        sql = "SELECT detail FROM events WHERE event = 'installed'"
        args: tuple[Any, ...] = ()
        if rollout_id is not None:
            sql += " AND rollout = ?"
            args = (rollout_id,)
        out = {"full": 0, "delta": 0, "fallback": 0, "bytes_saved": 0}
        for (text,) in self._conn().execute(sql, args):
            d = json.loads(text) if text else None
            how = d.get("delta") if isinstance(d, dict) else None
            if how == "applied":
                out["delta"] += 1
                full, got = d.get("full_bytes"), d.get("bytes")  # type: ignore[union-attr]
                if type(full) is int and type(got) is int and full > got:
                    out["bytes_saved"] += full - got
            elif isinstance(how, str) and how.startswith("fallback"):
                out["fallback"] += 1
            else:
                out["full"] += 1
        return out

    def rollout_progress(self, board: str, rollout_id: str) -> list[DeviceProgress]:
        conn = self._conn()
        progress = {r[0]: r for r in conn.execute(
            "SELECT device_id, status, started_at, finished_at, health_failed, accepted FROM progress "
            "WHERE rollout_id = ?", (rollout_id,))}
        out = []
        make = DeviceProgress._make
        empty = (None, None, None, False, False)
        for device_id, group, version, channel in conn.execute(
                "SELECT device_id, grp, version, channel FROM devices WHERE board = ?", (board,)):
            p = progress.pop(device_id, None)
            out.append(make((device_id, group,
                             *(empty if p is None else (p[1], p[2], p[3], bool(p[4]), bool(p[5]))),
                             version, channel, True)))
        for device_id, p in progress.items():  # progress from a device not listed under this board
            out.append(make((device_id, None, p[1], p[2], p[3], bool(p[4]), bool(p[5]), None, None, False)))
        return out

    def accept_failures(self, rollout_id: str, timed_out_before: float) -> int:
        with self._lock, self._tx() as conn:
            cur = conn.execute(
                "UPDATE progress SET accepted = 1 WHERE rollout_id = ? AND accepted = 0 AND "
                "(status IN ('failed', 'rolled_back') OR health_failed = 1 OR "
                "(status = 'started' AND started_at <= ?))", (rollout_id, timed_out_before))
            self._forget(rollout_id=rollout_id)  # the writer reads them again
            return int(cur.rowcount)

    # ---------------------------------------------------------------- rollouts
    def create_rollout(self, rollout: Rollout) -> None:
        try:
            with self._lock, self._tx() as conn:
                if conn.execute("SELECT 1 FROM rollouts WHERE id = ?", (rollout.id,)).fetchone():
                    raise ConflictError(f"rollout {rollout.id} already exists")
                row = conn.execute(
                    "SELECT id, state FROM rollouts WHERE board = ? AND channel = ? "
                    "AND state IN ('active', 'paused')",
                    (rollout.board, rollout.channel)).fetchone()
                if row:
                    raise ConflictError(f"rollout {row[0]} on {rollout.board}/{rollout.channel} is still "
                                        f"{row[1]}; abort it first")
                conn.execute("INSERT INTO rollouts (id, board, channel, state, revision, body) "
                             "VALUES (?, ?, ?, ?, ?, ?)",
                             (rollout.id, rollout.board, rollout.channel, rollout.state, rollout.revision,
                              json.dumps(rollout.to_dict())))
        except self._integrity_errors:  # another replica created one meanwhile (unique indexes)
            raise ConflictError(f"rollout {rollout.id} or another open rollout on {rollout.board}/"
                                f"{rollout.channel} was created meanwhile") from None

    def save_rollout(self, rollout: Rollout, expect_revision: int) -> None:
        with self._lock, self._tx() as conn:
            cur = conn.execute(
                "UPDATE rollouts SET state = ?, revision = ?, body = ? WHERE id = ? AND revision = ?",
                (rollout.state, rollout.revision, json.dumps(rollout.to_dict()), rollout.id, expect_revision))
            if cur.rowcount != 1:
                raise ConflictError(f"rollout {rollout.id} changed meanwhile")

    def mark_published(self, rollout_id: str, revision: int, seq: int) -> None:
        with self._lock, self._tx() as conn:
            row = conn.execute("SELECT body FROM rollouts WHERE id = ?" + self._for_update,
                               (rollout_id,)).fetchone()
            if row is None:
                raise StoreError(f"no rollout {rollout_id}")
            r = Rollout.from_dict(json.loads(row[0]))
            if revision >= r.published_revision:
                r.published_revision = revision
                r.published_seq = seq
                conn.execute("UPDATE rollouts SET body = ? WHERE id = ?",
                             (json.dumps(r.to_dict()), rollout_id))

    def publish_channel(self, board: str, channel: str, floor_seq: int, sign: Callable[[int], bytes],
                        rollout_id: str | None = None, revision: int = 0) -> tuple[int, bytes] | None:
        """Sign a channel document with the next seq and record it in one transaction (with
        rollout_id: the document of that rollout's `revision`, and the rollout marked published).
        seq = max(last recorded, floor_seq) + 1: it only grows, whichever replica publishes and
        across failovers. None when the rollout has moved past `revision` or it is already
        published (whoever made the newer revision publishes it)."""
        with self._lock, self._tx() as conn:
            r = None
            if rollout_id is not None:
                row = conn.execute("SELECT revision, body FROM rollouts WHERE id = ?" + self._for_update,
                                   (rollout_id,)).fetchone()
                if row is None:
                    raise StoreError(f"no rollout {rollout_id}")
                r = Rollout.from_dict(json.loads(row[1]))
                if int(row[0]) != revision or r.published_revision >= revision:
                    return None
            conn.execute("INSERT INTO channels (board, channel, seq, body) VALUES (?, ?, 0, ?) "
                         "ON CONFLICT(board, channel) DO NOTHING", (board, channel, b""))
            last = conn.execute("SELECT seq FROM channels WHERE board = ? AND channel = ?" + self._for_update,
                                (board, channel)).fetchone()[0]
            seq = max(int(last), floor_seq) + 1
            body = sign(seq)
            conn.execute("UPDATE channels SET seq = ?, body = ?, rollout_id = ?, revision = ?, "
                         "updated_at = ? WHERE board = ? AND channel = ?",
                         (seq, body, rollout_id, revision, time.time(), board, channel))
            if r is not None:
                r.published_revision, r.published_seq = revision, seq
                conn.execute("UPDATE rollouts SET body = ? WHERE id = ?",
                             (json.dumps(r.to_dict()), rollout_id))
            return seq, body

    def note_channel(self, board: str, channel: str, seq: int, body: bytes) -> bool:
        """Record a document signed outside publish_channel (re-signed before expiry) if its seq is
        above the recorded one; True when recorded."""
        with self._lock, self._tx() as conn:
            conn.execute("INSERT INTO channels (board, channel, seq, body) VALUES (?, ?, 0, ?) "
                         "ON CONFLICT(board, channel) DO NOTHING", (board, channel, b""))
            cur = conn.execute("UPDATE channels SET seq = ?, body = ?, updated_at = ? "
                               "WHERE board = ? AND channel = ? AND seq < ?",
                               (seq, body, time.time(), board, channel, seq))
            return int(cur.rowcount) == 1

    def leadership(self) -> Leadership:
        """Who runs the orchestrator: SQLite has one server process, so always this one."""
        return Leadership()

    def channel_docs(self) -> list[tuple[str, str, int, bytes]]:
        """(board, channel, seq, signed bytes) of every channel document published through the store."""
        rows = self._conn().execute("SELECT board, channel, seq, body FROM channels WHERE seq > 0 "
                                    "ORDER BY board, channel").fetchall()
        return [(b, c, int(q), bytes(d)) for b, c, q, d in rows]

    def add_history(self, rollout_id: str, now: float, kind: str, message: str,
                    numbers: dict[str, Any] | None = None) -> None:
        with self._lock, self._tx() as conn:
            conn.execute("INSERT INTO history (rollout_id, time, kind, message, numbers) "
                         "VALUES (?, ?, ?, ?, ?)",
                         (rollout_id, now, kind, message, None if numbers is None else json.dumps(numbers)))

    def get_rollout(self, rollout_id: str) -> Rollout | None:
        row = self._conn().execute("SELECT body FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
        return None if row is None else Rollout.from_dict(json.loads(row[0]))

    def list_rollouts(self) -> list[Rollout]:
        rows = self._conn().execute("SELECT body FROM rollouts").fetchall()
        out = [Rollout.from_dict(json.loads(r[0])) for r in rows]
        out.sort(key=lambda r: r.created_at)
        return out

    def history(self, rollout_id: str) -> list[dict[str, Any]]:
        rows = self._conn().execute(
            "SELECT time, kind, message, numbers FROM history WHERE rollout_id = ? ORDER BY id",
            (rollout_id,))
        return [{"time": t, "kind": k, "message": m, "numbers": json.loads(n) if n else None}
                for t, k, m, n in rows]



class SQLiteStore(SQLStore):
    def __init__(self, path: str | os.PathLike[str], synchronous: str = "NORMAL",
                 migrate: bool = True) -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self._local = threading.local()
        self._lock = threading.RLock()
        self._seq: dict[str, int] = {}
        self._progress: dict[tuple[str, str], _Progress] = {}
        self._all: list[sqlite3.Connection] = []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if migrate:
                self.migrate()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from None
        except OSError as exc:
            raise StoreError(f"cannot open database {self.path}: {exc.strerror}") from None

    def _forget(self, device_id: str | None = None, rollout_id: str | None = None) -> None:
        if device_id is not None:
            self._seq.pop(device_id, None)
        if rollout_id is not None:
            for key in [k for k in self._progress if k[0] == rollout_id]:
                del self._progress[key]

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self.synchronous}")
            conn.execute("PRAGMA foreign_keys=OFF")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._all.clear()
        self._local = threading.local()

    # ---------------------------------------------------------------- ingest
    def ingest(self, requests: Sequence[tuple[str, Sequence[Report]]], now: float) -> list[IngestResult]:
        with self._lock:
            try:
                return self._ingest(requests, now)
            except (sqlite3.IntegrityError, sqlite3.InterfaceError, sqlite3.DataError, OverflowError,
                    UnicodeError, ValueError, TypeError) as exc:  # what this request holds
                raise UnstorableError(f"cannot store: {type(exc).__name__}: {str(exc)[:120]}") from None

    def _ingest(self, requests: Sequence[tuple[str, Sequence[Report]]], now: float) -> list[IngestResult]:
        conn = self._conn()

        def last_seq(device_id: str) -> int:
            top = self._seq.get(device_id)
            if top is None:
                row = conn.execute(_LAST_SEQ, (device_id,)).fetchone()
                top = -1 if row is None else int(row[0])
            return top

        def seen(device_id: str, seq: int) -> bool:
            return conn.execute("SELECT 1 FROM events WHERE device_id = ? AND seq = ?",
                                (device_id, seq)).fetchone() is not None

        def progress_of(key: tuple[str, str]) -> _Progress | None:
            cur = self._progress.get(key)
            if cur is None:
                row = conn.execute(_PROGRESS_OF, key).fetchone()
                if row is not None:
                    cur = _Progress(row[0], row[1], row[2], int(row[3]), int(row[4]))
            return cur

        plan = plan_ingest(requests, now, last_seq, seen, progress_of)
        if plan.events:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_INSERT_EVENT, plan.events)
                conn.executemany(_UPSERT_DEVICE, plan.devices.values())
                if plan.progress:
                    conn.executemany(_UPSERT_PROGRESS, plan.progress_rows(now))
                conn.execute("COMMIT")
            except BaseException:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                raise
        # caches only move forward once the transaction is durable
        if len(self._seq) > 500_000:
            self._seq.clear()
        self._seq.update(plan.new_seq)
        if len(self._progress) > 200_000:
            self._progress.clear()
        self._progress.update(plan.progress)
        return plan.results

def now() -> float:
    return time.time()
