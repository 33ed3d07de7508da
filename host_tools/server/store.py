"""Server state behind one interface: devices, events, rollout progress, rollouts.

``Store`` is what the app and the orchestrator use; ``SQLiteStore`` is the embedded default
(WAL, one transaction per group commit). A PostgreSQL backend would implement the same
methods; nothing outside this module imports sqlite3.

Threading: write methods are meant to run on one writer thread (the app's DB executor), reads on
any thread (each thread gets its own connection; WAL lets readers run beside the writer).
The writer keeps two caches that only it touches: last report seq per device and the rollout
progress of recently seen devices, so the replay check and the progress update need no SELECT.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from host_tools.errors import MpotaError

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


_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    device_id TEXT PRIMARY KEY, board TEXT, grp TEXT, registered_at REAL, first_seen REAL,
    last_seen REAL, version TEXT, slot TEXT, last_event TEXT, last_event_at REAL, health TEXT,
    free_mem INTEGER, rollout TEXT, target TEXT, last_seq INTEGER NOT NULL DEFAULT -1,
    claimed_grp TEXT, channel TEXT);
CREATE INDEX IF NOT EXISTS devices_board ON devices(board);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, received REAL NOT NULL, device_id TEXT NOT NULL, seq INTEGER NOT NULL,
    event TEXT NOT NULL, device_time INTEGER, uptime_ms INTEGER, board TEXT, grp TEXT, version TEXT,
    slot TEXT, rollout TEXT, target TEXT, detail TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS events_device ON events(device_id, seq);
CREATE TABLE IF NOT EXISTS progress (
    rollout_id TEXT NOT NULL, device_id TEXT NOT NULL, status TEXT, started_at REAL, finished_at REAL,
    health_failed INTEGER NOT NULL DEFAULT 0, updated_at REAL, accepted INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (rollout_id, device_id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY, board TEXT NOT NULL, channel TEXT NOT NULL, state TEXT NOT NULL,
    revision INTEGER NOT NULL, body TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY, rollout_id TEXT NOT NULL, time REAL NOT NULL, kind TEXT NOT NULL,
    message TEXT NOT NULL, numbers TEXT);
CREATE INDEX IF NOT EXISTS history_rollout ON history(rollout_id, id);
"""

_DEVICE_COLS = ("device_id", "board", "grp", "registered_at", "first_seen", "last_seen", "version", "slot",
                "last_event", "last_event_at", "health", "free_mem", "rollout", "target", "last_seq",
                "claimed_grp", "channel")
# Columns older databases lack (added on open).
_MIGRATIONS = (("devices", "claimed_grp", "TEXT"), ("devices", "channel", "TEXT"),
               ("progress", "accepted", "INTEGER NOT NULL DEFAULT 0"))

# A report's group is only what the device claims (claimed_grp); its board counts until an
# operator registered the device.
_UPSERT_DEVICE = """
INSERT INTO devices (device_id, board, claimed_grp, first_seen, last_seen, version, slot, last_event,
                     last_event_at, health, free_mem, rollout, target, last_seq)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT(device_id) DO UPDATE SET
    board = CASE WHEN registered_at IS NULL THEN COALESCE(excluded.board, board) ELSE board END,
    claimed_grp = COALESCE(excluded.claimed_grp, claimed_grp),
    first_seen = COALESCE(first_seen, excluded.first_seen), last_seen = excluded.last_seen,
    version = COALESCE(excluded.version, version), slot = COALESCE(excluded.slot, slot),
    last_event = COALESCE(excluded.last_event, last_event),
    last_event_at = COALESCE(excluded.last_event_at, last_event_at),
    health = COALESCE(excluded.health, health), free_mem = COALESCE(excluded.free_mem, free_mem),
    rollout = COALESCE(excluded.rollout, rollout), target = COALESCE(excluded.target, target),
    last_seq = max(last_seq, excluded.last_seq)
"""

_dumps = json.JSONEncoder(separators=(",", ":")).encode
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


def parse_db_url(url: str) -> Path:
    """sqlite:///relative/path, sqlite:////absolute/path, or a plain path."""
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    if url.startswith(("postgres://", "postgresql://")):
        raise StoreError("the PostgreSQL backend is not built yet; use sqlite:///PATH")
    if "://" in url:
        raise StoreError(f"unsupported database URL {url!r} (use sqlite:///PATH)")
    return Path(url)


def open_store(url: str) -> Store:
    return SQLiteStore(parse_db_url(url))


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


