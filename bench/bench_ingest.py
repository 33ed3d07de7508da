"""Report ingest: `mpota serve` with SQLite against a bare aiohttp baseline, clients in other processes.

Clients: CLIENT_PROCS processes, each with CONNS keep-alive connections on loopback, each
connection sending one request after the other (raw HTTP/1.1, prepared bytes, so the clients cost
little CPU on this shared 2-core machine). Figures: single-report requests/s and reports/s with
batches of 50, for the real server and for the baseline (a bare aiohttp handler doing the HMAC
check and group-committed SQLite inserts), measured in the same run; ratio = server / baseline.
Beside the rates, each server's CPU time per request (best round): with the clients on the same
two cores the rates follow it, and other load on the machine moves it much less.

    python -m bench.bench_ingest            # prints one line
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import multiprocessing as mp
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SECRET = b"\x5a" * 32
CLIENT_PROCS = 3
CONNS = 8
DURATION = 2.0
DEVICES_PER_CONN = 8


def _token(device_id: str) -> str:
    return hmac.new(SECRET, device_id.encode(), hashlib.sha256).hexdigest()


# --------------------------------------------------------------------------- baseline server
def baseline_server(db: str) -> None:
    """The floor to compare with: aiohttp + HMAC per request + group-committed SQLite inserts."""
    from aiohttp import web

    conn = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, device_id TEXT, seq INTEGER, "
                 "event TEXT, body TEXT)")
    from concurrent.futures import ThreadPoolExecutor
    pool = ThreadPoolExecutor(1)
    queue: asyncio.Queue[tuple[list[tuple[Any, ...]], asyncio.Future[None]]] = asyncio.Queue()

    def commit(rows: list[tuple[Any, ...]]) -> None:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO events (device_id, seq, event, body) VALUES (?, ?, ?, ?)", rows)
        conn.execute("COMMIT")

    async def writer() -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await queue.get()]
            while not queue.empty():
                items.append(queue.get_nowait())
            await loop.run_in_executor(pool, commit, [r for rows, _ in items for r in rows])
            for _, fut in items:
                fut.set_result(None)

    async def handler(request: web.Request) -> web.Response:
        device = request.headers.get("X-Mpota-Device", "")
        token = request.headers.get("Authorization", "")[7:]
        if not hmac.compare_digest(_token(device), token):
            return web.json_response({"error": "bad token"}, status=401)
        data = json.loads(await request.read())
        reports = data["reports"] if "reports" in data else [data]
        fut = asyncio.get_running_loop().create_future()
        queue.put_nowait(([(r["device_id"], r["seq"], r["event"], json.dumps(r)) for r in reports], fut))
        await fut
        return web.json_response({"accepted": len(reports)})

    async def main() -> None:
        app = web.Application()
        app.router.add_post("/v1/reports", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        asyncio.get_running_loop().create_task(writer())
        print(f"serving on http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}", flush=True)  # type: ignore
        await asyncio.Event().wait()

    asyncio.run(main())


# --------------------------------------------------------------------------- clients
# A report that validates nowhere (NaN in detail): the server must answer 400 and store nothing.
POISON = b'{"device_id": "%s", "seq": 1, "event": "heartbeat", "detail": {"x": NaN}}'


def _client(ports: int | list[int], proc: int, batch: int, duration: float, start_at: float, seq0: int,
            out: Any, poison_every: int = 0, ca: str | None = None) -> None:
    """Counts the good requests answered 200; with poison_every=N every Nth request is POISON
    (answered 400, not counted); with ca the connection is https, verified against that CA.
    With several ports (replicas behind one address) the connections spread evenly over them."""
    async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: str,
                       body: bytes) -> bytes:
        """Send one request, read its whole answer (keep-alive), return the answer's head."""
        writer.write(head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body)
        answer = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in answer.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)
        return answer

    async def conn_loop(c: int) -> tuple[int, int]:
        port = ports if isinstance(ports, int) else ports[(proc * CONNS + c) % len(ports)]
        ssl_ctx = None
        if ca is not None:
            import ssl

            ssl_ctx = ssl.create_default_context(cafile=ca)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ssl_ctx)
        devices = [f"bench-{proc}-{c}-{i}" for i in range(DEVICES_PER_CONN)]
        heads = {d: (f"POST /v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Authorization: Bearer {_token(d)}\r\nX-Mpota-Device: {d}\r\n") for d in devices}
        seqs = dict.fromkeys(devices, seq0)
        done = refused = 0
        n = 0
        while time.time() < start_at:
            await asyncio.sleep(0.005)
        end = start_at + duration
        while time.time() < end:
            d = devices[n % len(devices)]
            n += 1
            if poison_every and n % poison_every == 0:
                body = POISON % d.encode()
                head = await exchange(reader, writer, heads[d], body)
                if head[9:12] != b"400":
                    raise RuntimeError(f"poison answered {head[:40]!r}")
                refused += 1
                continue
            reports = []
            for _ in range(batch):
                seqs[d] += 1
                reports.append({"device_id": d, "seq": seqs[d], "event": "heartbeat", "uptime_ms": 1000,
                                "board": "esp32-generic-4mb", "group": "general", "version": "1.0.0",
                                "slot": "ota_0", "rollout": None, "target": None,
                                "detail": {"free": 61234, "health": "OK"}})
            body = json.dumps(reports[0] if batch == 1 else {"reports": reports}).encode()
            head = await exchange(reader, writer, heads[d], body)
            if head[9:12] != b"200":
                raise RuntimeError(f"server answered {head[:40]!r}")
            done += 1
        writer.close()
        return done, refused

    async def main() -> tuple[int, int]:
        counts = await asyncio.gather(*(conn_loop(c) for c in range(CONNS)))
        return sum(g for g, _ in counts), sum(p for _, p in counts)

    out.put(asyncio.run(main()))


