"""A throwaway PostgreSQL server for tests and benches: initdb + pg_ctl in a temporary folder.

PostgreSQL refuses to run as root, so when we are root the cluster is created and run as the
`postgres` user (Debian's package creates it) in a folder that user owns. It listens on a free
loopback port only, trusts local connections, and is stopped and deleted by ``stop()``.

``find_bindir()`` looks where Debian puts the binaries: ``pg_config --bindir``, then
/usr/lib/postgresql/<newest>/bin, then PATH.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Any


def find_bindir() -> Path | None:
    candidates: list[Path] = []
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.strip():
            candidates.append(Path(out.stdout.strip()))
    except (OSError, subprocess.SubprocessError):
        pass
    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        versions = sorted((p for p in root.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        candidates += [p / "bin" for p in reversed(versions)]
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).resolve().parent)
    for c in candidates:
        if (c / "initdb").is_file() and (c / "pg_ctl").is_file() and (c / "postgres").is_file():
            return c
    return None


def why_unavailable() -> str | None:
    """None when a cluster can be started here, else the reason (for a clear skip)."""
    if find_bindir() is None:
        return "no PostgreSQL binaries (initdb, pg_ctl) found via pg_config, /usr/lib/postgresql or PATH"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run PostgreSQL as"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'mpota[postgres]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgCluster:
    def __init__(self, fsync: bool = False) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL binaries found")
        self.bindir = bindir
        self.fsync = fsync
        self.root = Path(tempfile.mkdtemp(prefix="mpota-pg-"))
        self.data = self.root / "data"
        self.port = 0
        self._run_as: dict[str, Any] = {}
        if os.geteuid() == 0:
            import pwd

            pw = pwd.getpwnam("postgres")
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._run_as = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": [],
                            "env": {"PATH": os.environ.get("PATH", ""), "HOME": str(self.root),
                                    "LC_ALL": "C.UTF-8"}}
        self._stopped = False
        atexit.register(self.stop)
        self._pg("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8",
                 "--locale=C.UTF-8", "--no-instructions")
        self._start()

    def _pg(self, tool: str, *args: str) -> None:
        proc = subprocess.run([str(self.bindir / tool), *args], capture_output=True, text=True,
                              timeout=120, cwd=self.root, **self._run_as)
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} failed: {(proc.stderr or proc.stdout).strip()[-800:]}")

    def _start(self) -> None:
        opts = (f"-c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
                f"-c max_connections=200 -c fsync={'on' if self.fsync else 'off'} "
                f"-c full_page_writes={'on' if self.fsync else 'off'}")
        last = ""
        for _ in range(5):  # the free port may be taken between finding and binding it
            self.port = _free_port()
            try:
                self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", "-t", "60",
                         "-o", f"{opts} -p {self.port}", "start")
                return
            except RuntimeError as exc:
                last = str(exc)
        raise RuntimeError(f"PostgreSQL did not start: {last}")

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"'.encode())
        return self.url(name)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        try:
            if self.data.exists():
                self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except (RuntimeError, OSError, subprocess.SubprocessError):
            pass
        shutil.rmtree(self.root, ignore_errors=True)
