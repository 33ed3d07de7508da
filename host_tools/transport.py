"""How host tools reach the board: every esptool / mpremote / mpy-cross run goes through a Transport.

``ProcessTransport`` runs real programs (stdout inherited, so esptool's progress shows) and checks
serial ports; tests hand in a recording fake with the same two methods.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from host_tools.errors import MpotaError


class ToolError(MpotaError):
    """A program we run is missing or failed."""


class PortError(MpotaError):
    """The serial port does not exist, is not a serial device, or is in use."""


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str = ""
    stderr: str = ""


class Transport(Protocol):
    def run(self, argv: Sequence[str], *, capture: bool = False,
            timeout: float | None = None) -> CommandResult:
        """Run argv; with capture, collect stdout/stderr as text, else let them through to the user."""
        ...

    def check_port(self, port: str) -> None:
        """Raise PortError when the port is missing or busy."""
        ...


# mpremote's shortcuts: a0 = /dev/ttyACM0, u0 = /dev/ttyUSB0, c0 = COM0 (as `mpremote a0`).
def expand_port(port: str) -> str:
    if len(port) >= 2 and port[0] in "auc" and port[1:].isdigit():
        return {"a": "/dev/ttyACM", "u": "/dev/ttyUSB", "c": "COM"}[port[0]] + port[1:]
    return port


def find_tool(name: str) -> str:
    """The program `name` installed next to this Python (the venv), else on PATH."""
    here = Path(sys.executable).parent / name
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which(name)
    if found:
        return found
    raise ToolError(f"{name} not found next to {sys.executable} or on PATH (pip install {name})")


def check_serial_port(port: str) -> None:
    """A local serial device must exist, be a character device, open, and not be locked by another tool.

    URLs (rfc2217://, socket://) and Windows COM ports are left to the tool that opens them.
    """
    if "://" in port or sys.platform == "win32":
        return
    import fcntl  # POSIX only
    path = Path(port)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise PortError(f"serial port {port} does not exist (is the board plugged in? "
                        f"try: ls /dev/ttyUSB* /dev/ttyACM*)") from None
    except OSError as exc:
        raise PortError(f"cannot access serial port {port}: {exc.strerror}") from None
    if not stat.S_ISCHR(st.st_mode):
        raise PortError(f"{port} is not a serial port (not a character device)")
    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise PortError(f"serial port {port} is busy (another program has it open exclusively: "
                            f"close the serial monitor or other tool)") from None
        if exc.errno == errno.EACCES:
            raise PortError(f"no permission to open {port} (add your user to the dialout or uucp "
                            f"group, then log in again)") from None
        raise PortError(f"cannot open serial port {port}: {exc.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise PortError(f"serial port {port} is busy (locked by another program: close the serial "
                            f"monitor, mpremote or esptool using it)") from None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class ProcessTransport:
    """Runs real programs; output goes straight to the terminal unless captured."""

    def run(self, argv: Sequence[str], *, capture: bool = False,
            timeout: float | None = None) -> CommandResult:
        args = list(argv)
        try:
            proc = subprocess.run(args, capture_output=capture, text=True, timeout=timeout, check=False)
        except FileNotFoundError:
            raise ToolError(f"cannot run {args[0]}: not found") from None
        except subprocess.TimeoutExpired:
            raise ToolError(f"{Path(args[0]).name} did not finish within {timeout:g} s") from None
        return CommandResult(tuple(args), proc.returncode, proc.stdout or "", proc.stderr or "")

    def check_port(self, port: str) -> None:
        check_serial_port(port)


Responder = Callable[[list[str]], "CommandResult | None"]


class RecordingTransport:
    """A Transport for tests and previews: records every argv and the bytes of every local file it names.

    ``responder(argv)`` may return a CommandResult (e.g. mpremote's output for a probe); None means
    success with no output. ``port_check`` defaults to the real check (tests use a pty as the port).
    """

    def __init__(self, responder: Responder | None = None,
                 port_check: Callable[[str], None] | None = check_serial_port) -> None:
        self.responder = responder
        self.port_check = port_check
        self.calls: list[list[str]] = []
        self.files: dict[str, bytes] = {}  # local path -> content at the time it was passed to a command
        self.ports: list[str] = []

    def run(self, argv: Sequence[str], *, capture: bool = False,
            timeout: float | None = None) -> CommandResult:
        args = list(argv)
        self.calls.append(args)
        for arg in args[1:]:
            if arg.startswith(":") or "/" not in arg or "\n" in arg:
                continue  # a board path, an option or a script
            try:
                if Path(arg).is_file():
                    self.files[arg] = Path(arg).read_bytes()
            except OSError:
                continue
        result = self.responder(args) if self.responder else None
        return result if result is not None else CommandResult(tuple(args), 0)

    def check_port(self, port: str) -> None:
        self.ports.append(port)
        if self.port_check is not None:
            self.port_check(port)