def measure(port: int | list[int], batch: int, duration: float = DURATION, poison_every: int = 0,
            ca: str | None = None) -> tuple[float, float]:
    """(good requests answered 200 per second, all requests answered per second)."""
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    start_at = time.time() + 0.5
    seq0 = int(time.time() * 1000) * 1000  # fresh seqs for every measurement
    procs = [ctx.Process(target=_client,
                         args=(port, p, batch, duration, start_at, seq0, out, poison_every, ca))
             for p in range(CLIENT_PROCS)]
    for p in procs:
        p.start()
    counts = [out.get(timeout=duration + 60) for _ in procs]
    for p in procs:
        p.join(10)
    good, refused = sum(g for g, _ in counts), sum(r for _, r in counts)
    return good / duration, (good + refused) / duration


@dataclass(frozen=True)
class Case:
    """One kind of load: reports per request, and every Nth request poison (0: none)."""

    label: str
    batch: int = 1
    poison_every: int = 0


# what a measurement talks to: its port (several: replicas) and the CA to verify https against
Target = tuple["int | list[int]", "str | None"]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def best_of(targets: Mapping[str, Target], cases: Sequence[Case], rounds: int = 2,
            duration: float = DURATION, pids: Mapping[str, int] | None = None) -> dict[str, float]:
    """Every case on every target, alternating between them, best of `rounds`: load from other
    processes on the machine skews all of them alike. Keys: "{target}_{case}" reports answered
    200 per second, "{target}_{case}_answered" requests answered per second (poison included);
    for a target in pids, "{target}_{case}_cpu_us": its process's CPU time per request answered
    (the lowest of the rounds), which other load on the machine moves much less than a rate."""
    results: dict[str, float] = {}
    for port, ca in targets.values():
        measure(port, 1, 0.5, ca=ca)  # warm up: caches, connections, first devices
    for _ in range(rounds):
        for case in cases:
            for name, (port, ca) in targets.items():
                pid = (pids or {}).get(name)
                cpu0 = cpu_seconds(pid) if pid else 0.0
                good, answered = measure(port, case.batch, duration, case.poison_every, ca)
                for key, value in ((f"{name}_{case.label}", good * case.batch),
                                   (f"{name}_{case.label}_answered", answered)):
                    results[key] = max(results.get(key, 0.0), value)
                if pid and answered:
                    per_request = (cpu_seconds(pid) - cpu0) / (answered * duration) * 1e6
                    key = f"{name}_{case.label}_cpu_us"
                    results[key] = min(results.get(key, per_request), per_request)
    return results


