"""Server state behind one interface: devices, events, rollout progress, rollouts.

``Store`` is what the app and the orchestrator use. ``SQLStore`` holds the SQL both backends
share (one text per query, qmark parameters); ``SQLiteStore`` is the embedded default (WAL, one
transaction per group commit) and store_pg.PostgresStore the one several replicas share.
The schema and its versions live in migrations.py; ingest_plan.plan_ingest works out what a
batch of reports writes, the same way for both.

SQLite threading: write methods are meant to run on one writer thread (the app's DB executor),
reads on any thread (each thread gets its own connection; WAL lets readers run beside the writer).
The writer keeps two bounded caches that only it touches: each recently seen device's key and
last report seq, and its rollout progress, so the replay check and the progress update need no
SELECT.
(PostgreSQL may have several writers, so it keeps no cache: see store_pg.)
"""

from __future__ import annotations

import itertools
import json
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from host_tools.errors import MpotaError
from host_tools.server import migrations
from host_tools.server.ingest_plan import (
    EVENT_COLUMNS,
    INSERT_EVENT,
    UPDATE_DEVICE,
    UPDATE_DEVICE_SEEN,
    UPSERT_PROGRESS,
    IngestPlan,
    IngestResult,
    Inventory,
    KnownDevice,
    Progress,
    Report,
    plan_ingest,
)

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


class Store(ABC):
    @abstractmethod
    def close(self) -> None: ...

    # --- reports and inventory (writer thread) ---
    @abstractmethod
    def ingest(self, requests: Sequence[tuple[str, Sequence[Report]]], now: float) -> list[IngestResult]:
        """Store every request's reports in one transaction. A request holding a seq the device
        already sent (exact match) is refused whole: duplicates > 0 and nothing of it is stored.
        Committed (durable against a process crash) when this returns."""

    def ingest_now(self, requests: Sequence[tuple[str, Sequence[Report]]], now: float
                   ) -> list[IngestResult] | None:
        """ingest(), on the calling thread, only when that cannot wait on anything (a lock, the
        network, a disk sync); None when it would: then call ingest() from a worker thread."""
        return None

    def work_left_by_ingest_now(self) -> Callable[[], None] | None:
        """What commits made by ingest_now leave for a worker thread (a WAL checkpoint), if due."""
        return None

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


_PROGRESS_OF = ("SELECT status, started_at, finished_at, health_failed, accepted FROM progress "
                "WHERE rollout_id = ? AND device_id = ?")
_KNOWN_DEVICE = "SELECT device_key, last_seq FROM devices WHERE device_id = ?"
_NEW_DEVICE = "INSERT INTO devices (device_id, first_seen, last_seen) VALUES (?, ?, ?)"
_SEEN = "SELECT 1 FROM events WHERE device_key = ? AND seq = ?"
# a device's events by its id (the events rows hold its key)
_OF_DEVICE = "device_key = (SELECT device_key FROM devices WHERE device_id = ?)"


# an events row as the API shows it: its device by id, the report's fields (its "time" as device_time)
_EVENT_COLS = ("e.received", "d.device_id", "e.seq", "e.event", "e.rollout", "e.report")
_EVENT_KEYS = ("received", "device_id", "seq", "event", "device_time", "uptime_ms", "board", "group",
               "version", "slot", "rollout", "target", "detail")


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
            self._forget(device_id=device_id)  # the writer's cache of its row is stale now
            if reset_seq:
                # The board starts counting again (flash erased). Earlier events stay, with their seq
                # moved below every earlier one (negative: outside the replay check, seqs are >= 0).
                low = min(0, conn.execute(f"SELECT coalesce(min(seq), 0) FROM events WHERE {_OF_DEVICE}",
                                          (device_id,)).fetchone()[0])
                conn.execute(f"UPDATE events SET seq = seq - ? + ? WHERE {_OF_DEVICE} AND seq >= 0",
                             (1 << 53, low, device_id))
                conn.execute("UPDATE devices SET last_seq = -1 WHERE device_id = ?", (device_id,))
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
        sql = (f"SELECT {', '.join(_EVENT_COLS)} FROM events e JOIN devices d ON d.device_key = e.device_key")
        args: tuple[Any, ...] = (limit,)
        if device_id is not None:
            sql += f" WHERE e.{_OF_DEVICE}"
            args = (device_id, limit)
        out = []
        for received, device, seq, event, rollout, report in self._conn().execute(
                sql + " ORDER BY e.id DESC LIMIT ?", args):
            r = json.loads(report)
            out.append(dict(zip(_EVENT_KEYS, (received, device, seq, event, r.get("time"), r.get("uptime_ms"),
                                              r.get("board"), r.get("group"), r.get("version"), r.get("slot"),
                                              rollout, r.get("target"), r.get("detail")), strict=True)))
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
        sql = "SELECT report FROM events WHERE event = 'installed'"
        args: tuple[Any, ...] = ()
        if rollout_id is not None:
            sql += " AND rollout = ?"
            args = (rollout_id,)
        out = {"full": 0, "delta": 0, "fallback": 0, "bytes_saved": 0}
        for (text,) in self._conn().execute(sql, args):
            d = json.loads(text).get("detail")
            how = d.get("delta") if isinstance(d, dict) else None
            if how == "applied":
                out["delta"] += 1
                full, got = d.get("full_bytes"), d.get("bytes")
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



