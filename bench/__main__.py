"""`make bench`: run every bench/bench_*.py, print one line each, record the figures in BENCHMARKS.md.

Each bench module exposes ``run() -> dict`` and, run as ``python -m bench.<name>``, prints one line
(its last line of output is the figure). Every module runs in its own process, one after another (so
one does not disturb another's timing, and a crash or a hang is contained): a module that fails or
times out is reported as a FAILED line and the exit code is non-zero.

    python -m bench                   # all of them; rewrites BENCHMARKS.md
    python -m bench wire p256         # a subset (bench_wire, bench_p256); their rows are replaced
    python -m bench --no-write        # print only
    python -m bench --list
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / "bench"
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
DEFAULT_TIMEOUT_S = 3600.0

_ROW = re.compile(r"^\| `(bench_[a-z0-9_]+)` \| (ok|FAILED) \| (.*) \| ([0-9.]+) \| ([0-9-]+) \|$")
_UPY_VERSION = (
    "import sys; v = sys.implementation.version; "
    "pre = '-' + v[3] if len(v) > 3 and v[3] else ''; "
    "build = sys.version.split(' ')[-3]; "
    "print('MicroPython %d.%d.%d%s (unix port, build %s)' % (v[0], v[1], v[2], pre, build))"
)
_BEGIN = "<!-- bench-table:begin -->"
_END = "<!-- bench-table:end -->"


@dataclass
class Outcome:
    name: str
    ok: bool
    line: str
    seconds: float
    date: str


def discover() -> list[str]:
    return sorted(p.stem for p in BENCH_DIR.glob("bench_*.py"))


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def run_one(name: str, timeout_s: float) -> Outcome:
    start = time.monotonic()
    today = _dt.date.today().isoformat()
    try:
        proc = subprocess.run(  # -m from the repository root: bench and sim import by name
            [sys.executable, "-m", f"bench.{name}"],
            cwd=REPO, capture_output=True, text=True, timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return Outcome(name, False, f"timed out after {timeout_s:.0f} s", time.monotonic() - start, today)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        why = _last_line(proc.stderr) or _last_line(proc.stdout) or "no output"
        return Outcome(name, False, f"exit {proc.returncode}: {why}", seconds, today)
    line = _last_line(proc.stdout)
    if not line:
        return Outcome(name, False, "printed nothing", seconds, today)
    return Outcome(name, True, line, seconds, today)


def _cmd_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    return _last_line(out.stdout) or _last_line(out.stderr) or "unknown"


def machine_description() -> dict[str, str]:
    cpu = "unknown"
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.lower().startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    upy = Path(sys.executable).with_name("micropython")
    return {
        "machine": platform.machine(),
        "cpu": cpu,
        "cores": str(os.cpu_count() or "?"),
        "python": platform.python_version(),
        "micropython": _cmd_version([str(upy), "-c", _UPY_VERSION]),
        "os": f"{platform.system()} {platform.release()}",
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def read_rows(path: Path = BENCHMARKS_MD) -> dict[str, Outcome]:
    rows: dict[str, Outcome] = {}
    try:
        text = path.read_text()
    except OSError:
        return rows
    for ln in text.splitlines():
        m = _ROW.match(ln.strip())
        if m:
            rows[m.group(1)] = Outcome(m.group(1), m.group(2) == "ok", m.group(3).replace("\\|", "|"),
                                       float(m.group(4)), m.group(5))
    return rows


def notes(path: Path = BENCHMARKS_MD) -> str:
    """The hand-written text after the table (kept when the table is rewritten)."""
    try:
        text = path.read_text()
    except OSError:
        return ""
    return text.split(_END, 1)[1].strip() if _END in text else ""


def render(rows: dict[str, Outcome], machine: dict[str, str], tail: str = "") -> str:
    out = [
        "# Benchmarks",
        "",
        "The latest figures from `make bench` (`python -m bench`): every `bench/bench_*.py` runs in its",
        "own process, one after another, and prints one line. Targets come from the issues; the line says",
        "what is measured against what. Rerun one with `python -m bench NAME` (its row is replaced).",
        "",
        "## Machine (last run)",
        "",
        f"- Architecture: {machine['machine']} ({machine['os']})",
        f"- CPU: {machine['cpu']}, {machine['cores']} cores",
        f"- Python: {machine['python']}",
        f"- MicroPython: {machine['micropython']}",
        f"- Date: {machine['date']}",
        "",
        "## Figures",
        "",
        _BEGIN,
        "| Bench | Status | Result | Seconds | Date |",
        "|---|---|---|---|---|",
    ]
    for name in sorted(rows):
        r = rows[name]
        status = "ok" if r.ok else "FAILED"
        out.append(f"| `{name}` | {status} | {_escape(r.line)} | {r.seconds:.1f} | {r.date} |")
    out += [_END, ""]
    if tail:
        out += [tail, ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="Run the benchmarks.")
    parser.add_argument("names", nargs="*", help="bench names (bench_wire or wire); default: all")
    parser.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    parser.add_argument("--list", action="store_true", help="list the bench modules and exit")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="per module, seconds")
    args = parser.parse_args(argv)

    known = discover()
    if args.list:
        print("\n".join(known))
        return 0
    names = known
    if args.names:
        names = []
        for n in args.names:
            full = n if n.startswith("bench_") else f"bench_{n}"
            if full not in known:
                print(f"bench: unknown bench {n!r} (known: {', '.join(known)})", file=sys.stderr)
                return 2
            names.append(full)

    machine = machine_description()
    print(f"bench: {machine['machine']}, {machine['cpu']}, {machine['cores']} cores, "
          f"Python {machine['python']}, {machine['micropython']}", flush=True)
    results: list[Outcome] = []
    for name in names:
        print(f"{name:<16} ... ", end="", flush=True)
        r = run_one(name, args.timeout)
        results.append(r)
        print(f"{'' if r.ok else 'FAILED: '}{r.line}  ({r.seconds:.1f} s)", flush=True)

    if not args.no_write:
        rows = read_rows() if args.names else {}
        rows = {k: v for k, v in rows.items() if k in known}
        for r in results:
            rows[r.name] = r
        from host_tools.fsutil import atomic_write_text

        atomic_write_text(BENCHMARKS_MD, render(rows, machine, notes()))
        print(f"bench: wrote {BENCHMARKS_MD.name}")
    failed = [r.name for r in results if not r.ok]
    if failed:
        print(f"bench: FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
