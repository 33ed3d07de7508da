"""Past one machine: `mpota serve` on PostgreSQL, one and two replicas, against SQLite in the same run.

- Ingest: the clients of bench_ingest (3 processes x 8 keep-alive connections, raw HTTP/1.1) on
  one SQLite server, one PostgreSQL replica and two PostgreSQL replicas (connections spread over
  both, as behind a load balancer); single reports (requests/s) and batches of 50 (reports/s);
  ratio = PostgreSQL / SQLite. Everything shares this machine's 2 cores: clients, replicas and the
  database server. PostgreSQL runs with fsync and synchronous_commit on (a 2xx is on disk);
  SQLite with the server's default synchronous=NORMAL (survives a killed process, not a power cut).
- Decision: one orchestrator decision over 100,000 devices read from PostgreSQL (as
  bench_decision does on SQLite); goal <= 1 s.
- Failover: two replicas, SIGKILL the one running the orchestrator, time until the other says it
  runs it (/v1/status polled every 20 ms), default --tick 1 s; 3 kills.

    python -m bench.bench_scale             # prints one line
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import bench_decision, bench_ingest
from sim.pgcluster import PgCluster, why_unavailable
from sim.replicas import ServeProcess

DURATION = 2.0


def _ingest(cluster: PgCluster, root: Path, rounds: int = 2) -> dict[str, float]:
    (root / "feed").mkdir()
    secret = root / "fleet.secret"
    secret.write_text(bench_ingest.SECRET.hex())
    op = "unused"
    url = cluster.create_database("ingest")
    sqlite = ServeProcess(root / "feed", f"sqlite:///{root / 's.db'}", secret, op, tick=1.0)
    pg = [ServeProcess(root / "feed", url, secret, op, tick=1.0) for _ in range(2)]
    setups = {"sqlite": [sqlite], "pg1": pg[:1], "pg2": pg}
    ports = {name: [int(p.url.rsplit(":", 1)[1]) for p in procs] for name, procs in setups.items()}
    try:
        return bench_ingest.best_of({name: (port, None) for name, port in ports.items()},
                                    bench_ingest.SINGLE_AND_BATCHED, rounds, DURATION)
    finally:
        for p in (sqlite, *pg):
            p.stop()


def _decision(cluster: PgCluster) -> dict[str, float]:
    from host_tools.server.store_pg import PostgresStore

    store = PostgresStore(cluster.create_database("decision"))
    try:
        return bench_decision.measure(store)
    finally:
        store.close()


def _failover(cluster: PgCluster, root: Path, kills: int = 3) -> list[float]:
    from host_tools.server.auth import operator_token

    (root / "feed2").mkdir()
    secret = root / "fleet.secret"
    op = operator_token(bytes.fromhex(secret.read_text()))
    url = cluster.create_database("failover")
    replicas = [ServeProcess(root / "feed2", url, secret, op, tick=1.0) for _ in range(2)]
    times = []
    try:
        for _ in range(kills):
            deadline = time.monotonic() + 20
            while sum(r.is_leader() for r in replicas) != 1:
                if time.monotonic() > deadline:
                    raise RuntimeError("no single leader")
                time.sleep(0.02)
            leader = next(r for r in replicas if r.is_leader())
            other = next(r for r in replicas if r is not leader)
            leader.kill()
            t0 = time.monotonic()
            while not other.is_leader():
                if time.monotonic() - t0 > 30:
                    raise RuntimeError("no takeover within 30 s")
                time.sleep(0.02)
            times.append(time.monotonic() - t0)
            replicas = [other, ServeProcess(root / "feed2", url, secret, op, tick=1.0)]
    finally:
        for r in replicas:
            r.stop()
    return times


def run() -> dict[str, float]:
    reason = why_unavailable()
    if reason is not None:
        raise SystemExit(f"bench_scale needs PostgreSQL: {reason}")
    cluster = PgCluster(fsync=True)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            r = _ingest(cluster, Path(tmp))
            d = _decision(cluster)
            f = _failover(cluster, Path(tmp))
    finally:
        cluster.stop()
    out = dict(r)
    for name in ("pg1", "pg2"):
        for label in ("single", "batch50"):
            out[f"ratio_{name}_{label}"] = r[f"{name}_{label}"] / r[f"sqlite_{label}"]
    out.update({f"decision_{k}": v for k, v in d.items()})
    out["failover_median_s"] = statistics.median(f)
    out["failover_max_s"] = max(f)
    return out


if __name__ == "__main__":
    r = run()
    print(f"scale (PostgreSQL 15 fsync on, same 2 cores as clients and replicas): ingest single "
          f"SQLite {r['sqlite_single']:.0f} req/s, PG 1 replica {r['pg1_single']:.0f} "
          f"({r['ratio_pg1_single']:.2f}x), 2 replicas {r['pg2_single']:.0f} ({r['ratio_pg2_single']:.2f}x); "
          f"batches of 50 SQLite {r['sqlite_batch50']:.0f} reports/s, PG 1 replica {r['pg1_batch50']:.0f} "
          f"({r['ratio_pg1_batch50']:.2f}x), 2 replicas {r['pg2_batch50']:.0f} "
          f"({r['ratio_pg2_batch50']:.2f}x); decision over {r['decision_devices']:.0f} devices on PG "
          f"{r['decision_first_s']:.3f} s first, {r['decision_warm_s']:.3f} s warm (read "
          f"{r['decision_read_s']:.3f} + compute {r['decision_compute_s']:.3f}; goal <= 1 s); "
          f"failover (SIGKILL the leader, --tick 1) median {r['failover_median_s']:.2f} s, "
          f"max {r['failover_max_s']:.2f} s of 3")
    sys.exit(0)
