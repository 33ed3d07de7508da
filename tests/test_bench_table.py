"""bench/__main__.py rewrites the BENCHMARKS.md table and keeps the hand-written notes after it."""

from __future__ import annotations

from pathlib import Path

from bench.__main__ import Outcome, notes, read_rows, render

MACHINE = {"machine": "x86_64", "os": "Linux", "cpu": "CPU", "cores": "2", "python": "3.11",
           "micropython": "1.29", "date": "2026-11-27"}


def test_table_is_rewritten_and_notes_are_kept(tmp_path: Path) -> None:
    md = tmp_path / "BENCHMARKS.md"
    first = render({"bench_a": Outcome("bench_a", True, "a | 1", 1.0, "2026-11-26")}, MACHINE,
                   "## Reading the figures\n\n- why a is slow")
    md.write_text(first)
    rows = read_rows(md)
    assert rows["bench_a"].line == "a | 1"
    rows["bench_b"] = Outcome("bench_b", False, "b", 2.0, "2026-11-27")
    md.write_text(render(rows, MACHINE, notes(md)))
    text = md.read_text()
    assert "| `bench_a` | ok | a \\| 1 |" in text and "| `bench_b` | FAILED | b |" in text
    assert text.rstrip().endswith("- why a is slow") and text.count("## Reading the figures") == 1
    assert notes(tmp_path / "missing.md") == ""
