"""Power-cut torture (after MCUboot's simulator): cut power at every flash operation of an update.

Two scenarios on a simulated esp32-generic-4mb board running the real device code (the fleet's
board app: ``mpota.boot()`` with a health check, ``Updater.update()``, a heartbeat), against a
real signed feed on loopback (sim/feedkit.py: host-tools releases, a report collector):

- ``confirm``:  v1.0.0 -> v1.1.0 (security_version 1): download, install, reset, trial boot,
  health checks pass, confirm.
- ``rollback``: v1.0.0 -> v1.2.0 (security_version 1, sim flag health=fail): download, install,
  reset, trial boot, the health check fails, roll back, reset, boot v1.0.0 and report.

A dry run records every flash write, sector erase and NVS commit of every boot (the fakes' op
log, bootloader included). Then, for every one of those operations and for "before" and "after"
it, a fresh board repeats the story with the power cut at exactly that point (the op at the cut
is checked against the dry run's), boots again until it settles (the updater resumes or restarts
the download from the feed), and boots once more. Each time it asserts:

- the board boots an image the bootloader accepts whose bytes are one of the two signed images;
- it ends on the new version (``confirm``) or the old one (``rollback``; also ``confirm`` when
  the cut fell in the trial boot before the image was marked valid: the bootloader rolls an
  unconfirmed image back, as ESP-IDF does; the version is then recorded as failed, no retry);
- its state is consistent: nothing pending, no download in progress, the security floor raised
  exactly when the new image was confirmed, the failed list right, the otadata entry valid;
- it stays there on the next boot, and it reported the outcome to the collector: one
  ``confirmed`` (or one ``rolled_back``) decision, and no report seq reused for another report.

``python -m bench.bench_torture`` runs every cut point of both scenarios under CPython and under
the MicroPython unix port (no sampling) and prints the number of cut points checked.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sim import feedkit
from sim.board import RunResult, SimBoard
from sim.fleet import BOARD_APP

REPO = Path(__file__).resolve().parent.parent

OLD = "1.0.0"
IMAGE_BYTES = 160 * 1024   # 40 blocks: the download progress is saved once on the way (every 32)


@dataclass(frozen=True)
class Scenario:
    name: str
    version: str
    sim_flags: str
    expect_new: bool          # the story ends on the new version when nothing goes wrong
    compress: bool            # zlib transfer (restarts after a reset) or plain (resumes with Range)
    delta: bool = False       # the manifest offers a patch from the board's image (restarts too)


SCENARIOS = {
    "confirm": Scenario("confirm", "1.1.0", "", True, False),
    "confirm-zlib": Scenario("confirm-zlib", "1.1.0", "", True, True),
    "rollback": Scenario("rollback", "1.2.0", "health=fail", False, True),
    "confirm-delta": Scenario("confirm-delta", "1.1.0", "", True, True, delta=True),
}


@dataclass(frozen=True)
class CutPoint:
    boot: int          # which boot of the story (0 = the update boot)
    op: int            # operation number within that boot (1-based, bootloader included)
    when: str          # "before" | "after"
    kind: str          # what the dry run did there: write | erase | commit
    addr: int
    length: int

    def label(self) -> str:
        return f"boot {self.boot} op {self.op} {self.when} {self.kind}@0x{self.addr:x}+{self.length}"


@dataclass
class PointResult:
    point: CutPoint
    ok: bool
    outcome: str = ""            # "new" | "old"
    problems: list[str] = field(default_factory=list)
    boots: int = 0
    resumed: bool = False        # the download after the cut rewrote fewer blocks than a whole one
    restarted: bool = False      # cut in the middle of the slot writes, the next update rewrote them all
    diverged: bool = False       # the story went another way before reaching the cut


class Torture:
    """One scenario's world: a signed feed served on loopback, a dry run, cut-point runs."""

    def __init__(self, root: Path, scenario: Scenario, interpreter: str = "cpython",
                 image_bytes: int = IMAGE_BYTES) -> None:
        self.root = root
        self.sc = scenario
        self.interpreter = interpreter
        self.device_mode = "mpy" if interpreter == "micropython" else "link"
        root.mkdir(parents=True, exist_ok=True)
        self.keys = feedkit.Keys(root / "keys")
        self.feed = feedkit.Feed(root / "feed", self.keys)
        self.new_image = feedkit.image(scenario.version, size=image_bytes, secure_version=1,
                                       sim_flags=scenario.sim_flags)
        self.server = feedkit.FeedServer(self.feed.root)
        self.old_image: bytes | None = None
        if scenario.delta:  # a release of the board's own image, then the new one with a patch from it
            self.board("probe")
            assert self.old_image is not None
            self.feed.add_release("1.0.0", self.old_image, compress=True, window_bits=10)
            self.feed.add_release(scenario.version, self.new_image, compress=scenario.compress,
                                  window_bits=10, delta_from=[self.feed.release_dir("1.0.0")])
        else:
            self.feed.add_release(scenario.version, self.new_image, compress=scenario.compress,
                                  window_bits=10)
        self.feed.set_channel(scenario.version)
        self.rollout = feedkit.ROLLOUT_ID
        self.dry: list[RunResult] = []
        self._n = 0
        self.retried = 0  # cut points run again because the story diverged before the cut
        self._lock = threading.Lock()

    def close(self) -> None:
        self.server.close()

    def __enter__(self) -> Torture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ boards
    def board(self, name: str) -> SimBoard:
        cfg = feedkit.device_config(self.server, self.keys, device_id=name, timeout_ms=5000, retries=3,
                                    backoff_ms=10, max_backoff_ms=50)
        b = SimBoard.create(self.root / "boards" / name, device=self.device_mode, config=cfg)
        if self.old_image is None:
            p = b.partition("ota_0")
            self.old_image = b.read(p.offset, _image_len(b, "ota_0"))
        return b

    def run(self, b: SimBoard, **kw: Any) -> RunResult:
        return b.run(BOARD_APP, self.interpreter, timeout=60, **kw)

    def dry_run(self) -> list[CutPoint]:
        """The story without faults; returns every cut point (each op, before and after)."""
        b = self.dry_board = self.board("dry")
        self.dry = b.boot_until_settled(BOARD_APP, max_boots=8, interpreter=self.interpreter, timeout=60)
        kinds = [r.kind for r in self.dry]
        want = ["reset", "exit"] if self.sc.expect_new else ["reset", "reset", "exit"]
        if kinds != want:
            raise AssertionError(f"{self.sc.name}: dry run boots ended {kinds}, expected {want}\n"
                                 f"{self.dry[-1]}")
        problems = self.check(b, "dry", None)
        if problems:
            raise AssertionError(f"{self.sc.name}: dry run: {problems}")
        points = []
        for i, r in enumerate(self.dry):
            if r.ops != len(r.log):
                raise AssertionError(f"dry run boot {i}: {r.ops} ops but {len(r.log)} logged")
            for k, (kind, addr, n) in enumerate(r.log, 1):
                for when in ("before", "after"):
                    points.append(CutPoint(i, k, when, kind, addr, n))
        return points

    def cut(self, point: CutPoint, attempts: int = 3) -> PointResult:
        """Run one cut point. A run that never reached the cut (the boot before it went another way
        than in the dry run, e.g. a download timing out on a loaded machine) is tried again on a
        fresh board, up to ``attempts`` times; every check failure counts at once."""
        for _ in range(attempts - 1):
            res = self._cut(point)
            if res.ok or not res.diverged:
                return res
            with self._lock:
                self.retried += 1
        return self._cut(point)

    def _cut(self, point: CutPoint) -> PointResult:
        with self._lock:
            self._n += 1
            name = f"cut{self._n:04d}-b{point.boot}-o{point.op}-{point.when[0]}"
        res = PointResult(point, False)
        b = self.board(name)
        try:
            for i in range(point.boot):
                r = self.run(b)
                res.boots += 1
                if r.kind != self.dry[i].kind:
                    res.diverged = True
                    res.problems.append(f"boot {i} before the cut ended {r.kind}, dry run "
                                        f"{self.dry[i].kind}: {_tail(r)}")
                    return res
            r = self.run(b, cut=(point.op, point.when))
            res.boots += 1
            if r.kind != "powercut":
                res.diverged = True
                res.problems.append(f"the cut boot ended {r.kind} ({r.why}) after {r.ops} ops, not powercut: "
                                    f"it went another way than the dry run: {_tail(r)}")
                return res
            got = r.log[point.op - 1] if len(r.log) >= point.op else None
            if got != (point.kind, point.addr, point.length):
                res.diverged = True
                res.problems.append(f"op {point.op} was {got}, dry run {point.kind}@0x{point.addr:x}")
                return res
            after = b.boot_until_settled(BOARD_APP, max_boots=8, interpreter=self.interpreter, timeout=60)
            res.boots += len(after)
            if after[-1].rebooted:
                res.problems.append(f"never settled: {[x.kind for x in after]}")
                return res
            for x in after:
                if x.kind not in ("exit", "reset"):
                    res.problems.append(f"a boot after the cut ended {x.kind}: {x.why}")
            whole = self.slot_writes(self.dry[0])
            redone = [self.slot_writes(x) for x in after if self.slot_writes(x)]
            res.resumed = point.boot == 0 and bool(redone) and 0 < redone[0] < whole
            res.restarted = (point.boot == 0 and bool(redone) and redone[0] == whole
                             and 0 < self.slot_writes(self.dry[0], point.op) < whole)
            res.problems += self.check(b, name, point, res)
            again = self.run(b)
            res.boots += 1
            if again.kind != "exit" or again.version != after[-1].version:
                res.problems.append(f"next boot: {again.kind} on {again.version}, was {after[-1].version}")
        except Exception as exc:  # a harness failure is a failed point, with the reason
            res.problems.append(f"{type(exc).__name__}: {exc}")
        finally:
            res.ok = not res.problems
            if res.ok:
                shutil.rmtree(b.simdir, ignore_errors=True)
        return res

    def slot_writes(self, r: RunResult, ops: int | None = None) -> int:
        """Image blocks a boot wrote into the update slot (ota_1), in its first ``ops`` operations."""
        lo = self._ota1[0]
        return sum(1 for kind, addr, _ in r.log[:ops] if kind == "write" and lo <= addr < lo + self._ota1[1])

    @property
    def _ota1(self) -> tuple[int, int]:
        p = self.dry_board.partition("ota_1")
        return int(p.offset), int(p.size)

    # ------------------------------------------------------------------ the checks
    def check(self, b: SimBoard, device_id: str, point: CutPoint | None,
              res: PointResult | None = None) -> list[str]:
        problems: list[str] = []
        slot = b.next_boot_slot()
        if slot is None:
            return ["no bootable slot"]
        why = b.verify_slot(slot)
        if why is not None:
            problems.append(f"{slot} holds an image the bootloader refuses: {why}")
        fw = b.firmware(slot)
        version = fw.get("version")
        data = b.read_slot(slot, _image_len(b, slot))
        new = hashlib.sha256(data).digest() == hashlib.sha256(self.new_image).digest()
        old = self.old_image is not None and data == self.old_image
        if not (new or old):
            problems.append(f"{slot} ({version}) is neither signed image")
        outcome = "new" if new else "old"
        if res is not None:
            res.outcome = outcome
        if self.sc.expect_new and outcome == "old":
            # only a cut in the trial boot, before the image was marked valid, may end there
            if point is None or point.boot == 0:
                problems.append("ended on the old version although the cut was not in the trial boot")
        if not self.sc.expect_new and outcome == "new":
            problems.append("kept a firmware whose health check fails")
        ota = b.ota_state(slot)
        if ota not in ("VALID", None if slot == "ota_0" else "VALID"):
            problems.append(f"otadata state of {slot} is {ota}")
        st = _device_state(b)
        if st.get("pending"):
            problems.append(f"pending update left: {st['pending']}")
        if st.get("dl"):
            problems.append(f"download progress left: {st['dl']}")
        floor = st.get("floor", 0)
        if floor != (1 if outcome == "new" else 0):
            problems.append(f"security floor {floor} on the {outcome} image")
        failed = [list(x) for x in st.get("failed") or []]
        marked = [self.sc.version, self.rollout] in failed
        if marked != (outcome == "old"):
            problems.append(f"failed list {failed} on the {outcome} image")
        problems += self.check_reports(device_id, outcome)
        return problems

    def check_reports(self, device_id: str, outcome: str) -> list[str]:
        with self.server._lock:
            mine = [r for r in self.server.reports if r.get("device_id") == device_id]
        problems = []
        by_seq: dict[int, set[str]] = {}
        for r in mine:
            by_seq.setdefault(int(r.get("seq", -1)), set()).add(
                json.dumps({k: r.get(k) for k in ("event", "target", "rollout", "detail")}, sort_keys=True))
        reused = [s for s, v in by_seq.items() if len(v) > 1]
        if reused:
            problems.append(f"report seq reused for different reports: {reused[:5]}")
        decisions: Counter[tuple[str, int]] = Counter()
        for r in mine:
            if r.get("event") in ("confirmed", "rolled_back") and r.get("target") == self.sc.version:
                decisions[(r["event"], r["seq"])] += 1
        want = "confirmed" if outcome == "new" else "rolled_back"
        got = Counter(e for e, _ in decisions)
        if got != Counter({want: 1}):
            problems.append(f"decision reports {dict(got)}, expected one {want}")
        if self.sc.delta:  # a cut never makes the board give up on the patch for the full image
            how = {str((r.get("detail") or {}).get("delta")) for r in mine if r.get("event") == "installed"}
            if how - {"applied"}:
                problems.append(f"installed from {sorted(how)}, not only from the patch")
        return problems


