"""Small helpers several test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def run_cli(*args: str, timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """`mpota ARGS...` as a process of its own (from the repository root unless ``cwd`` says where),
    output captured as text; ``kwargs`` go to subprocess.run."""
    kwargs.setdefault("cwd", REPO)
    return subprocess.run([sys.executable, "-m", "host_tools.cli", *args], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


def free_port() -> int:
    """A loopback TCP port nothing listens on now (bound by the OS, then released): to connect to
    and be refused, or to start a server on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
