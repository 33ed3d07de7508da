"""Three `mpota serve` processes on one PostgreSQL and one feed folder, the way an operator runs
them behind a load balancer: devices spread over them, a rollout through every stage, the replica
running the orchestrator killed with SIGKILL mid-rollout. Another must take over within seconds,
the rollout must finish with every decision made once, no acknowledged report may be lost, the
channel seq must only grow and every replica must serve the same channel bytes."""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from host_tools.channel import ChannelDoc
from host_tools.fleet import create_secret, device_token, load_secret
from host_tools.keys import generate_key, load_public_key
from host_tools.server.auth import operator_token
from host_tools.server.bucket import is_eligible
from host_tools.server.store import open_store
from sim.replicas import ServeProcess
from sim.serverkit import publish_test_release, rollout_feed

pytestmark = pytest.mark.postgres

BOARD = "esp32-generic-4mb"
FLEET = [("canary", 2), ("internal", 3), ("pilot", 6), ("general", 18)]
PLAN = {"soak": 0, "min_finished": 1, "in_progress_timeout": "30m",
        "stages": [{"name": "canary"}, {"name": "internal"}, {"name": "pilot", "min_finished": 2},
                   {"name": "general", "batch_size_percentage": 50}]}


def _post(url: str, path: str, body: Any, token: str, device: str | None = None) -> tuple[int, Any]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=10)
    try:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        if device:
            headers["X-Mpota-Device"] = device
        conn.request("POST" if body is not None else "GET", path,
                     None if body is None else json.dumps(body).encode(), headers)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, (json.loads(data) if data[:1] in (b"{", b"[") else data)
    finally:
        conn.close()


class Device:
    """Talks to one replica; when it is gone, the load balancer sends it to another (same report)."""

    def __init__(self, device_id: str, group: str, secret: bytes, replicas: list[ServeProcess], home: int):
        self.device_id, self.group = device_id, group
        self.token = device_token(secret, device_id)
        self.replicas, self.home = replicas, home
        self.seq, self.version, self.tried = 0, "1.0.0", False
        self.acked: list[int] = []

    def _send(self, path: str, body: Any, token: str) -> tuple[int, Any]:
        for _ in range(len(self.replicas) * 2):
            r = self.replicas[self.home]
            try:
                return _post(r.url, path, body, token, self.device_id if path == "/v1/reports" else None)
            except OSError:
                self.home = (self.home + 1) % len(self.replicas)
        raise AssertionError("no replica answers")

    def report(self, event: str, rollout: str | None = None, target: str | None = None) -> None:
        self.seq += 1
        body = {"device_id": self.device_id, "seq": self.seq, "event": event, "board": BOARD,
                "version": self.version, "rollout": rollout, "target": target}
        status, answer = self._send("/v1/reports", body, self.token)
        # 409: the replica that died had committed it before answering (resent after the kill)
        assert status in (200, 409), (status, answer)
        self.acked.append(self.seq)

    def register(self, op_token: str) -> None:
        status, answer = self._send("/v1/devices", {"device_id": self.device_id, "board": BOARD,
                                                    "group": self.group}, op_token)
        assert status == 200, answer