_K = TypeVar("_K")
_V = TypeVar("_V")
# entries in each of the SQLite writer's caches (device keys and seqs, rollout progress)
_CACHE_LIMIT = 200_000


class SQLiteStore(SQLStore):
    def __init__(self, path: str | os.PathLike[str], synchronous: str = "NORMAL",
                 migrate: bool = True) -> None:
        self.path = Path(path)
        self.synchronous = synchronous
        self._local = threading.local()
        self._lock = threading.RLock()
        self._devices: dict[str, KnownDevice] = {}
        self._progress: dict[tuple[str, str], Progress] = {}
        # what this writer's last update of each recent device's row asked of its inventory columns
        self._inventory: dict[str, Inventory] = {}
        self._all: list[sqlite3.Connection] = []
        self._now_conn: sqlite3.Connection | None = None  # ingest_now's (the event loop's)
        self._commits_since_wal_check = 0
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
            self._devices.pop(device_id, None)
            self._inventory.pop(device_id, None)
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
            # A checkpoint copies the WAL into the database and syncs both. Every report touches
            # its device's pages (row, replay index), so commits dirty many pages: checkpointing
            # every 8192 pages (32 MB of WAL) instead of 1000 copies each hot page less often.
            conn.execute("PRAGMA wal_autocheckpoint=8192")
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
                return self._ingest(requests, now, self._conn())
            except sqlite3.Error as exc:  # the database, not the request (full disk, locked, I/O)
                raise StoreError(f"cannot store reports: {exc}") from None

    def ingest_now(self, requests: Sequence[tuple[str, Sequence[Report]]], now: float
                   ) -> list[IngestResult] | None:
        """A commit without a disk sync (synchronous=NORMAL) takes well under a millisecond: done
        on the event loop's thread it skips the hand-off to the writer thread and the GIL
        contention of every SQLite call, which cost more than the commit. Never waits: another
        writer holding the store's lock or the database's, a FULL sync, or a commit of more than
        _INLINE_MAX_REPORTS reports (tens of milliseconds of other requests waiting) answers None. The
        WAL is checkpointed on a worker thread (work_left_by_ingest_now), not here."""
        if (self.synchronous.upper() not in ("NORMAL", "OFF")
                or sum(len(reports) for _, reports in requests) > _INLINE_MAX_REPORTS
                or not self._lock.acquire(blocking=False)):
            return None
        try:
            conn = self._now_conn
            if conn is None:
                conn = self._now_conn = sqlite3.connect(self.path, isolation_level=None,
                                                        check_same_thread=False, timeout=0.0)
                conn.execute(f"PRAGMA synchronous={self.synchronous}")
                conn.execute("PRAGMA wal_autocheckpoint=0")
                # the WAL file shrinks back when it restarts after a checkpoint, so its size
                # says how much is left to copy (work_left_by_ingest_now)
                conn.execute(f"PRAGMA journal_size_limit={_WAL_KEPT_BYTES}")
                self._all.append(conn)
            try:
                results = self._ingest(requests, now, conn)
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):
                    return None  # another process writes: the worker thread waits for it
                raise StoreError(f"cannot store reports: {exc}") from None
            except sqlite3.Error as exc:
                raise StoreError(f"cannot store reports: {exc}") from None
            self._commits_since_wal_check += 1
            return results
        finally:
            self._lock.release()

    def work_left_by_ingest_now(self) -> Callable[[], None] | None:
        if self._commits_since_wal_check < _WAL_CHECK_EVERY:
            return None
        self._commits_since_wal_check = 0
        return self.checkpoint_wal if _wal_bytes(self.path) > _WAL_CHECKPOINT_BYTES else None

    def checkpoint_wal(self) -> None:
        """Copy the WAL into the database (PASSIVE: readers and the writer go on meanwhile)."""
        self._conn().execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _ingest(self, requests: Sequence[tuple[str, Sequence[Report]]], now: float,
                conn: sqlite3.Connection) -> list[IngestResult]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            plan = plan_ingest(requests, now, self._known_device(conn, now), self._seen(conn),
                               self._stored_progress(conn))
            written: dict[str, Inventory] = {}
            if plan.events:
                _write_rows(conn, _INSERT_EVENTS, INSERT_EVENT, plan.events)
                full, seen = self._device_writes(plan, written)
                if full:
                    conn.executemany(UPDATE_DEVICE, full)
                if seen:
                    _write_rows(conn, _UPDATE_SEEN, UPDATE_DEVICE_SEEN, seen)
            if plan.progress:
                conn.executemany(UPSERT_PROGRESS, plan.progress_params())
            conn.execute("COMMIT")
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        self._remember(plan, written)
        return plan.results

    def _device_writes(self, plan: IngestPlan, written: dict[str, Inventory]
                       ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """The devices rows to update whole (UPDATE_DEVICE) and those that ask the inventory this
        writer's last update of the row asked, where only the seen columns move
        (UPDATE_DEVICE_SEEN); `written` gets what the former ask."""
        cache = self._inventory
        full, seen = [], []
        for device_id, row in plan.devices.items():
            asked = row.inventory()
            if asked == cache.get(device_id):
                seen.append(row.seen_params())
            else:
                full.append(row.params())
                written[device_id] = asked
        return full, seen

    def _known_device(self, conn: sqlite3.Connection, now: float) -> Callable[[str], KnownDevice]:
        """A device's key and last seq: cached, else read, else its devices row is made now."""
        cache = self._devices

        def known(device_id: str) -> KnownDevice:
            device = cache.get(device_id)
            if device is None:
                row = conn.execute(_KNOWN_DEVICE, (device_id,)).fetchone()
                if row is None:
                    key = conn.execute(_NEW_DEVICE, (device_id, now, now)).lastrowid
                    assert key is not None
                    device = KnownDevice(key, -1)
                else:
                    device = KnownDevice(int(row[0]), int(row[1]))
            return device
        return known

    @staticmethod
    def _seen(conn: sqlite3.Connection) -> Callable[[int, int], bool]:
        def seen(device_key: int, seq: int) -> bool:
            return conn.execute(_SEEN, (device_key, seq)).fetchone() is not None
        return seen

    def _stored_progress(self, conn: sqlite3.Connection) -> Callable[[tuple[str, str]], Progress | None]:
        cache = self._progress

        def progress_of(key: tuple[str, str]) -> Progress | None:
            current = cache.get(key)
            if current is None:
                row = conn.execute(_PROGRESS_OF, key).fetchone()
                if row is not None:
                    current = Progress(row[0], row[1], row[2], int(row[3]), int(row[4]))
            return current
        return progress_of

    def _remember(self, plan: IngestPlan, written: dict[str, Inventory]) -> None:
        """The writer's caches move forward once the transaction is durable (bounded: the oldest
        entries go first)."""
        _bounded_update(self._devices, plan.known())
        _bounded_update(self._progress, plan.progress)
        _bounded_update(self._inventory, written)


# Rows go in as multi-row statements: one SQLite step (and one release of the GIL, which the
# event loop waits on) per chunk instead of one per row. Chunks are powers of two up to 256
# rows, so a commit of any size uses a few of 9 cached statements of each kind.
_CHUNKS = tuple(1 << b for b in range(8, -1, -1))


def _values(columns: int, rows: int) -> str:
    one = f"({', '.join('?' * columns)})"
    return ", ".join([one] * rows)


_INSERT_EVENTS = {n: INSERT_EVENT.replace(_values(len(EVENT_COLUMNS), 1), _values(len(EVENT_COLUMNS), n))
                  for n in _CHUNKS}
# UPDATE_DEVICE_SEEN for many rows (UPDATE ... FROM: SQLite 3.33; older ones take a row at a time)
_UPDATE_SEEN: dict[int, str] | None = {n: ("UPDATE devices SET last_seen = v.column1, "
                    "last_event_at = COALESCE(v.column2, last_event_at), "
                    "free_mem = COALESCE(v.column3, free_mem), last_seq = v.column4 "
                    f"FROM (VALUES {_values(5, n)}) AS v WHERE devices.device_key = v.column5")
                for n in _CHUNKS} if sqlite3.sqlite_version_info >= (3, 33) else None


def _write_rows(conn: sqlite3.Connection, statements: Mapping[int, str] | None, one_row: str,
                rows: Sequence[Sequence[Any]]) -> None:
    """rows through statements[n] (n rows each), largest chunks first; without them (an older
    SQLite) through one_row, a row at a time."""
    if statements is None:
        conn.executemany(one_row, rows)
        return
    i, total = 0, len(rows)
    for n in _CHUNKS:
        while total - i >= n:
            conn.execute(statements[n], [value for row in rows[i:i + n] for value in row])
            i += n


# ingest_now's commits leave checkpoints to a worker thread: every _WAL_CHECK_EVERY commits it
# looks at the WAL file's size and asks for one past _WAL_CHECKPOINT_BYTES (what the other
# connections' wal_autocheckpoint of 8192 pages comes to with 4 KB pages).
_INLINE_MAX_REPORTS = 2048  # about 10 ms of SQLite work on the event loop, at most
_WAL_CHECK_EVERY = 64
_WAL_CHECKPOINT_BYTES = 32 << 20
_WAL_KEPT_BYTES = 4 << 20


def _wal_bytes(db: Path) -> int:
    try:
        return os.stat(f"{db}-wal").st_size
    except OSError:
        return 0


def _bounded_update(cache: dict[_K, _V], update: Mapping[_K, _V]) -> None:
    if len(cache) > _CACHE_LIMIT:
        for key in list(itertools.islice(cache, _CACHE_LIMIT // 4)):
            del cache[key]
    cache.update(update)


def now() -> float:
    return time.time()
