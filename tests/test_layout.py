"""The repository's layout rules, checked over every file so that later changes are held to them.

- Nothing edits the interpreter's import path in code: a process gets its path from how it is
  started (`python -m` from the repository root, pytest's `pythonpath`, PYTHONPATH/MICROPYPATH
  for the processes tests start: sim/deviceproc.py). This covers code inside string templates
  too (scripts the tests write and run).
- The simulator and the benchmarks do not reach into tests/: what they share with the tests lives
  in the sim package.
"""

from __future__ import annotations

import ast
import json
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


# Modules of the host_tools package that the `mpota` command does not load, and why they ship.
LIBRARY_ONLY = {
    "host_tools.imagebuild": "genuine app images for testing a firmware pipeline "
                             "(examples/firmware_manifest_example.py)",
}


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                head = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(head + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if node.value.startswith("mpota."):
                out.add(node.value)  # lazy loads by name (mpota/__init__.py)
    return out


def _reachable(modules: dict[str, Path], start: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in seen or name not in modules:
            continue
        seen.add(name)
        todo.extend(_imports(modules[name], name))
    return seen


def test_every_host_tools_module_serves_the_mpota_command() -> None:
    # the command loads host_tools/commands/<group>.py by name (cli.py); the rest by import
    modules = {_module_name(p, REPO): p for p in (REPO / "host_tools").rglob("*.py")
               if "_data" not in p.parts}
    start = {m for m in modules if m.startswith("host_tools.commands")} | {"host_tools.cli", "host_tools"}
    unused = set(modules) - _reachable(modules, start)
    assert unused == set(LIBRARY_ONLY), (
        f"host_tools modules the mpota command never loads (test rig? move it to sim/): "
        f"{sorted(unused - set(LIBRARY_ONLY))}; no longer library-only: {sorted(set(LIBRARY_ONLY) - unused)}")


def test_device_package_is_what_a_board_runs() -> None:
    # device/package.json (what mip and `mpota deploy` install, the wheel's device copy) lists the
    # device modules, every one of them loaded on a board from the package or the boot/main templates
    device = REPO / "device"
    listed = {src for src, _ in json.loads((device / "package.json").read_text())["urls"]}
    on_disk = {str(p.relative_to(device)) for p in (device / "mpota").glob("*.py")}
    assert listed == on_disk
    modules = {_module_name(p, device): p for p in (device / "mpota").glob("*.py")}
    start = {"mpota"}
    for template in (device / "examples").glob("*.py"):
        start |= {m for m in _imports(template, "__main__") if m.startswith("mpota")}
    unused = set(modules) - _reachable(modules, start)
    assert unused == set(), f"device modules no board code loads: {sorted(unused)}"