def _tail(r: RunResult, n: int = 3) -> str:
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    return " | ".join(lines[-n:])


def _image_len(b: SimBoard, slot: str) -> int:
    # an app image's length: header + segments, padding, checksum, appended SHA-256
    head = b.read_slot(slot, 24)
    nseg = head[1]
    off = 24
    for _ in range(nseg):
        seg = b.read_slot(slot, 8, off)
        off += 8 + int.from_bytes(seg[4:8], "little")
    off += 15 - off % 16 + 1
    return off + (32 if head[23] == 1 else 0)


def _device_state(b: SimBoard) -> dict[str, Any]:
    blob = b.nvs().get("mpota", {}).get("state")
    if isinstance(blob, bytes):
        return dict(json.loads(blob.decode()))
    return {}


def run_points(t: Torture, points: Iterable[CutPoint], workers: int | None = None,
               progress: Callable[[PointResult], None] | None = None) -> list[PointResult]:
    todo = list(points)
    with ThreadPoolExecutor(workers or max(2, os.cpu_count() or 2)) as pool:
        out = []
        for r in pool.map(t.cut, todo):
            out.append(r)
            if progress is not None:
                progress(r)
    return out


def subset(points: list[CutPoint], stride: int = 16, tail: int = 6, later: str = "all") -> list[CutPoint]:
    """The fixed quick subset (make test): in the update boot, its last ``tail`` operations (the
    pending record, set_boot's otadata erase + write, the reset), every NVS commit (download
    progress, state) and every ``stride``-th other one, before and after; in the boots after it
    (trial, rollback), every operation, before and after (``later="all"``) or before only
    (``later="before"``)."""
    boot0 = sorted({p.op for p in points if p.boot == 0})
    commits = {p.op for p in points if p.boot == 0 and p.kind == "commit"}
    keep = set(boot0[-tail:]) | set(boot0[::stride]) | commits
    return [p for p in points
            if (p.boot == 0 and p.op in keep) or (p.boot > 0 and (later == "all" or p.when == later))]


def torture(scenario: str, interpreter: str, root: Path, sample: bool = False,
            workers: int | None = None, image_bytes: int = IMAGE_BYTES) -> dict[str, Any]:
    start = time.monotonic()
    with Torture(root / f"{scenario}-{interpreter}", SCENARIOS[scenario], interpreter, image_bytes) as t:
        points = t.dry_run()
        chosen = subset(points) if sample else points
        results = run_points(t, chosen, workers)
    failed = [r for r in results if not r.ok]
    return {
        "scenario": scenario, "interpreter": interpreter, "ops": sum(r.ops for r in t.dry),
        "points": len(points), "checked": len(results), "failed": len(failed),
        "failures": [f"{r.point.label()}: {'; '.join(r.problems)}" for r in failed[:20]],
        "outcomes": dict(Counter(r.outcome for r in results)),
        "resumed": sum(r.resumed for r in results), "restarted": sum(r.restarted for r in results),
        "retried": t.retried,
        "boots": sum(r.boots for r in results), "seconds": round(time.monotonic() - start, 1),
    }


def run() -> dict[str, Any]:
    out: dict[str, Any] = {"runs": []}
    with tempfile.TemporaryDirectory(prefix="mpota-torture-") as tmp:
        for interpreter in ("cpython", "micropython"):
            for scenario in SCENARIOS:
                r = torture(scenario, interpreter, Path(tmp))
                out["runs"].append(r)
                print(f"  {scenario:<12} {interpreter:<11} {r['checked']} cut points ({r['ops']} ops x "
                      f"before/after), {r['failed']} failed, outcomes {r['outcomes']}, "
                      f"resumed {r['resumed']}, restarted {r['restarted']}, retried {r['retried']}, "
                      f"{r['boots']} boots, {r['seconds']} s",
                      file=sys.stderr, flush=True)
                for f in r["failures"]:
                    print(f"    FAILED {f}", file=sys.stderr, flush=True)
    out["checked"] = sum(r["checked"] for r in out["runs"])
    out["failed"] = sum(r["failed"] for r in out["runs"])
    return out


def line(res: dict[str, Any]) -> str:
    parts = ", ".join(f"{r['scenario']}/{r['interpreter']} {r['checked']}" for r in res["runs"])
    secs = sum(r["seconds"] for r in res["runs"])
    return (f"torture: {res['checked']} power-cut points checked, no sampling ({parts}), "
            f"{res['failed']} failed, {secs:.0f} s")


if __name__ == "__main__":
    result = run()
    print(line(result))
    sys.exit(1 if result["failed"] else 0)