def test_replicas_survive_the_leader_being_killed(tmp_path: Path, pg_url: str) -> None:
    feed, key = rollout_feed(tmp_path, BOARD)
    pub = load_public_key(str(key) + ".pub")
    secret_path = tmp_path / "fleet.secret"
    create_secret(secret_path)
    secret = load_secret(secret_path)
    op = operator_token(secret)
    replicas = [ServeProcess(feed, pg_url, secret_path, op, key, tick=0.2, log_path=tmp_path / f"r{i}.log")
                for i in range(3)]
    try:
        deadline = time.monotonic() + 15
        while sum(r.is_leader() for r in replicas) != 1:
            assert time.monotonic() < deadline, "no replica took the lead"
            time.sleep(0.1)
        devices = [Device(f"{g}-{i:02d}", g, secret, replicas, k % 3)
                   for k, (g, i) in enumerate((g, i) for g, n in FLEET for i in range(n))]
        for d in devices:
            d.register(op)
            d.report("heartbeat")
        status, st = _post(replicas[1].url, "/v1/rollouts", {"board": BOARD, "channel": "stable",
                                                            "version": "1.1.0", "plan": PLAN, "id": "r1"}, op)
        assert status == 201, st

        seen: list[ChannelDoc] = []
        killed_at: float | None = None
        failover = 0.0
        turn = 0
        deadline = time.monotonic() + 60
        while True:
            assert time.monotonic() < deadline, "rollout did not finish"
            live = [r for r in replicas if r.alive()]
            r = live[turn % len(live)]
            turn += 1
            parts = urlsplit(r.url)
            conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
            conn.request("GET", f"/channels/{BOARD}/stable.json")
            doc = ChannelDoc.from_envelope_bytes(conn.getresponse().read(), [pub])
            conn.close()
            if seen and doc.seq < seen[-1].seq:
                raise AssertionError(f"channel seq went back: {doc.seq} after {seen[-1].seq}")
            if not seen or doc.seq > seen[-1].seq:
                seen.append(doc)
            elif doc.to_dict() != seen[-1].to_dict():
                raise AssertionError(f"two different documents with seq {doc.seq}")
            ro = doc.rollout.to_dict()
            if killed_at is None and "pilot" in ro["groups"]:
                leader = next(x for x in replicas if x.is_leader())
                leader.kill()  # mid-rollout, before the pilot devices act
                killed_at = time.monotonic()
                others = [x for x in replicas if x.alive()]
                while not any(x.is_leader() for x in others):
                    assert time.monotonic() - killed_at < 10, "no replica took over within 10 s"
                    time.sleep(0.05)
                failover = time.monotonic() - killed_at
                continue
            if ro["state"] == "active" and doc.release.version == "1.1.0":
                for d in devices:
                    if not d.tried and is_eligible(ro, d.device_id, d.group):
                        d.tried = True
                        for event in ("downloading", "downloaded", "installed"):
                            d.report(event, "r1", "1.1.0")
                        d.version = "1.1.0"
                        d.report("confirmed", "r1", "1.1.0")
            status, st = _post(r.url, "/v1/rollouts/r1", None, op)
            assert status == 200, st
            if st["rollout"]["state"] in ("completed", "paused", "aborted"):
                break
            time.sleep(0.05)

        assert killed_at is not None and failover < 5.0, failover
        print(f"failover {failover:.2f} s")
        assert st["rollout"]["state"] == "completed", st["rollout"]
        # every decision made once, across the failover
        kinds = [h["kind"] for h in st["history"]]
        assert kinds == ["start"] + ["ready", "advance"] * 4 + ["ready", "complete"]
        assert all(d.version == "1.1.0" for d in devices)
        # the live replicas serve the same bytes, the database's
        bodies = set()
        for r in replicas:
            if r.alive():
                parts = urlsplit(r.url)
                conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
                conn.request("GET", f"/channels/{BOARD}/stable.json")
                bodies.add(conn.getresponse().read())
                conn.close()
        store = open_store(pg_url)
        try:
            [(_, _, seq, body)] = store.channel_docs()
            assert bodies == {body} and seq == seen[-1].seq
            # no acknowledged report lost
            for d in devices:
                stored = [e["seq"] for e in store.device_events(d.device_id, 100)]
                assert stored == d.acked, d.device_id
            assert sum(r.is_leader() for r in replicas if r.alive()) == 1
        finally:
            store.close()
        seqs = [d.seq for d in seen]
        assert seqs == sorted(set(seqs))
    finally:
        for r in replicas:
            r.stop()


def test_replica_with_its_own_feed_copy_serves_the_same_channel_bytes(tmp_path: Path, pg_url: str) -> None:
    """Replicas that do not share the feed folder (each its own copy of the releases) still serve
    the channel documents the database recorded, byte for byte, after a tick."""
    import shutil

    from host_tools.server.app import ServerConfig, make_publisher
    from sim.serverkit import ServerThread

    key = tmp_path / "rollout.pem"
    generate_key(key, "both")
    feeds = [tmp_path / "feed-a", tmp_path / "feed-b"]
    publish_test_release(feeds[0], tmp_path / "work", key, "1.0.0", BOARD, channel="stable")
    publish_test_release(feeds[0], tmp_path / "work", key, "1.1.0", BOARD)
    shutil.copytree(feeds[0], feeds[1])
    secret = b"\x07" * 32
    op = operator_token(secret)
    servers = [ServerThread(ServerConfig(feed_dir=f, db_url=pg_url, fleet_secret=secret, tick_s=0.05),
                            make_publisher(f, str(key), any_role=True)) for f in feeds]
    try:
        status, answer = _post(servers[0].url, "/v1/devices", {"device_id": "canary-1", "board": BOARD,
                                                               "group": "canary"}, op)
        assert status == 200, answer
        status, st = _post(servers[1].url, "/v1/rollouts", {"board": BOARD, "channel": "stable",
                                                            "version": "1.1.0", "plan": PLAN, "id": "r1"}, op)
        assert status == 201, st
        path = Path("channels") / BOARD / "stable.json"
        deadline = time.monotonic() + 10
        while (feeds[0] / path).read_bytes() != (feeds[1] / path).read_bytes():
            assert time.monotonic() < deadline, "the other replica's feed never caught up"
            time.sleep(0.05)
        pub = load_public_key(str(key) + ".pub")
        doc = ChannelDoc.from_envelope_bytes((feeds[0] / path).read_bytes(), [pub])
        assert doc.seq == 2 and doc.rollout.id == "r1"
    finally:
        for s in servers:
            s.stop()
