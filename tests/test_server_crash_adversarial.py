"""kill -9 of a real `mpota serve` in the middle of a burst of hostile and good reports, then a
restart on the same database: every report that got a 200 is there, nothing a 4xx refused is, and
the rollout state equals the published channel document."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

from test_server_crash import BOARD, Served, _channel, board_step, root, start_rollout  # noqa: F401

from host_tools.fleet import device_token
from sim.serverkit import HttpClient, ReportingDevice


def _hostile_bodies(secret: bytes, device_id: str, seq: int) -> list[tuple[bytes, dict[str, str]]]:
    good = {"Authorization": f"Bearer {device_token(secret, device_id)}", "X-Mpota-Device": device_id}
    base = f'{{"device_id": "{device_id}", "seq": {seq}, "event": "confirmed", "rollout": "r-crash"'
    return [
        (base.encode() + b"}", {"Authorization": "Bearer " + "0" * 64, "X-Mpota-Device": device_id}),
        (base.encode() + b', "detail": {"x": NaN}}', good),
        (base.encode() + b', "version": "\\ud800"}', good),
        (base.encode() + b', "detail": {"free": 99999999999999999999}}', good),
        (b"[" * 5000, good),
        (base.encode() + b', "event": ["confirmed"]}', good),
        (b'{"reports": [' + b",".join([base.encode() + b"}"] * 51) + b"]}", good),
        (b"x" * (70 * 1024), good),
    ]


def test_kill_9_mid_burst_of_hostile_and_good_reports(root: Path) -> None:  # noqa: F811
    secret = bytes.fromhex((root / "fleet.secret").read_text().strip())
    groups = ["canary"] * 2 + ["internal"] * 2 + ["pilot"] * 2 + ["general"] * 6
    acked: dict[str, set[int]] = {}
    refused: list[tuple[str, int]] = []
    wrong: list[tuple[str, int]] = []  # hostile requests answered other than 4xx
    srv = Served(root)
    start_rollout(srv, secret, groups)
    stop = threading.Event()
    lock = threading.Lock()

    def good(i: int, group: str) -> None:
        d = ReportingDevice(srv.url, secret, f"{group}-{i:02d}", group)
        mine = acked.setdefault(d.device_id, set())
        try:
            while not stop.is_set():
                r = board_step(d, root, group, mine)
                if r is not None:
                    d.post(r)  # and its own replay: 409, nothing stored twice
        except OSError:
            pass
        finally:
            d.close()

    def hostile(n: int) -> None:
        c = HttpClient(srv.url, timeout=5)
        seq = 1
        try:
            while not stop.is_set():
                device_id = f"evil-{n}"
                for body, headers in _hostile_bodies(secret, device_id, seq):
                    status = c.request("POST", "/v1/reports", body, headers)[0]
                    with lock:
                        (refused if 400 <= status < 500 else wrong).append((device_id, status))
                # a client that hangs up mid-body, and one that sends half its headers
                token = device_token(secret, device_id).encode()
                with socket.create_connection((c.host, c.port)) as s:
                    s.sendall(b"POST /v1/reports HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n"
                              b"Authorization: Bearer " + token + b"\r\nX-Mpota-Device: " + device_id.encode()
                              + b"\r\n\r\n{")
                with socket.create_connection((c.host, c.port)) as s:
                    s.sendall(b"POST /v1/rep")
                seq += 1
        except OSError:
            pass
        finally:
            c.close()

    threads = [threading.Thread(target=good, args=(i, g)) for i, g in enumerate(groups)]
    threads += [threading.Thread(target=hostile, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    srv.kill()
    stop.set()
    for t in threads:
        t.join(15)
    assert refused and not wrong, wrong[:5]
    srv = Served(root)
    try:
        total = 0
        for device_id, mine in acked.items():
            code, body = srv.op("GET", f"/v1/events?device={device_id}&limit=10000")
            seqs = [e["seq"] for e in body["events"]]
            assert mine <= set(seqs), (device_id, sorted(mine - set(seqs))[:5])
            assert len(seqs) == len(set(seqs))  # replays stored nothing
            total += len(mine)
        assert total > 30
        for n in range(3):
            code, body = srv.op("GET", f"/v1/events?device=evil-{n}&limit=10000")
            assert body["events"] == []  # nothing a 4xx refused was stored
        code, st = srv.op("GET", "/v1/rollouts/r-crash")
        r = st["rollout"]
        doc = _channel(root)
        assert r["published_revision"] == r["revision"] and r["published_seq"] == doc.seq
        assert doc.rollout.to_dict() == st["channel_rollout"] and doc.release.version == "1.1.0"
        _ = json.dumps(st)  # standard JSON throughout (no NaN reached the store)
    finally:
        srv.kill()