@contextmanager
def bench_root() -> Iterator[Path]:
    """A temporary folder with an empty feed/ and fleet.secret (SECRET), for serve_cmd."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "feed").mkdir()
        (root / "fleet.secret").write_text(SECRET.hex())
        yield root


def serve_cmd(root: Path, db: str, *extra: str) -> list[str]:
    """`mpota serve` on a free port over root/feed (root/fleet.secret holds SECRET)."""
    return [sys.executable, "-m", "host_tools.cli", "serve", "--feed", str(root / "feed"), "--port", "0",
            "--db", f"sqlite:///{root / db}", "--fleet-secret", str(root / "fleet.secret"), *extra]


@contextmanager
def started(cmds: Mapping[str, list[str]], pids: dict[str, int] | None = None) -> Iterator[dict[str, int]]:
    """Each command started (it prints "serving on ...:PORT" first), its port by name (and its
    process id in pids); all killed on the way out."""
    procs: list[subprocess.Popen[str]] = []
    ports: dict[str, int] = {}
    try:
        for name, cmd in cmds.items():
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                    cwd=REPO)
            procs.append(proc)
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("serving on"):
                raise RuntimeError(f"{name} did not start: {line!r}")
            ports[name] = int(line.rsplit(":", 1)[1])
            if pids is not None:
                pids[name] = proc.pid
        yield ports
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


SINGLE_AND_BATCHED = (Case("single", 1), Case("batch50", 50))


def run(rounds: int = 2, duration: float = DURATION) -> dict[str, float]:
    """The server and the baseline side by side (the idle one costs nothing), measured in turn."""
    with bench_root() as root:
        cmds = {"baseline": [sys.executable, "-m", "bench.bench_ingest", "--baseline-server",
                             str(root / "b.db")],
                "server": serve_cmd(root, "s.db")}
        pids: dict[str, int] = {}
        with started(cmds, pids) as ports:
            r = best_of({name: (port, None) for name, port in ports.items()}, SINGLE_AND_BATCHED, rounds,
                        duration, pids)
    for case in ("single", "batch50"):
        r[f"ratio_{case}"] = r[f"server_{case}"] / r[f"baseline_{case}"]
        r[f"cpu_ratio_{case}"] = r[f"baseline_{case}_cpu_us"] / r[f"server_{case}_cpu_us"]
    return r


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--baseline-server":
        baseline_server(sys.argv[2])
        sys.exit(0)
    r = run()
    print(f"ingest (SQLite, {CLIENT_PROCS} client processes x {CONNS} connections, loopback, "
          f"{os.cpu_count()} cores): single {r['server_single']:.0f} req/s "
          f"(baseline {r['baseline_single']:.0f}, ratio {r['ratio_single']:.2f}); "
          f"batches of 50 {r['server_batch50']:.0f} reports/s "
          f"(baseline {r['baseline_batch50']:.0f}, ratio {r['ratio_batch50']:.2f}); "
          f"server CPU per request, baseline's / ours: single {r['baseline_single_cpu_us']:.0f} / "
          f"{r['server_single_cpu_us']:.0f} us = {r['cpu_ratio_single']:.2f}, batches of 50 "
          f"{r['baseline_batch50_cpu_us']:.0f} / {r['server_batch50_cpu_us']:.0f} us = "
          f"{r['cpu_ratio_batch50']:.2f}")
