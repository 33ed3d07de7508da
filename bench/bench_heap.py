"""Heap an update needs (issues 4 and 16): bisection on the MicroPython unix port's -X heapsize.

Issue 16's measure: the heap a full update of a 1.5 MB image needs *above an empty board* — the
floor of the update script minus the floor of an empty script on the same simulated board — at
most 40 KB (stretch 32 KB), plain and zlib (window 10), printed next to the bare loop
(bench/bareloop.py: raw socket GET into one 4 KiB buffer + writeblocks) measured the same way in
the same run. The simulated board (sim/board.py) runs its bootloader in a process of its own and
keeps its esp32/machine/network fakes small (sim/fakes/README.md: their heap at script start is
printed), so the empty floor is close to what a board's empty MicroPython needs plus those fakes.

The device package is compiled to .mpy by mpy-cross (as `mpota deploy` installs it); a loopback
feed server (sim/feedkit.py, signed by the host tools) offers a genuine 1.5 MB app image.
Scripts run on a fresh board per probe:

- empty: nothing (the board's boot, the fakes, an empty script);
- bare loop: ``bare_loop(URL)`` on the raw image;
- update: ``Updater.from_config(CONFIG).update(reset=False)`` (channel, manifest, two P-256
  verifies, 1.5 MB streamed into the next slot with SHA-256, read-back verification, set_boot,
  pending record, every report delivered to the server during the run);
- app (for issue 4's older figure): the update script without its update call.

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

from bench import bareloop

REPO = Path(__file__).resolve().parent.parent

IMAGE_BYTES = 1_500_000
HEAP_STEP = 256
STABLE = 2048  # every heap in [floor, floor + STABLE) must succeed
TARGET_KB = 40  # issue 16: above an empty board, plain and zlib
STRETCH_KB = 32
APP_TARGET_KB = 24  # issue 4: above the app without the update call

_BARE = 'print("RESULT {\\"outcome\\": \\"ok\\"}")\n'
_LOOP = bareloop.SOURCE + """
n = bare_loop(URL)
print("RESULT {\\"outcome\\": \\"%s\\"}" % ("ok" if n == SIZE else "short"))
"""
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
import simboot
print("RESULT {\\"outcome\\": \\"%s\\", \\"live\\": %d, \\"board_heap\\": %d}" % (
    "ok" if r else "none", a1 - a0, simboot.BOARD_HEAP))
"""

# Where the heap goes, one run with an ample heap: the live heap (after a collection) above the
# script's start at every connection the update opens (document fetches, the image, reports)
# and at the flash calls (first/middle write, read-back, set_boot), with the mpota modules in RAM
# then. _COSTS: each module's own cost on an empty board (code, objects, its names in the qstr
# pool; errors first, which the others import), each unloaded again before the next.
_PHASES = """
import gc, sys, esp32, socket
marks = []
gc.collect()
base = gc.mem_alloc()
def mark(name):
    gc.collect()
    mods = [k[6:] for k in sys.modules if k.startswith("mpota.")]
    mods.sort()
    marks.append([name, gc.mem_alloc() - base, " ".join(mods)])
class _Sock:
    def __init__(self, mod):
        self._m = mod
    def __getattr__(self, name):
        return getattr(self._m, name)
    def socket(self, *a):
        mark("connect")
        return self._m.socket(*a)
sys.modules["socket"] = _Sock(socket)
P = esp32.Partition
def wrap(name, when):
    f = getattr(P, name)
    n = [0]
    def w(self, *a):
        n[0] += 1
        if n[0] in when:
            mark("%s #%d" % (name, n[0]))
        return f(self, *a)
    setattr(P, name, w)
wrap("writeblocks", (1, 200))
wrap("readblocks", (100,))
wrap("set_boot", (1,))
from mpota.updater import Updater
mark("updater imported")
u = Updater.from_config(CONFIG)
mark("from_config")
r = u.update(reset=False)
mark("returned")
sys.modules["socket"] = socket
import json
print("RESULT " + json.dumps({"outcome": "ok" if r else "none", "marks": marks}))
"""
_COSTS = """
import gc, sys, json, micropython
costs = []
import mpota
print("QSTR _")
micropython.qstr_info()
for m in MODULES:
    gc.collect()
    a = gc.mem_alloc()
    __import__("mpota." + m)
    gc.collect()
    costs.append([m, gc.mem_alloc() - a])
    print("QSTR " + m)
    micropython.qstr_info()
    if m != "errors":
        del sys.modules["mpota." + m]
        delattr(mpota, m)
print("RESULT " + json.dumps({"costs": costs}))
"""

