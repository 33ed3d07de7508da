"""One orchestrator decision over 100,000 devices' state: read every device's progress from SQLite,
place each device in its step (sticky bucket), count per stage, judge the gates, decide.

    python -m bench.bench_decision          # prints one line
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
from pathlib import Path

from host_tools.server.orchestrator import Orchestrator, compute_stats, decide
from host_tools.server.plans import RolloutPlan
from host_tools.server.publish import RecordingPublisher
from host_tools.server.store import SQLiteStore, SQLStore

DEVICES = 100_000
BOARD = "esp32-generic-4mb"


def _fill_devices(store: SQLStore, n: int) -> None:
    groups = ["canary"] * 20 + ["internal"] * 80 + ["pilot"] * 400
    with store._tx() as conn:
        conn.cursor().executemany(
            "INSERT INTO devices (device_id, board, grp, version, last_seq) VALUES (?, ?, ?, ?, 0)",
            [(f"dev-{i:06d}", BOARD, groups[i] if i < len(groups) else "general", "1.0.0") for i in range(n)])


def _fill_progress(store: SQLStore, n: int, rollout_id: str) -> None:
    rng = random.Random(7)
    rows = []
    for i in range(n):
        roll = rng.random()
        if roll < 0.3:  # reported after the rollout started (1000.0), as devices do
            status = rng.choice(["confirmed"] * 8 + ["failed", "rolled_back", "started"])
            rows.append((rollout_id, f"dev-{i:06d}", status, 1100.0, None if status == "started" else 1200.0,
                         int(status == "rolled_back"), 1200.0))
    with store._tx() as conn:
        conn.cursor().executemany("INSERT INTO progress (rollout_id, device_id, status, started_at, "
                                  "finished_at, health_failed, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                                  rows)


def run(devices: int = DEVICES) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "db.sqlite")
        try:
            return measure(store, devices)
        finally:
            store.close()


def measure(store: SQLStore, devices: int = DEVICES) -> dict[str, float]:
    """The decision on any store (bench_scale runs it on PostgreSQL)."""
    plan = RolloutPlan.from_dict({"soak": 0, "failure_rate_threshold": 50, "rollback_rate_threshold": 50,
                                  "health_check_failure_rate": 50})
    orch = Orchestrator(store, RecordingPublisher(), clock=lambda: 1000.0)
    _fill_devices(store, devices)
    rollout = orch.start(BOARD, "stable", "2.0.0", plan, "r-bench")
    rollout.step = 4  # general at 50%: group steps + bucket placement both exercised
    _fill_progress(store, devices, rollout.id)
    timings = []
    for _ in range(3):  # the first pass also fills the bucket cache; a new rollout would pay that
        t0 = time.perf_counter()
        rows = store.rollout_progress(BOARD, rollout.id)
        t1 = time.perf_counter()
        stats = compute_stats(plan, rollout, rows, 2000.0, orch._buckets)
        decision = decide(plan, rollout, stats, 2000.0)
        t2 = time.perf_counter()
        timings.append((t2 - t0, t1 - t0, t2 - t1))
    assert len(rows) == devices and decision.action in ("none", "ready", "advance", "pause")
    targeted = sum(s.counts.targeted for s in stats.stages)
    first, warm = timings[0], min(timings[1:])
    return {"devices": devices, "targeted": targeted, "first_s": first[0], "warm_s": warm[0],
            "read_s": warm[1], "compute_s": warm[2]}


if __name__ == "__main__":
    r = run(int(sys.argv[1]) if len(sys.argv) > 1 else DEVICES)
    print(f"decision over {r['devices']} devices ({r['targeted']} targeted): {r['first_s']:.3f} s first "
          f"(bucket cache cold), {r['warm_s']:.3f} s warm (read {r['read_s']:.3f} s + compute "
          f"{r['compute_s']:.3f} s)")
