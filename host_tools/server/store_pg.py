"""The PostgreSQL backend: the shared SQL of store.SQLStore over a psycopg 3 connection pool.

Several `mpota serve` replicas may write at once, so nothing is cached between transactions and
every rule that SQLite gets from its single writer is held by the database instead:
- replay detection: events are inserted with ON CONFLICT (device_key, seq) DO NOTHING; a report
  the unique index refused marks its request a duplicate and the batch is redone without it;
- one device's reports are applied one transaction at a time (its devices row is locked, in
  device-id order so two replicas never deadlock), so rollout progress is never lost to a race;
- rollout changes are compare-and-set on the revision; channel seqs come from the channels table.
Queries keep SQLite's qmark (?) parameters; the cursor translates them once per query text.
"""

from __future__ import annotations

import functools
import json
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from host_tools.server.ingest_plan import (
    EVENT_COLUMNS,
    INSERT_EVENT,
    PROGRESS_EVENTS,
    UPDATE_DEVICE,
    UPSERT_PROGRESS,
    IngestResult,
    KnownDevice,
    Progress,
    Report,
    plan_ingest,
)
from host_tools.server.store import Leadership, SQLStore, StoreError, UnstorableError

# One statement for a whole batch of events; the rows the unique index let through come back.
# The rows travel as one JSON parameter: encoded in C on both sides (arrays of a thousand values
# cost psycopg's dumpers a Python call, and the text format a regex escape, per value).
_INSERT_EVENTS_RETURNING = (
    INSERT_EVENT.split("VALUES")[0]
    + f"SELECT {', '.join(EVENT_COLUMNS)} FROM json_populate_recordset(NULL::events, ?) "
      "ON CONFLICT (device_key, seq) DO NOTHING RETURNING device_key, seq")
_json = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
# One round trip: create the batch's missing devices rows and lock them all (DO UPDATE locks an
# existing row as FOR UPDATE would), in device-id order, returning each one's key and last seq.
_LOCK_DEVICES = ("INSERT INTO devices (device_id, first_seen, last_seen) "
                 "SELECT d, ?, ? FROM unnest(?::text[]) AS d ORDER BY d "
                 "ON CONFLICT (device_id) DO UPDATE SET last_seen = devices.last_seen "
                 "RETURNING device_id, device_key, last_seq")
_PROGRESS_OF_MANY = ("SELECT rollout_id, device_id, status, started_at, finished_at, health_failed, accepted "
                     "FROM progress WHERE (rollout_id, device_id) IN "
                     "(SELECT * FROM unnest(?::text[], ?::text[]))")


