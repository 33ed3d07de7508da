"""Time for 1,000 simulated boards through a 4-stage rollout against the real server.

`mpota serve` (a subprocess: the feed, reports, the orchestrator, SQLite) and a fleet of 1,000
simulated ESP32 boards (sim/fleet.py) running the real device code under CPython, each its own
simdir, at most 2x cores boards at a time. Groups: canary 10, internal 20, pilot 50, general 920.
The rollout of v1.1.0 goes canary -> internal -> pilot -> general (100% in one step), soak 0,
judged after 1 finished device per stage. Every poll round, every board boots and polls once
(boot, update check, heartbeat; an eligible board downloads, installs, resets, runs its trial,
confirms). Measured: from `rollout start` until every board boots a confirmed v1.1.0, checked
on every board's flash and in the server inventory. Boards that polled before the last step get
it on their next round, as real boards would.

    python -m bench.bench_fleet [N]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sim.fleet import Fleet

REPO = Path(__file__).resolve().parent.parent

BOARD = "esp32-generic-4mb"
BOARDS = 1000
STAGES = "canary,internal,pilot,general"


def _groups(n: int) -> dict[str, int]:
    return {"canary": max(1, n // 100), "internal": max(1, n // 50), "pilot": max(1, n // 20)}


def _setup(work: Path) -> dict[str, Any]:
    from host_tools.feed import add_release, publish_release
    from host_tools.fleet import create_secret
    from host_tools.imagebuild import build_app_image
    from host_tools.keys import generate_key, load_private_key
    from host_tools.release import sign_release

    key_path = work / "key.pem"
    generate_key(key_path, "both")
    key = load_private_key(key_path)
    secret_path = work / "fleet.secret"
    secret = create_secret(secret_path)
    feed = work / "feed"
    images = {}
    for v in ("1.0.0", "1.1.0"):
        img = build_app_image("esp32", v, "mpota-bench", 0, code_size=0x4000)
        images[v] = img
        (work / f"app-{v}.bin").write_bytes(img)
        sign_release(work / f"app-{v}.bin", key, BOARD, v, out_dir=work / f"rel-{v}", compress=True,
                     window_bits=10)
    publish_release(work / "rel-1.0.0", feed, "stable", key)
    add_release(work / "rel-1.1.0", feed)
    return {"key": key, "key_path": key_path, "secret": secret, "secret_path": secret_path, "feed": feed,
            "images": images}


def _serve(work: Path, s: dict[str, Any]) -> tuple[subprocess.Popen[str], str]:
    exe = Path(sys.executable).with_name("mpota")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "host_tools.cli"]
    cmd += ["serve", "--feed", str(s["feed"]), "--db", f"sqlite:///{work / 'mpota.db'}", "--port", "0",
            "--fleet-secret", str(s["secret_path"]), "--rollout-key", str(s["key_path"]), "--tick", "0.5"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(work / "server.log", "w"), text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("serving on "):
        proc.kill()
        raise RuntimeError(f"mpota serve did not start: {line!r} (see {work / 'server.log'})")
    return proc, line.split()[-1]


def run(n: int = BOARDS) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mpota-fleet-bench-") as tmp:
        work = Path(tmp)
        s = _setup(work)
        proc, url = _serve(work, s)
        try:
            t0 = time.monotonic()
            keys = {"release": [s["key"].public_hex], "rollout": [s["key"].public_hex]}
            fleet = Fleet(work / "boards", url, url + "/", n, secret=s["secret"], keys=keys,
                          image=s["images"]["1.0.0"], groups=_groups(n), interpreter="cpython",
                          workers=3 * (os.cpu_count() or 2))  # boards wait on I/O and the harness
            fleet.register()
            setup_s = time.monotonic() - t0
            plan = {"soak": 0, "min_finished": 1, "in_progress_timeout": "30m",
                    "stages": [{"name": x} for x in STAGES.split(",")[:3]]
                    + [{"name": "general", "batch_size_percentage": 100}]}
            t1 = time.monotonic()
            status, doc = fleet.operator("POST", "/v1/rollouts", {"board": BOARD, "version": "1.1.0",
                                                                  "plan": plan, "id": "r-bench"})
            if status != 201:
                raise RuntimeError(f"rollout start: HTTP {status} {doc}")
            rounds = boots = 0
            stages_seen: list[str] = []
            state = "active"
            while rounds < 12:
                summary = fleet.poll_all()
                rounds += 1
                boots += summary.boots
                st = fleet.rollout_status("r-bench")
                state = st["rollout"]["state"]
                stages_seen.append(st["step"]["stage"])
                done = Counter(fleet.versions().values()).get("1.1.0", 0)
                print(f"  round {rounds}: {summary.line()}; server {state} at {st['step']['stage']}; "
                      f"{done}/{n} on 1.1.0", file=sys.stderr, flush=True)
                if state != "active" and done == n:
                    break
            took = time.monotonic() - t1
            hist = fleet.rollout_status("r-bench")["history"]
            t_start = hist[0]["time"]
            timeline = [f"{h['kind']} +{h['time'] - t_start:.0f}s" for h in hist[1:]]
            inv = fleet.inventory()
            on_new = sum(1 for d in fleet.by_id if inv.get(d, {}).get("version") == "1.1.0")
            flash = [fleet.flash_report(d) for d in fleet.by_id]
            flash_ok = sum(1 for f in flash
                           if f["version"] == "1.1.0" and f["valid"] and f["ota_state"] == "VALID")
            fleet.close()
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    if state != "completed" or flash_ok != n or on_new != n:
        raise RuntimeError(f"rollout {state}: {flash_ok}/{n} boards on a valid 1.1.0 (flash), "
                           f"{on_new}/{n} in the inventory")
    return {"boards": n, "seconds": round(took, 1), "setup_s": round(setup_s, 1), "rounds": rounds,
            "boots": boots, "boots_per_s": round(boots / took, 1), "workers": fleet.workers,
            "cores": os.cpu_count(), "stages": sorted(set(stages_seen), key=stages_seen.index),
            "timeline": timeline}


def line(r: dict[str, Any]) -> str:
    return (f"fleet: {r['boards']} simulated boards (CPython, real device code), 4 stages against "
            f"`mpota serve`: "
            f"{r['seconds']} s from rollout start to all on a confirmed v1.1.0 (flash + inventory); "
            f"{r['rounds']} poll rounds, {r['boots']} boots ({r['boots_per_s']}/s, {r['workers']} at a time, "
            f"{r['cores']} cores); server: {', '.join(r['timeline'])}; fleet created in {r['setup_s']} s")


if __name__ == "__main__":
    print(line(run(int(sys.argv[1]) if len(sys.argv) > 1 else BOARDS)))
