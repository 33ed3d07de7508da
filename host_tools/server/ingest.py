"""Report validation (the schema of docs/ARCHITECTURE.md "Reports") and the group-commit writer.

Limits: a request body is at most MAX_BODY bytes and holds one report or {"reports": [...]} with
at most MAX_BATCH reports, all of the authenticated device. Validation is all or nothing: one
bad report and the request is refused (400) with nothing stored. Whatever passes is storable:
integers within +-2^53 (JSON-safe, and what SQLite's INTEGER holds), floats finite, strings valid
Unicode (body.parse_json), so no report can fail the transaction it shares with others.

The writer: request handlers queue (device_id, reports, future); one task takes everything queued,
stores it in ONE transaction (group commit), then answers every waiting request. A 2xx therefore
always means "committed". The transaction runs on the event loop's thread where the store says
it cannot wait (SQLite without a disk sync per commit, its lock free), else on the database
thread.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor

from host_tools.fleet import DEVICE_ID
from host_tools.server.aio import cancel
from host_tools.server.ingest_plan import MAX_INT, IngestResult, Report
from host_tools.server.store import Store

MAX_BATCH = 50
MAX_BODY = 64 * 1024
MAX_DETAIL_KEYS = 16
MAX_STR = 128
EVENTS = frozenset({"checking", "downloading", "downloaded", "installed", "confirmed", "health_failed",
                    "rolled_back", "failed", "heartbeat"})
_STR_FIELDS = ("board", "group", "version", "slot", "rollout", "target")
_INT_FIELDS = ("uptime_ms", "time")
_NUMBER = (int, float)  # exact types: a bool is an int subclass


class ReportError(ValueError):
    """A malformed report: the message says which field."""


def claimed_device(data: object) -> str | None:
    """The device id a body names (its first report's), looked at before anything else is
    validated so the token is checked first; None when the body has no usable id."""
    if type(data) is dict:
        if "reports" in data and "event" not in data:
            items = data["reports"]
            data = items[0] if type(items) is list and items else None
        if type(data) is dict:
            device_id = data.get("device_id")
            if type(device_id) is str and DEVICE_ID.fullmatch(device_id):
                return device_id
    return None


def validate_report(obj: object, where: str = "report", known_id: str | None = None) -> Report:
    """Check one report; returns it (the same dict) or raises ReportError. (Hot path: kept flat.)"""
    if type(obj) is not dict:
        raise ReportError(f"{where}: expected an object")
    device_id = obj.get("device_id")
    if device_id != known_id and (type(device_id) is not str or not DEVICE_ID.fullmatch(device_id)):
        raise ReportError(f"{where}: device_id missing or invalid")
    seq = obj.get("seq")
    if type(seq) is not int or seq < 0 or seq >= MAX_INT:
        raise ReportError(f"{where}: seq must be a whole number >= 0")
    event = obj.get("event")
    if type(event) is not str or event not in EVENTS:
        raise ReportError(f"{where}: unknown event {str(obj.get('event'))[:40]!r}")
    for key in _STR_FIELDS:
        v = obj.get(key)
        if v is not None and (type(v) is not str or len(v) > MAX_STR):
            raise ReportError(f"{where}: {key} must be a string of at most {MAX_STR} characters")
    for key in _INT_FIELDS:
        v = obj.get(key)
        if v is not None and (type(v) is not int or v < 0 or v >= MAX_INT):
            raise ReportError(f"{where}: {key} must be a whole number >= 0")
    detail = obj.get("detail")
    if detail is not None:
        if type(detail) is not dict or len(detail) > MAX_DETAIL_KEYS:
            raise ReportError(f"{where}: detail must be an object with at most {MAX_DETAIL_KEYS} keys")
        for k, v in detail.items():
            t = type(v)
            if len(k) > 32 or not (v is None or t is bool or (t in _NUMBER and -MAX_INT < v < MAX_INT)
                                   or (t is str and len(v) <= 256)):
                raise ReportError(f"{where}: detail.{k[:32]} must be a number (at most 2^53), boolean or "
                                  f"short string")
    return obj


def parse_reports(data: object) -> list[Report]:
    """One report or {"reports": [...]} (1..MAX_BATCH) -> list of validated reports."""
    if type(data) is dict and "reports" in data and "event" not in data:
        items = data["reports"]
        if type(items) is not list or not items:
            raise ReportError("reports must be a non-empty list")
        if len(items) > MAX_BATCH:
            raise ReportError(f"at most {MAX_BATCH} reports per request (got {len(items)})")
        first = validate_report(items[0], "reports[0]")
        known = first["device_id"]
        for i in range(1, len(items)):
            validate_report(items[i], f"reports[{i}]", known)
        if len({r["seq"] for r in items}) != len(items):
            raise ReportError("the same seq appears twice in one request")
        return items
    return [validate_report(data)]


class GroupCommitWriter:
    """Batches concurrent requests into one store transaction on a single database thread."""

    def __init__(self, store: Store, executor: Executor, clock: Callable[[], float] = time.time,
                 on_progress: Callable[[], None] | None = None, max_requests: int = 2000) -> None:
        self.store = store
        self.executor = executor
        self.clock = clock
        self.on_progress = on_progress
        self.max_requests = max_requests
        self._queue: asyncio.Queue[tuple[str, list[Report], asyncio.Future[IngestResult]]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._queue_front: deque[tuple[str, list[Report], asyncio.Future[IngestResult]]] = deque()
        self._left_work: asyncio.Future[None] | None = None
        self.commits = 0
        self.requests = 0

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    async def submit(self, device_id: str, reports: list[Report]) -> IngestResult:
        assert self._queue is not None, "writer not started"
        fut: asyncio.Future[IngestResult] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((device_id, reports, fut))
        return await fut

    def _leave_work(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hand what the inline commits left (a WAL checkpoint) to the database thread, one at a time."""
        if self._left_work is not None and not self._left_work.done():
            return
        job = self.store.work_left_by_ingest_now()
        if job is not None:
            self._left_work = loop.run_in_executor(self.executor, job)
            self._left_work.add_done_callback(_log_failure)

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            if self._queue_front:  # retried alone after a failed group commit
                batch = [self._queue_front.popleft()]
            else:
                batch = [await queue.get()]
                while not queue.empty() and len(batch) < self.max_requests:
                    batch.append(queue.get_nowait())
            live = [b for b in batch if not b[2].done()]
            if not live:
                continue
            requests = [(d, r) for d, r, _ in live]
            try:
                now = self.clock()
                results = self.store.ingest_now(requests, now)
                if results is None:
                    results = await loop.run_in_executor(self.executor, self.store.ingest, requests, now)
                else:
                    self._leave_work(loop)
            except asyncio.CancelledError:
                for _, _, fut in live:
                    if not fut.done():
                        fut.cancel()
                raise
            except Exception as exc:
                if len(live) > 1:  # one request must not sink the others: store them one by one
                    for item in live:
                        self._queue_front.append(item)
                    continue
                for _, _, fut in live:  # the database failed: the request gets a 5xx, retried later
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            self.commits += 1
            self.requests += len(live)
            progress = False
            for (_, _, fut), result in zip(live, results, strict=True):
                progress = progress or result.progress
                if not fut.done():
                    fut.set_result(result)
            if progress and self.on_progress is not None:
                self.on_progress()


def _log_failure(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled() and fut.exception() is not None:
        print(f"mpota serve: WAL checkpoint failed (retried later): {fut.exception()}", file=sys.stderr,
              flush=True)
