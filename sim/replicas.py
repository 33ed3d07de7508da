"""`mpota serve` replicas as real processes (tests, benches): several on one database and one feed.

``ServeProcess(...)`` runs `python -m host_tools.cli serve ...` on a free loopback port and waits
for its "serving on URL" line; ``.kill()`` sends SIGKILL (a machine loss, as the database sees
it), ``.stop()`` a clean Ctrl-C. ``status()`` reads /v1/status with the operator token: it says
which replica runs the orchestrator (``["replica"]["leader"]``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


class ServeProcess:
    def __init__(self, feed: Path, db_url: str, secret_path: Path, operator_token: str,
                 key_path: Path | None = None, tick: float = 0.2, log_path: Path | None = None,
                 extra: tuple[str, ...] = ()) -> None:
        cmd = [sys.executable, "-m", "host_tools.cli", "serve", "--feed", str(feed), "--db", db_url,
               "--port", "0", "--fleet-secret", str(secret_path), "--tick", str(tick), *extra]
        if key_path is not None:
            cmd += ["--rollout-key", str(key_path), "--any-role"]
        self.log_path = log_path
        self._log = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, cwd=REPO, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("serving on "):
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"mpota serve did not start: {line!r} (log: {log_path})")
        self.url = line.split()[-1]
        self.token = operator_token
        self.pid = self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        req = urllib.request.Request(self.url + "/v1/status",
                                     headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data: dict[str, Any] = json.loads(resp.read())
        return data

    def is_leader(self) -> bool:
        try:
            return bool(self.status()["replica"]["leader"])
        except OSError:
            return False

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._close_log()

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_log()

    def _close_log(self) -> None:
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if hasattr(self._log, "close"):
            self._log.close()