class SQLiteStore(Store):
    def __init__(self, path: str | os.PathLike[str], synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self._local = threading.local()
        self._lock = threading.RLock()
        self._seq: dict[str, int] = {}
        self._progress: dict[tuple[str, str], _Progress] = {}
        self._all: list[sqlite3.Connection] = []
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._conn()
            conn.executescript(_SCHEMA)
            self._migrate(conn)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from None
        except OSError as exc:
            raise StoreError(f"cannot open database {self.path}: {exc.strerror}") from None

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        for table, column, kind in _MIGRATIONS:
            if column not in {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                if column == "claimed_grp":  # groups of devices no operator registered were claims
                    conn.execute("UPDATE devices SET claimed_grp = grp, grp = NULL "
                                 "WHERE registered_at IS NULL")

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
                top = self._seq.get(device_id)
                if top is None:
                    row = conn.execute(_LAST_SEQ, (device_id,)).fetchone()
                    top = -1 if row is None else int(row[0])
            # all or nothing: one seq seen before (exact match) and the request changes nothing
            for r in reports:
                seq = r["seq"]
                if seq <= top and ((device_id, seq) in pending or conn.execute(
                        "SELECT 1 FROM events WHERE device_id = ? AND seq = ?", (device_id, seq)).fetchone()):
                    result.duplicates += 1
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
                events.append((now, device_id, seq, event, r.get("time"), r.get("uptime_ms"), r.get("board"),
                               r.get("group"), r.get("version"), r.get("slot"), rollout,
                               r.get("target"), None if detail is None else _dumps(detail)))
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
                        cur = self._progress.get(pkey)
                    if cur is None:
                        row = conn.execute(
                            "SELECT status, started_at, finished_at, health_failed, accepted "
                            "FROM progress WHERE rollout_id = ? AND device_id = ?", pkey).fetchone()
                        if row is not None:
                            cur = _Progress(row[0], row[1], row[2], int(row[3]), int(row[4]))
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
        if events:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_INSERT_EVENT, events)
                conn.executemany(_UPSERT_DEVICE, devices.values())
                if new_progress:
                    conn.executemany(_UPSERT_PROGRESS, [
                        (k[0], k[1], p.status, p.started_at, p.finished_at, p.health_failed, now, p.accepted)
                        for k, p in new_progress.items()])
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
        self._seq.update(new_seq)
        if len(self._progress) > 200_000:
            self._progress.clear()
        self._progress.update(new_progress)
        return results

    def register_device(self, device_id: str, board: str | None, group: str | None, now: float,
                        reset_seq: bool = False, *, channel: str | None = None,
                        operator: bool = True) -> dict[str, Any]:
        with self._lock, self._tx() as conn:
            if operator:
                conn.execute(
                    "INSERT INTO devices (device_id, board, grp, channel, registered_at) "
                    "VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT(device_id) DO UPDATE SET board = COALESCE(excluded.board, board), "
                    "grp = COALESCE(excluded.grp, grp), channel = COALESCE(excluded.channel, channel), "
                    "registered_at = excluded.registered_at",
                    (device_id, board, group, channel, now))
            else:
                conn.execute(
                    "INSERT INTO devices (device_id, board, claimed_grp, first_seen) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(device_id) DO UPDATE SET "
                    "board = CASE WHEN registered_at IS NULL THEN COALESCE(excluded.board, board) "
                    "ELSE board END, "
                    "claimed_grp = COALESCE(excluded.claimed_grp, claimed_grp)",
                    (device_id, board, group, now))
            if reset_seq:
                # The board starts counting again (flash erased). Earlier events stay, with their seq
                # moved below every earlier one (negative: outside the replay check, seqs are >= 0).
                low = conn.execute("SELECT min(0, coalesce(min(seq), 0)) FROM events WHERE device_id = ?",
                                   (device_id,)).fetchone()[0]
                conn.execute("UPDATE events SET seq = seq - ? + ? WHERE device_id = ? AND seq >= 0",
                             (1 << 53, low, device_id))
                conn.execute("UPDATE devices SET last_seq = -1 WHERE device_id = ?", (device_id,))
                self._seq.pop(device_id, None)
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
        summary["events"] = conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
        return summary

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
            for key in [k for k in self._progress if k[0] == rollout_id]:
                del self._progress[key]  # the writer reads them again
            return int(cur.rowcount)

    # ---------------------------------------------------------------- rollouts
    def create_rollout(self, rollout: Rollout) -> None:
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

    def save_rollout(self, rollout: Rollout, expect_revision: int) -> None:
        with self._lock, self._tx() as conn:
            cur = conn.execute(
                "UPDATE rollouts SET state = ?, revision = ?, body = ? WHERE id = ? AND revision = ?",
                (rollout.state, rollout.revision, json.dumps(rollout.to_dict()), rollout.id, expect_revision))
            if cur.rowcount != 1:
                raise ConflictError(f"rollout {rollout.id} changed meanwhile")

    def mark_published(self, rollout_id: str, revision: int, seq: int) -> None:
        with self._lock, self._tx() as conn:
            row = conn.execute("SELECT body FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
            if row is None:
                raise StoreError(f"no rollout {rollout_id}")
            r = Rollout.from_dict(json.loads(row[0]))
            if revision >= r.published_revision:
                r.published_revision = revision
                r.published_seq = seq
                conn.execute("UPDATE rollouts SET body = ? WHERE id = ?",
                             (json.dumps(r.to_dict()), rollout_id))

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


def now() -> float:
    return time.time()
