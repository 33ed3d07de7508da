"""examples/rollout_example.py runs as documented and tells the story it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_rollout_example_runs() -> None:
    proc = subprocess.run([sys.executable, "-m", "examples.rollout_example"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "rollout r-1.1.0: 1.1.0 on esp32-generic-4mb/stable: COMPLETED" in out
    assert "rollout r-1.2.0: 1.2.0 on esp32-generic-4mb/stable: PAUSED" in out
    assert "reason: pilot: failure rate 100.0% > 20%" in out
    assert "rollout r-1.2.1: 1.2.1 on esp32-generic-4mb/stable: COMPLETED" in out
    assert out.rstrip().endswith("fleet now runs: 1.2.1")
