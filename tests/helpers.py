"""Small helpers several test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """`mpota ARGS...` as a process of its own (from the repository root unless ``cwd`` says where),
    output captured as text; ``kwargs`` go to subprocess.run."""
    kwargs.setdefault("cwd", REPO)
    return subprocess.run([sys.executable, "-m", "host_tools.cli", *args], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`mpota ARGV...` in this process (host_tools.cli.main; an argparse exit taken as the exit
    code): (exit code, stdout, stderr)."""
    from host_tools.cli import main

    try:
        code = main(list(argv))
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def fails(capsys: pytest.CaptureFixture[str], pattern: str, *argv: str) -> str:
    """`mpota ARGV...` must fail with one `mpota: error: ` line matching ``pattern``, no traceback;
    returns that line."""
    code, out, err = cli(capsys, *argv)
    assert code != 0, (argv, out)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpota: error: "), err
    assert "Traceback" not in err
    assert re.search(pattern, lines[0]), (pattern, lines[0])
    return lines[0]


def free_port() -> int:
    """A loopback TCP port nothing listens on now (bound by the OS, then released): to connect to
    and be refused, or to start a server on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
