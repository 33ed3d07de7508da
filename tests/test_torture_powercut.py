"""Power-cut torture, quick subset (the full run, every cut point, is bench/bench_torture.py and the
slow test below). See bench/bench_torture.py for what each cut point asserts.

Scenarios: ``confirm`` (plain image: a cut download resumes with Range), ``confirm-zlib``
(compressed: restarts), ``confirm-delta`` (a patch from the running image: restarts from byte 0)
and ``rollback`` (compressed, failing health check). The quick subset is
fixed, not random (``bench_torture.subset``): in the update boot, its last 6 operations (the
pending record, set_boot's otadata erase + write, the reset), every NVS commit (download
progress) and every 16th (CPython) or 32nd (MicroPython) other one, before and after; in the
boots after it (the trial boot, the rollback and the boot after it) every operation, before and
after (CPython) or before (MicroPython). MicroPython runs ``confirm`` and ``rollback``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bench_torture import SCENARIOS, Torture, run_points, subset, torture

SUBSET: dict[str, tuple[int, str]] = {"cpython": (16, "all"), "micropython": (32, "before")}


def _explain(results: list) -> str:  # type: ignore[type-arg]
    bad = [r for r in results if not r.ok]
    return f"{len(bad)} of {len(results)} cut points failed:\n" + "\n".join(
        f"  {r.point.label()}: {'; '.join(r.problems)}" for r in bad[:15])


QUICK = [("confirm", "cpython"), ("confirm-zlib", "cpython"), ("rollback", "cpython"),
         ("confirm-delta", "cpython"),
         pytest.param("confirm", "micropython", marks=pytest.mark.mpy),
         pytest.param("confirm-delta", "micropython", marks=pytest.mark.mpy),
         pytest.param("rollback", "micropython", marks=pytest.mark.mpy)]


@pytest.mark.parametrize("scenario,interp", QUICK)
def test_power_cut_subset(scenario: str, interp: str, tmp_path: Path) -> None:
    with Torture(tmp_path, SCENARIOS[scenario], interp) as t:
        points = t.dry_run()
        if scenario == "confirm-delta":  # the story applies the patch (no fallback to the image)
            paths = [r.path for r in t.server.requests]
            assert any("delta-from-1.0.0" in p for p in paths) and not any("firmware.bin" in p for p in paths)
        # the dry run saw every kind of operation the update makes: these are the cut points
        kinds = {p.kind for p in points}
        assert kinds == {"write", "erase", "commit"}, kinds
        assert len(points) == 2 * sum(r.ops for r in t.dry) > 100
        boots_after = {p.boot for p in points} - {0}
        assert boots_after == ({1, 2} if scenario == "rollback" else {1})
        stride, later = SUBSET[interp]
        chosen = subset(points, stride=stride, later=later)
        assert len(chosen) < len(points)
        results = run_points(t, chosen, workers=2)
        whole = t.slot_writes(t.dry[0])
    print(f"{scenario}/{interp}: {len(results)} of {len(points)} cut points checked")
    assert all(r.ok for r in results), _explain(results)
    outcomes = {r.outcome for r in results}
    if scenario == "rollback":
        assert outcomes == {"old"}
    else:
        assert "new" in outcomes
    if scenario == "confirm":  # a cut after a download-progress save resumes from there
        assert sum(r.resumed for r in results) >= 2
    if scenario == "confirm-delta":  # a cut in the middle of the patch: it is applied again from byte 0
        mid = [r for r in results if r.point.boot == 0 and 0 < t.slot_writes(t.dry[0], r.point.op) < whole]
        assert mid and all(r.restarted for r in mid) and not any(r.resumed for r in results)


def test_a_cut_point_is_the_operation_the_dry_run_saw(tmp_path: Path) -> None:
    # The engine itself: the op at the cut must be the dry run's op, so a count that drifts
    # between runs (nondeterminism) is caught instead of silently testing another point.
    with Torture(tmp_path, SCENARIOS["confirm"], "cpython") as t:
        points = t.dry_run()
        p = next(p for p in points if p.boot == 0 and p.kind == "write" and p.when == "after")
        r = t.cut(p)
        assert r.ok, r.problems
        assert r.outcome == "new" and r.boots >= 3
        forged = type(p)(p.boot, p.op, p.when, "erase", p.addr + 1, p.length)
        r2 = t.cut(forged)
        assert not r2.ok and "dry run" in r2.problems[0]


@pytest.mark.slow
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_power_cut_every_point(scenario: str, interp: str, tmp_path: Path) -> None:
    r = torture(scenario, interp, tmp_path)
    print(f"{scenario}/{interp}: {r['checked']} cut points checked, {r['failed']} failed")
    assert r["checked"] == r["points"] > 100
    assert r["failed"] == 0, "\n".join(r["failures"])
