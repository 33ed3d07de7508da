"""The repository's layout rules, checked over every file so that later changes are held to them.

- Nothing edits the interpreter's import path in code: a process gets its path from how it is
  started (`python -m` from the repository root, pytest's `pythonpath`, PYTHONPATH/MICROPYPATH
  for the processes tests start: sim/deviceproc.py). This covers code inside string templates
  too (scripts the tests write and run).
- The simulator and the benchmarks do not reach into tests/: what they share with the tests lives
  in the sim package.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".git", ".venv", "build", "demo-work", "__pycache__", ".mypy_cache", ".ruff_cache",
             ".pytest_cache", ".hypothesis", "node_modules"}
TEXT_SUFFIXES = {".py", ".md", ".toml", ".cfg", ".ini", ".txt", ".json", ".sh", ".pth", ""}

# sys.path (or its items) assigned, deleted or changed by a method; site.addsitedir; a .pth file
PATH_EDIT = re.compile(
    r"\bsys\s*\.\s*path\s*(?:\.\s*(?:insert|append|extend|remove|pop|clear|__setitem__)\s*\("
    r"|\[[^\]\n]*\]\s*(?:=(?!=)|\+=)|(?:=(?!=)|\+=))"
    r"|\bdel\s+sys\s*\.\s*path\b"
    r"|\bsite\s*\.\s*addsitedir\s*\("
)
TESTS_IMPORT = re.compile(r"^\s*(?:from|import)\s+(?:tests|conftest|collector|feedkit)\b"
                          r"|/\s*[\"']tests[\"']", re.M)


def repo_files(suffixes: set[str] = TEXT_SUFFIXES) -> list[Path]:
    out = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in files:
            p = Path(root) / name
            if p.suffix in suffixes:
                out.append(p)
    return out


def test_path_edit_pattern_catches_the_usual_forms() -> None:
    target = "sys" + ".path"  # spelled apart so this file holds no edit itself
    for edit in (f"{target}.insert(0, d)", f"{target}.append('/lib')", f"{target}[:0] = [a, b]",
                 f"{target}[:] = ['', '/lib']", f"del {target}[:2]", f"{target} = ['x']",
                 f"{target}.remove(d)", f"{target} += [d]", "site" + ".addsitedir(d)"):
        assert PATH_EDIT.search(edit), edit
    for read in (f"for entry in {target}:", f"if d in {target}:", f"print({target}[0])",
                 f"{target} == []"):
        assert not PATH_EDIT.search(read), read


def test_no_file_edits_the_import_path() -> None:
    offenders = []
    for p in repo_files():
        if p.suffix == ".pth":
            offenders.append(f"{p.relative_to(REPO)}: a .pth file")
            continue
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for m in PATH_EDIT.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            offenders.append(f"{p.relative_to(REPO)}:{line}: {m.group(0)}")
    assert offenders == [], "import path edited in code:\n" + "\n".join(offenders)


def test_product_simulator_and_benchmarks_do_not_import_tests() -> None:
    offenders = []
    for top in ("host_tools", "device", "sim", "bench", "examples"):
        for p in (REPO / top).rglob("*.py"):
            for m in TESTS_IMPORT.finditer(p.read_text(encoding="utf-8")):
                offenders.append(f"{p.relative_to(REPO)}: {m.group(0).strip()}")
    assert offenders == [], "\n".join(offenders)


def test_sim_and_bench_import_by_name_from_the_repository_root() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MICROPYPATH")}
    code = "import sim.board, sim.fleet, sim.feedkit, sim.deviceproc, bench.bareloop; print('ok')"
    p = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr
