"""kill -9 of a real `mpota serve` mid-ingest and mid-rollout, then a restart on the same database:
every report that got a 2xx is there, and the rollout and the published channel document agree."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from host_tools.channel import ChannelDoc
from host_tools.fleet import create_secret
from host_tools.keys import load_public_key
from host_tools.server.bucket import is_eligible
from sim.serverkit import ReportingDevice, operator_call, register, rollout_feed

BOARD = "esp32-generic-4mb"


class Served:
    def __init__(self, root: Path) -> None:
        self.root = root
        cmd = [sys.executable, "-m", "host_tools.cli", "serve", "--feed", str(root / "feed"), "--port", "0",
               "--db", f"sqlite:///{root / 'db.sqlite'}", "--fleet-secret", str(root / "fleet.secret"),
               "--rollout-key", str(root / "rollout.pem"), "--tick", "0.05"]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     cwd=Path(__file__).resolve().parent.parent)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("serving on "), (line, self.proc.stderr.read() if self.proc.stderr else "")
        self.url = line.split()[-1]

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()

    def op(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        secret = bytes.fromhex((self.root / "fleet.secret").read_text().strip())
        return operator_call(self.url, secret, method, path, body)


@pytest.fixture()
def root(tmp_path: Path) -> Path:
    rollout_feed(tmp_path, BOARD)
    create_secret(tmp_path / "fleet.secret")
    return tmp_path


def _channel(root: Path) -> ChannelDoc:
    data = (root / "feed" / "channels" / BOARD / "stable.json").read_bytes()
    return ChannelDoc.from_envelope_bytes(data, [load_public_key(str(root / "rollout.pem") + ".pub")])


def start_rollout(srv: Served, secret: bytes, groups: list[str]) -> None:
    """The operator registers the fleet (mpota deploy --server) and starts rollout r-crash of 1.1.0."""
    register(srv.url, secret, [(f"{g}-{i:02d}", g) for i, g in enumerate(groups)])
    plan = {"soak": 0, "stages": [{"name": "canary"}, {"name": "internal"}, {"name": "pilot"},
                                  {"name": "general", "batch_size_percentage": 20}]}
    code, st = srv.op("POST", "/v1/rollouts",
                      {"board": BOARD, "version": "1.1.0", "plan": plan, "id": "r-crash"})
    assert code == 201, st


def board_step(d: ReportingDevice, root: Path, group: str, acked: set[int]) -> dict[str, Any] | None:
    """What a board does next: take 1.1.0 when the published document lets it in (its four reports
    in one POST), else a heartbeat (returned). Sequence numbers the server acknowledged go in ``acked``."""
    if d.version != "1.1.0":
        doc = _channel(root).rollout.to_dict()
        if doc["id"] == "r-crash" and doc["state"] == "active" and is_eligible(doc, d.device_id, group):
            reports = [d.build(e, "r-crash", "1.1.0")
                       for e in ("downloading", "downloaded", "installed", "confirmed")]
            if d.post({"reports": reports})[0] == 200:
                acked.update(r["seq"] for r in reports)
                d.version = "1.1.0"
            return None
    r = d.build("heartbeat", health="OK")
    if d.post(r)[0] == 200:
        acked.add(r["seq"])
    return r


def test_kill_9_mid_ingest_and_mid_rollout(root: Path) -> None:
    secret = bytes.fromhex((root / "fleet.secret").read_text().strip())
    groups = ["canary"] * 2 + ["internal"] * 2 + ["pilot"] * 2 + ["general"] * 10
    acked: dict[str, set[int]] = {}
    seqs: dict[str, int] = {}
    for round_no, kill_after in enumerate((0.6, 0.3)):
        srv = Served(root)
        if round_no == 0:
            start_rollout(srv, secret, groups)
        stop = threading.Event()

        def device_loop(i: int, group: str, url: str = srv.url, stop: threading.Event = stop) -> None:
            d = ReportingDevice(url, secret, f"{group}-{i:02d}", group)
            d.seq = seqs.get(d.device_id, 0)
            mine = acked.setdefault(d.device_id, set())
            try:
                while not stop.is_set():
                    board_step(d, root, group, mine)
            except OSError:
                pass  # the server died under us: whatever was not acked may be lost
            finally:
                seqs[d.device_id] = d.seq
                d.close()

        threads = [threading.Thread(target=device_loop, args=(i, g)) for i, g in enumerate(groups)]
        for t in threads:
            t.start()
        time.sleep(kill_after)
        srv.kill()
        stop.set()
        for t in threads:
            t.join(10)
        # restart on the same database: every acked report is there
        srv = Served(root)
        try:
            total = 0
            for device_id, mine in acked.items():
                code, body = srv.op("GET", f"/v1/events?device={device_id}&limit=10000")
                stored = {e["seq"] for e in body["events"]}
                assert mine <= stored, (device_id, sorted(mine - stored)[:5])
                total += len(mine)
            assert total > 50 * (round_no + 1)
            # stored rollout state and the published channel document agree (after reconcile at start)
            code, st = srv.op("GET", "/v1/rollouts/r-crash")
            r = st["rollout"]
            doc = _channel(root)
            assert r["published_revision"] == r["revision"] and r["published_seq"] == doc.seq
            assert doc.rollout.to_dict() == st["channel_rollout"] and doc.release.version == "1.1.0"
        finally:
            srv.kill()
    # and it carries on from where it was: finish the rollout on a last server
    srv = Served(root)
    try:
        devices = [ReportingDevice(srv.url, secret, f"{g}-{i:02d}", g) for i, g in enumerate(groups)]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            doc = _channel(root).rollout.to_dict()
            code, st = srv.op("GET", "/v1/rollouts/r-crash")
            if st["rollout"]["state"] != "active":
                break
            for d in devices:
                if is_eligible(doc, d.device_id, d.group) and not getattr(d, "done", False):
                    d.seq = seqs.get(d.device_id, 0) + 1000
                    d.update("r-crash", "1.1.0")
                    d.done = True  # type: ignore[attr-defined]
            time.sleep(0.05)
        assert st["rollout"]["state"] == "completed", st["next"]
        kinds = [h["kind"] for h in st["history"]]
        assert kinds[0] == "start" and kinds[-1] == "complete" and kinds.count("start") == 1
        assert _channel(root).rollout.percentage == 100.0
        for d in devices:
            d.close()
    finally:
        srv.kill()
