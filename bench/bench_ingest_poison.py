"""Ingest with 10% poison: single-report requests to `mpota serve` where every 10th is a report
that can never be stored (NaN in detail, answered 400), against the same server's clean run in
the same process. Ratio = requests answered per second with poison / clean (goal >= 0.95: a
poison request costs no more than a good one and never sinks the group commit of the others).

    python -m bench.bench_ingest_poison     # prints one line
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from bench.bench_ingest import CLIENT_PROCS, CONNS, DURATION, SECRET, measure, serve_cmd, start_server

POISON_EVERY = 10


def run(rounds: int = 2, duration: float = DURATION) -> dict[str, float]:
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "feed").mkdir()
        (root / "fleet.secret").write_text(SECRET.hex())
        proc, port = start_server(serve_cmd(root, "s.db"))
        try:
            measure(port, 1, 0.5)  # warm up
            for _ in range(rounds):  # alternate, best of rounds: other load skews both alike
                for label, every in (("clean", 0), ("poison", POISON_EVERY)):
                    good, answered = measure(port, 1, duration, poison_every=every)
                    results[f"{label}_rps"] = max(results.get(f"{label}_rps", 0.0), answered)
                    results[f"{label}_good_rps"] = max(results.get(f"{label}_good_rps", 0.0), good)
        finally:
            proc.kill()
            proc.wait()
    results["ratio"] = results["poison_rps"] / results["clean_rps"]
    return results


if __name__ == "__main__":
    r = run()
    print(f"ingest with 1 in {POISON_EVERY} requests poison (SQLite, {CLIENT_PROCS}x{CONNS} connections, "
          f"{os.cpu_count()} cores, {sys.platform}): {r['poison_rps']:.0f} req/s answered "
          f"({r['poison_good_rps']:.0f} good) vs clean {r['clean_rps']:.0f} req/s, ratio {r['ratio']:.2f}")
