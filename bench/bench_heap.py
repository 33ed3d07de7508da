"""Heap an update needs: bisection on the MicroPython unix port's -X heapsize.

The device package is compiled to .mpy by mpy-cross (as `mpota deploy` installs it) on a
simulated board (sim/board.py); a loopback feed server (tests/feedkit.py, signed by the host
tools) offers a genuine 1.5 MB app image. Scripts run on a fresh board per probe:

- bare: the simulated board's bootstrap alone;
- empty: ``u = Updater.from_config(CONFIG)``, an application holding its updater ("the same
  script without the update call", as issue 4 defines the reference);
- update: the same plus ``u.update(reset=False)`` (channel, manifest, two P-256 verifies, 1.5 MB
  streamed into the next slot with SHA-256, read-back verification, set_boot, pending record,
  reports to the server, all of them delivered during the run).

For each, the smallest heapsize (to HEAP_STEP bytes) at which the run succeeds; the line prints
the floors and update - empty (target, issue 4: <= 24 KB), and update - bare for reference.
``run(encoding="zlib")`` measures a zlib transfer (window_bits 10) instead.
"""

from __future__ import annotations

import json
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


def _floor(ok: Any, lo: int, hi: int) -> int:
    """Smallest n in (lo, hi] with ok(n), given not ok(lo) and ok(hi), to HEAP_STEP."""
    while hi - lo > HEAP_STEP:
        mid = (lo + hi) // 2 // HEAP_STEP * HEAP_STEP
        if mid <= lo:
            mid = lo + HEAP_STEP
        if ok(mid):
            hi = mid
        else:
            lo = mid
    return hi


def run(image_bytes: int = IMAGE_BYTES, encoding: str = "none") -> dict[str, Any]:
    from feedkit import Board, Feed, Keys, device_config, image, serve

    with tempfile.TemporaryDirectory(prefix="mpota-bench-heap-") as tmp_s:
        tmp = Path(tmp_s)
        keys = Keys(tmp / "keys")
        feed = Feed(tmp / "feed", keys)
        feed.add_release("1.1.0", image("1.1.0", size=image_bytes), compress=encoding == "zlib",
                         window_bits=10)
        feed.set_channel("1.1.0")
        running = image("1.0.0")
        probes: list[tuple[str, int, bool]] = []
        with serve(feed.root) as srv:
            cfg = device_config(srv, keys, timeout_ms=10000)
            count = [0]

            def ok_for(body: str, name: str) -> Any:
                def ok(heap: int) -> bool:
                    count[0] += 1
                    board = Board(tmp / f"b{count[0]}", running, cfg, device="mpy")
                    srv.reset()
                    out = board.run(body, "micropython", heapsize=str(heap), timeout=300)
                    good = out.kind == "exit" and '"outcome": "ok"' in out.stdout
                    if body is _UPDATE:  # and every report reached the server (none left queued)
                        good = good and [e for e, _ in srv.events()][-1:] == ["installed"]
                    probes.append((name, heap, good))
                    return good
                return ok

            ok_bare = ok_for(_BARE, "bare")
            ok_empty = ok_for(_EMPTY, "empty")
            ok_update = ok_for(_UPDATE, "update")
            hi = 1 << 20
            if not ok_empty(hi) or not ok_update(hi):
                raise SystemExit("bench_heap: the scripts fail even with a 1 MB heap")
            bare = _floor(ok_bare, 2048, hi)
            empty = _floor(ok_empty, bare - HEAP_STEP, hi)
            update = _floor(ok_update, empty - HEAP_STEP, hi)
    return {"image_bytes": image_bytes, "encoding": encoding, "bare_floor": bare, "empty_floor": empty,
            "update_floor": update, "extra": update - empty, "extra_kb": round((update - empty) / 1024, 1),
            "extra_bare_kb": round((update - bare) / 1024, 1), "target_kb": TARGET_KB, "step": HEAP_STEP,
            "probes": len(probes)}


def main() -> None:
    r = run()
    z = run(encoding="zlib")
    print(json.dumps([r, z]), file=sys.stderr)
    print(f"heap (MicroPython, .mpy, simulated board): app without the update call {r['empty_floor']} B, "
          f"with update() of {r['image_bytes'] / 1e6:.2f} MB {r['update_floor']} B: extra {r['extra_kb']} KB "
          f"(zlib window 10: {z['extra_kb']} KB; above the bare board {r['bare_floor']} B: "
          f"{r['extra_bare_kb']} KB) (target <= {TARGET_KB} KB; step {HEAP_STEP} B)")


if __name__ == "__main__":
    main()