@functools.lru_cache(maxsize=1024)
def _pg(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


class _QmarkCursor(psycopg.Cursor[Any]):
    def execute(self, query: Any, params: Any = None, *, prepare: bool | None = None,
                binary: bool | None = None) -> _QmarkCursor:
        super().execute(_pg(query) if isinstance(query, str) else query, params, prepare=prepare,
                        binary=binary)
        return self

    def executemany(self, query: Any, params_seq: Any, *, returning: bool = False) -> None:
        super().executemany(_pg(query) if isinstance(query, str) else query, params_seq, returning=returning)


class _Rows:
    """A read's result, taken off the connection so the connection can go back to the pool."""

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows = rows
        self.rowcount = rowcount

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return self._rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


class _PoolReader:
    """What SQLStore's reads call `_conn()` for: each execute borrows a pooled connection."""

    def __init__(self, store: PostgresStore) -> None:
        self.store = store

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Rows:
        with self.store._connection() as conn:
            cur = conn.execute(sql, params)
            return _Rows(cur.fetchall() if cur.description else [], cur.rowcount)


# pg_try_advisory_lock key held by the replica that runs the orchestrator
LEADER_LOCK = 0x6D706F7461_02


class AdvisoryLeadership(Leadership):
    """Exactly one replica leads: the one whose own session holds the advisory lock. PostgreSQL
    releases it when that session ends: at once when the process dies (its socket closes), within
    ~10 s when its host vanishes (TCP keepalives both ways, tcp_user_timeout). The others try to
    take it on every orchestrator tick, so failover takes about one tick after that."""

    shared = True

    def __init__(self, url: str) -> None:
        self.url = url
        self._conn: psycopg.Connection[Any] | None = None
        self._held = False

    def is_leader(self) -> bool:
        try:
            conn = self._conn
            if conn is None or conn.closed or conn.broken:
                self._held = False
                conn = self._conn = psycopg.connect(
                    self.url, autocommit=True, connect_timeout=5, application_name="mpota-leader",
                    keepalives=1, keepalives_idle=5, keepalives_interval=2, keepalives_count=2,
                    tcp_user_timeout=10000)
                for name, value in (("idle", 5), ("interval", 2), ("count", 2)):  # the server's side
                    conn.execute(f"SET tcp_keepalives_{name} = {value}".encode())
            if self._held:
                conn.execute(b"SELECT 1")  # the session (and so the lock) is still there
            else:
                row = conn.execute(b"SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,)).fetchone()
                self._held = bool(row and row[0])
        except psycopg.Error:
            self.close()
        return self._held

    def close(self) -> None:
        self._held = False
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg.Error:
                pass
            self._conn = None


class _Replayed(Exception):
    def __init__(self, pairs: set[tuple[int, int]]) -> None:
        self.pairs = pairs


def _redact(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        info = conninfo_to_dict(url)
    except psycopg.Error:
        return "the PostgreSQL URL"
    info.pop("password", None)
    return make_conninfo("", **{k: v for k, v in info.items() if v is not None})


class PostgresStore(SQLStore):
    dialect = "postgresql"
    _for_update = " FOR UPDATE"
    _integrity_errors = (psycopg.errors.IntegrityError,)

    def __init__(self, url: str, *, max_size: int = 8, timeout: float = 10.0, migrate: bool = True) -> None:
        self.url = url
        self.where = _redact(url)
        self._lock = threading.RLock()
        self.timeout = timeout
        try:  # one plain connection first: the pool would only say "timed out", not why
            psycopg.connect(url, connect_timeout=max(1, int(timeout))).close()
        except psycopg.Error as exc:
            why = " ".join(str(exc).split()) or type(exc).__name__
            raise StoreError(f"cannot connect to PostgreSQL ({self.where}): {why[:300]}") from None
        self._pool = ConnectionPool(
            url, min_size=1, max_size=max_size, open=False, name="mpota", timeout=timeout,
            kwargs={"autocommit": True, "cursor_factory": _QmarkCursor},
            check=ConnectionPool.check_connection, reconnect_timeout=60.0)
        try:
            self._pool.open(wait=True, timeout=timeout)
        except PoolTimeout:
            self._pool.close()
            raise StoreError(f"cannot connect to PostgreSQL ({self.where}) within {timeout:g} s") from None
        try:
            if migrate:
                self.migrate()
        except psycopg.Error as exc:
            self._pool.close()
            raise StoreError(f"cannot set up the schema in {self.where}: {exc}") from None
        except StoreError:
            self._pool.close()
            raise

    @contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        try:
            with self._pool.connection() as conn:
                yield conn
        except PoolTimeout:
            raise StoreError(f"no PostgreSQL connection within {self.timeout:g} s ({self.where})") from None
        except psycopg.OperationalError as exc:
            raise StoreError(f"PostgreSQL: {str(exc).strip().splitlines()[0][:160]}") from None

    def _conn(self) -> _PoolReader:
        return _PoolReader(self)

    @contextmanager
    def _tx(self) -> Iterator[psycopg.Connection[Any]]:
        with self._connection() as conn, conn.transaction():
            yield conn

    def close(self) -> None:
        self._pool.close()

    def leadership(self) -> AdvisoryLeadership:
        return AdvisoryLeadership(self.url)

    # ---------------------------------------------------------------- ingest
    def ingest(self, requests: Sequence[tuple[str, Sequence[Report]]], now: float) -> list[IngestResult]:
        replayed: set[tuple[int, int]] = set()
        for _ in range(20):
            try:
                return self._ingest(requests, now, replayed)
            except _Replayed as exc:  # the unique index refused some: redo with them known
                replayed |= exc.pairs
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                continue
            except psycopg.DataError as exc:  # a value of this request the column types refuse
                raise UnstorableError(f"cannot store: {str(exc).strip()[:120]}") from None
            except psycopg.Error as exc:  # the database, not the request
                raise StoreError(f"cannot store reports: {str(exc).strip()[:160]}") from None
        raise StoreError("reports kept colliding with other writers; retry later")

    def _ingest(self, requests: Sequence[tuple[str, Sequence[Report]]], now: float,
                replayed: set[tuple[int, int]]) -> list[IngestResult]:
        ids = sorted({d for d, _ in requests})
        keys = sorted({(r["rollout"], d) for d, reports in requests for r in reports
                       if r.get("rollout") and r["event"] in PROGRESS_EVENTS})
        with self._lock, self._tx() as conn:
            locked = conn.execute(_LOCK_DEVICES, (now, now, ids))
            known = {d: KnownDevice(int(k), int(s)) for d, k, s in locked}
            stored: dict[tuple[str, str], Progress] = {}
            if keys:
                for row in conn.execute(_PROGRESS_OF_MANY, ([k[0] for k in keys], [k[1] for k in keys])):
                    stored[(row[0], row[1])] = Progress(row[2], row[3], row[4], int(row[5]), int(row[6]))
            plan = plan_ingest(requests, now, known.__getitem__, lambda k, s: (k, s) in replayed, stored.get)
            if not plan.events:
                raise psycopg.Rollback()  # every request was a replay: nothing to keep
            rows: list[dict[str, Any]] = [dict(zip(EVENT_COLUMNS, e, strict=True)) for e in plan.events]
            inserted = {(int(k), int(s)) for k, s in conn.execute(_INSERT_EVENTS_RETURNING, (_json(rows),))}
            if len(inserted) != len(rows):
                raise _Replayed({(r["device_key"], r["seq"]) for r in rows} - inserted)
            with conn.cursor() as cur:
                cur.executemany(UPDATE_DEVICE, plan.device_params())
                if plan.progress:
                    cur.executemany(UPSERT_PROGRESS, plan.progress_params())
        return plan.results
