"""Ingest with 10% poison: single-report requests to `mpota serve` where every 10th is a report
that can never be stored (NaN in detail, answered 400), against the same server's clean run in
the same process. Ratio = requests answered per second with poison / clean (goal >= 0.95: a
poison request costs no more than a good one and never sinks the group commit of the others);
the same as the server's CPU time per request answered, clean / poison, which other load on
the machine moves less.

    python -m bench.bench_ingest_poison     # prints one line
"""

from __future__ import annotations

import os
import sys

from bench.bench_ingest import CLIENT_PROCS, CONNS, DURATION, Case, bench_root, best_of, serve_cmd, started

POISON_EVERY = 10


def run(rounds: int = 2, duration: float = DURATION) -> dict[str, float]:
    pids: dict[str, int] = {}
    with bench_root() as root, started({"server": serve_cmd(root, "s.db")}, pids) as ports:
        r = best_of({"server": (ports["server"], None)},
                    (Case("clean"), Case("poison", poison_every=POISON_EVERY)), rounds, duration, pids)
    r["ratio"] = r["server_poison_answered"] / r["server_clean_answered"]
    r["cpu_ratio"] = r["server_clean_cpu_us"] / r["server_poison_cpu_us"]
    return r


if __name__ == "__main__":
    r = run()
    print(f"ingest with 1 in {POISON_EVERY} requests poison (SQLite, {CLIENT_PROCS}x{CONNS} connections, "
          f"{os.cpu_count()} cores, {sys.platform}): {r['server_poison_answered']:.0f} req/s answered "
          f"({r['server_poison']:.0f} good) vs clean {r['server_clean_answered']:.0f} req/s, "
          f"ratio {r['ratio']:.2f}; server CPU per request answered: clean {r['server_clean_cpu_us']:.0f} "
          f"/ poison {r['server_poison_cpu_us']:.0f} us = {r['cpu_ratio']:.2f}")