# A frozen build, estimated: every mpota module loaded before the script (so their code and
# names are part of the empty board, as frozen bytecode and its qstrs are in flash) and none
# unloaded during the update. Not the same as frozen (there the module and function objects
# are still made in RAM at import), so it reads as "about this much".
_PRELOAD = """
import mpota
def _keep(*names):
    pass
for _n in MODULES:
    __import__("mpota." + _n)
for _n in MODULES:
    _m = getattr(mpota, _n)
    if hasattr(_m, "_unload"):
        _m._unload = _keep
_n = _m = None
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


# [module, heap, of which qstr pool growth] from _COSTS' output
def _with_pool(costs: list[list[Any]], stdout: str) -> list[list[Any]]:
    pool = [int(m) for m in re.findall(r"QSTR \w+\nqstr pool: .*?n_total_bytes=(\d+)", stdout)]
    return [[name, n, pool[i + 1] - pool[i]] for i, (name, n) in enumerate(costs)]


# device modules an update never loads (the trial boot's and the application's reporter)
_NOT_UPDATE = ("health", "report", "trial")


def _modules() -> list[str]:
    names = sorted(p.stem for p in (REPO / "device" / "mpota").glob("*.py") if p.stem != "__init__")
    return ["errors"] + [n for n in names if n != "errors"]


def run(image_bytes: int = IMAGE_BYTES, encoding: str = "none", loop: bool = True,
        frozen: bool = True) -> dict[str, Any]:
    from sim.feedkit import Board, Feed, Keys, device_config, factory_config, image, serve

    with tempfile.TemporaryDirectory(prefix="mpota-bench-heap-") as tmp_s:
        tmp = Path(tmp_s)
        keys = Keys(tmp / "keys")
        feed = Feed(tmp / "feed", keys)
        data = image("1.1.0", size=image_bytes)
        feed.add_release("1.1.0", data, compress=encoding == "zlib", window_bits=10)
        feed.set_channel("1.1.0")
        raw_path = "releases/esp32-generic-4mb/1.1.0/firmware.bin"
        (feed.root / raw_path).write_bytes(data)  # the bare loop moves the raw bytes
        running = image("1.0.0")  # stock-style (no version in its app_desc), as MicroPython's builds
        probes: list[tuple[str, int, bool]] = []
        with serve(feed.root) as srv:
            # the factory version as `mpota deploy` records it for a stock build
            cfg = device_config(srv, keys, timeout_ms=10000, **factory_config(running, "1.0.0"))
            count = [0]
            loop_body = _LOOP.replace("URL", repr(srv.url + raw_path)).replace("SIZE", str(len(data)))

            def board() -> Any:
                count[0] += 1
                srv.reset()
                return Board(tmp / f"b{count[0]}", running, cfg, device="mpy")

            def ok_for(body: str, name: str) -> Any:
                def ok(heap: int) -> bool:
                    out = board().run(body, "micropython", heapsize=str(heap), timeout=300)
                    good = (out.kind == "exit" and '"outcome": "ok"' in out.stdout
                            and "MemoryError" not in out.stdout + out.stderr)
                    if body.endswith(_UPDATE):  # and every report reached the server (none left queued)
                        good = good and [e for e, _ in srv.events()][-1:] == ["installed"]
                    probes.append((name, heap, good))
                    return good
                return ok

            ok_bare = ok_for(_BARE, "empty")
            ok_loop = ok_for(loop_body, "bare loop")
            ok_app = ok_for(_EMPTY, "app")
            ok_update = ok_for(_UPDATE, "update")
            hi = 1 << 20
            if not ok_app(hi) or not ok_update(hi) or (loop and not ok_loop(hi)):
                raise SystemExit("bench_heap: the scripts fail even with a 1 MB heap")
            pre = _PRELOAD.replace("MODULES", repr([m for m in _modules() if m not in _NOT_UPDATE]))
            ok_fz_empty = ok_for(pre + _BARE, "frozen empty")
            fz_update = pre + _UPDATE
            ok_fz_update = ok_for(fz_update, "frozen update")
            bare = _floor(ok_bare, 2048, hi)
            loop_floor = _floor(ok_loop, bare - HEAP_STEP, hi) if loop else 0
            app = _floor(ok_app, bare - HEAP_STEP, hi)
            update = _floor(ok_update, app - HEAP_STEP, hi)
            ph = board().run(_PHASES, "micropython", heapsize=str(hi), timeout=300).result()
            out = board().run(_COSTS.replace("MODULES", repr(_modules())), "micropython",
                              heapsize=str(hi), timeout=300)
            costs = _with_pool(out.result()["costs"], out.stdout)
            fz = None
            if frozen and ok_fz_empty(hi) and ok_fz_update(hi):
                fz_empty = _floor(ok_fz_empty, bare - HEAP_STEP, hi)
                fz = _floor(ok_fz_update, fz_empty - HEAP_STEP, hi) - fz_empty
            prof = board().run(_PROFILE, "micropython", heapsize=str(hi), timeout=300)
            live = prof.result()["live"]
            board_heap = prof.result()["board_heap"]
            qstr = _qstr_bytes(prof.stdout, "QSTR-AFTER") - _qstr_bytes(prof.stdout, "QSTR-BEFORE")
    return {"image_bytes": image_bytes, "encoding": encoding, "empty_floor": bare, "app_floor": app,
            "update_floor": update, "loop_floor": loop_floor, "board_heap": board_heap,
            "extra": update - bare, "extra_kb": round((update - bare) / 1024, 1),
            "loop_kb": round((loop_floor - bare) / 1024, 1) if loop else None,
            "app_kb": round((update - app) / 1024, 1), "target_kb": TARGET_KB, "stretch_kb": STRETCH_KB,
            "met": update - bare <= TARGET_KB * 1024, "step": HEAP_STEP, "stable": STABLE,
            "live_growth": live, "qstr_growth": qstr, "probes": len(probes),
            "phases": ph["marks"], "module_costs": costs,
            "frozen_kb": round(fz / 1024, 1) if fz is not None else None}


def main() -> None:
    r = run()
    z = run(encoding="zlib", loop=False, frozen=False)
    print(json.dumps([r, z]), file=sys.stderr)

    peak = max(r["phases"], key=lambda m: m[1])

    def verdict(x: dict[str, Any]) -> str:
        kb = x["extra_kb"]
        return "stretch met" if kb <= STRETCH_KB else "met" if x["met"] else "NOT met"

    print(f"heap (MicroPython, .mpy, simulated board, stock-style images) above an empty board "
          f"({r['empty_floor']} B floor, fakes {r['board_heap'] / 1024:.1f} KB at script start): update() of "
          f"{r['image_bytes'] / 1e6:.2f} MB plain {r['extra_kb']} KB, zlib window 10 {z['extra_kb']} KB "
          f"vs bare loop (raw socket GET + writeblocks, one 4 KiB buffer) {r['loop_kb']} KB — "
          f"target <= {TARGET_KB} KB (stretch {STRETCH_KB}): "
          f"{verdict(r)} plain, {verdict(z)} zlib; a frozen build (estimate: modules preloaded, none "
          f"unloaded) {r['frozen_kb']} KB plain; above the app without the update call: "
          f"{r['app_kb']} / {z['app_kb']} KB (issue 4 target <= {APP_TARGET_KB}); "
          f"largest live heap at a connection or flash call: {peak[1] / 1024:.1f} KB ({peak[0]}; "
          f"mpota modules in RAM: {peak[2]}); "
          f"of the update's {r['live_growth'] / 1024:.1f} KB of lasting live heap, "
          f"{r['qstr_growth'] / 1024:.1f} KB is the qstr pool (step {HEAP_STEP} B, floors stable over "
          f"+{STABLE} B)")


if __name__ == "__main__":
    main()
