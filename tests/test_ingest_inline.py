"""SQLite group commits on the event loop's thread (Store.ingest_now) and their fallbacks.

ingest_now must store exactly what ingest stores, and must never make the event loop wait: a
write lock held by another connection or process, the store's lock held by another thread, or a
disk sync per commit (--durable) all send the commit to the database thread instead. The WAL
checkpoints those commits leave run on the database thread too.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from host_tools.server import store as store_module
from host_tools.server.ingest import GroupCommitWriter
from host_tools.server.store import SQLiteStore


def _r(device: str, seq: int, event: str = "heartbeat", **kw: Any) -> dict[str, Any]:
    return {"device_id": device, "seq": seq, "event": event, **kw}


def _workload(seed: int) -> list[list[tuple[str, list[dict[str, Any]]]]]:
    """Commits of 1..300 requests (every chunk size of the multi-row statements), replays, late
    seqs, inventory changes and rollout events among 40 devices."""
    rng = random.Random(seed)
    seqs = dict.fromkeys((f"d{i}" for i in range(40)), 0)
    commits = []
    for size in (1, 2, 3, 7, 255, 256, 257, 300, 5, 64):
        commit = []
        for _ in range(size):
            device = rng.choice(list(seqs))
            reports = []
            for _ in range(rng.choice((1, 1, 1, 3))):
                seqs[device] += rng.choice((1, 1, 2))
                seq = seqs[device] if rng.random() > 0.05 else max(0, seqs[device] - 3)  # some replays
                reports.append(_r(device, seq, rng.choice(("heartbeat", "downloading", "confirmed")),
                                  version=rng.choice(("1.0", "1.1")), rollout=rng.choice((None, "r1")),
                                  detail={"free": rng.randrange(10_000, 90_000)}))
            if len({r["seq"] for r in reports}) == len(reports):
                commit.append((device, reports))
        commits.append(commit)
    return commits


def test_ingest_now_stores_what_ingest_stores(tmp_path: Path) -> None:
    on_loop, on_worker = SQLiteStore(tmp_path / "a.db"), SQLiteStore(tmp_path / "b.db")
    duplicates = 0
    for i, commit in enumerate(_workload(7)):
        now = 1000.0 + i
        inline = on_loop.ingest_now(commit, now)
        assert inline is not None
        assert inline == on_worker.ingest(commit, now)
        duplicates += sum(r.duplicates for r in inline)
    assert duplicates > 0  # the workload's replays were refused the same way
    for device in (f"d{i}" for i in range(40)):
        assert on_loop.get_device(device) == on_worker.get_device(device)
        assert on_loop.device_events(device, 10_000) == on_worker.device_events(device, 10_000)
    assert on_loop.inventory_summary() == on_worker.inventory_summary()
    on_loop.close()
    on_worker.close()


def test_an_older_sqlite_writes_row_by_row_the_same_rows(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # UPDATE ... FROM needs SQLite 3.33: without it the seen columns go one UPDATE_DEVICE_SEEN per row
    multi, single = SQLiteStore(tmp_path / "multi.db"), SQLiteStore(tmp_path / "single.db")
    expected = [multi.ingest(commit, 1000.0 + i) for i, commit in enumerate(_workload(11))]
    monkeypatch.setattr(store_module, "_UPDATE_SEEN", None)
    assert [single.ingest(commit, 1000.0 + i) for i, commit in enumerate(_workload(11))] == expected
    for device in (f"d{i}" for i in range(40)):
        assert single.get_device(device) == multi.get_device(device)
    multi.close()
    single.close()


def test_ingest_now_never_waits(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    assert store.ingest_now([("d1", [_r("d1", 1)])], 1.0) is not None
    # another connection (an operator command, another process) holds the write lock
    other = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    t0 = time.monotonic()
    assert store.ingest_now([("d1", [_r("d1", 2)])], 2.0) is None
    assert time.monotonic() - t0 < 0.5
    other.execute("ROLLBACK")
    other.close()
    # the store's lock held by another thread (a registration, a rollout write)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store._lock:
            held.set()
            release.wait(10)
    t = threading.Thread(target=hold)
    t.start()
    held.wait(10)
    assert store.ingest_now([("d1", [_r("d1", 2)])], 2.0) is None
    release.set()
    t.join()
    [result] = store.ingest_now([("d1", [_r("d1", 2)])], 2.0) or []
    assert result.accepted == 1
    assert [e["seq"] for e in store.device_events("d1")] == [1, 2]
    # a commit too big to hold up the event loop for goes to the database thread
    big = [(f"b{i}", [_r(f"b{i}", seq) for seq in range(50)]) for i in range(41)]  # 2050 reports
    assert store.ingest_now(big, 3.0) is None
    assert store.ingest_now(big[:40], 3.0) is not None  # 2000
    store.close()
    # a disk sync per commit (--durable) would stall the loop: always the database thread
    durable = SQLiteStore(tmp_path / "d.db", synchronous="FULL")
    assert durable.ingest_now([("d1", [_r("d1", 1)])], 1.0) is None
    assert durable.device_events("d1") == []
    durable.close()


class CountingExecutor(ThreadPoolExecutor):
    def __init__(self) -> None:
        super().__init__(1)
        self.calls: list[str] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.calls.append(getattr(fn, "__name__", repr(fn)))
        return super().submit(fn, *args, **kwargs)


def test_the_writer_commits_on_the_loop_and_falls_back_without_blocking_it(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "s.db")
    executor = CountingExecutor()

    async def main() -> None:
        writer = GroupCommitWriter(store, executor)
        writer.start()
        results = await asyncio.gather(*(writer.submit(f"d{i}", [_r(f"d{i}", 1)]) for i in range(20)))
        assert [r.accepted for r in results] == [1] * 20
        assert executor.calls == []  # all on the loop's thread
        # another process writes for 0.4 s: the commit waits on the database thread, the loop runs on
        other = sqlite3.connect(tmp_path / "s.db", isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        threading.Timer(0.4, lambda: other.execute("ROLLBACK")).start()
        pending = asyncio.ensure_future(writer.submit("d1", [_r("d1", 2)]))
        ticks = 0
        while not pending.done():
            await asyncio.sleep(0.02)
            ticks += 1
        assert (await pending).accepted == 1
        assert ticks >= 10, "the event loop was blocked while the database was locked"
        assert executor.calls == ["ingest"]
        await writer.stop()
        other.close()

    asyncio.run(main())
    assert [e["seq"] for e in store.device_events("d1")] == [1, 2]
    executor.shutdown()
    store.close()


def test_wal_checkpoints_of_loop_commits_run_on_the_database_thread(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "_WAL_CHECK_EVERY", 4)
    monkeypatch.setattr(store_module, "_WAL_CHECKPOINT_BYTES", 0)
    store = SQLiteStore(tmp_path / "s.db")
    executor = CountingExecutor()
    threads: list[int] = []
    real = store.checkpoint_wal

    def checkpoint() -> None:
        threads.append(threading.get_ident())
        real()
    store.checkpoint_wal = checkpoint  # type: ignore[method-assign]

    async def main() -> int:
        writer = GroupCommitWriter(store, executor)
        writer.start()
        for seq in range(1, 13):
            await writer.submit("d1", [_r("d1", seq)])
        await asyncio.sleep(0.2)  # the last checkpoint handed over finishes
        await writer.stop()
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert threads and loop_thread not in threads
    assert "checkpoint" in executor.calls and "ingest" not in executor.calls
    executor.shutdown()
    store.close()


def test_one_checkpoint_per_full_wal_not_one_per_check(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # the WAL file restarts smaller after a checkpoint: its size, not its high-water mark, decides
    monkeypatch.setattr(store_module, "_WAL_CHECK_EVERY", 4)
    monkeypatch.setattr(store_module, "_WAL_CHECKPOINT_BYTES", 2 << 20)
    monkeypatch.setattr(store_module, "_WAL_KEPT_BYTES", 64 << 10)
    store = SQLiteStore(tmp_path / "s.db")
    checkpoints = seq = 0
    for commit in range(400):
        requests = []
        for i in range(10):
            seq += 1
            device = f"d{(commit * 10 + i) % 192}"
            requests.append((device, [_r(device, seq, version="1.0", detail={"free": seq})]))
        assert store.ingest_now(requests, float(commit)) is not None
        job = store.work_left_by_ingest_now()
        if job is not None:
            job()
            checkpoints += 1
    # about 9 pages per commit here: a full 2 MB WAL every ~57 commits, so about 7 checkpoints
    # (a WAL size that never went down would ask at every check past the first: ~85)
    assert 3 <= checkpoints <= 15, checkpoints
    store.close()
