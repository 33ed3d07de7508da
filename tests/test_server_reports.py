"""POST /v1/reports and /v1/devices over real HTTP: good reports land, bad ones change nothing."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from host_tools.fleet import device_token
from host_tools.server.app import ServerConfig
from sim.serverkit import HttpClient, ReportingDevice, ServerThread, operator_call

SECRET = bytes(range(32))


@pytest.fixture()
def srv(tmp_path: Path) -> Iterator[ServerThread]:
    (tmp_path / "feed").mkdir()
    config = ServerConfig(feed_dir=tmp_path / "feed", db_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
                          fleet_secret=SECRET)
    with ServerThread(config) as s:
        yield s


def _op(srv: ServerThread, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    return operator_call(srv.url, SECRET, method, path, body)


def _events(srv: ServerThread) -> list[dict[str, Any]]:
    status, body = _op(srv, "GET", "/v1/events?limit=10000")
    assert status == 200
    return list(body["events"])


def test_single_and_batch_reports_update_the_inventory(srv: ServerThread) -> None:
    d = ReportingDevice(srv.url, SECRET, "dev-1", "pilot")
    assert d.post(d.build("heartbeat", health="OK", free=61234)) == (200, {"accepted": 1})
    batch = [d.build("downloading", "r1", "1.1.0", progress=0), d.build("downloaded", "r1", "1.1.0"),
             d.build("installed", "r1", "1.1.0")]
    assert d.post({"reports": batch}) == (200, {"accepted": 3})
    status, dev = _op(srv, "GET", "/v1/devices/dev-1")
    assert status == 200
    assert (dev["claimed_group"], dev["version"], dev["slot"], dev["last_event"], dev["health"],
            dev["free_mem"]) == ("pilot", "1.0.0", "ota_0", "installed", "OK", 61234)
    assert dev["group"] is None  # a report only claims a group; the operator registers it
    assert dev["last_seen"] > 0 and [e["event"] for e in dev["events"]] == \
        ["heartbeat", "downloading", "downloaded", "installed"]
    assert all(e["received"] > 0 for e in dev["events"])
    d.close()


def test_replays_get_409_and_change_nothing(srv: ServerThread) -> None:
    d = ReportingDevice(srv.url, SECRET, "dev-2", "canary")
    first = [d.build("heartbeat"), d.build("checking")]
    assert d.post({"reports": first})[0] == 200
    before = _events(srv)
    _, dev_before = _op(srv, "GET", "/v1/devices/dev-2")
    assert d.post({"reports": first})[0] == 409
    assert d.post(first[1])[0] == 409
    fresh = d.build("confirmed", "r1", "1.1.0")
    assert d.post({"reports": [first[0], fresh]})[0] == 409  # all or nothing: the new one is not stored
    assert _events(srv) == before
    _, dev_after = _op(srv, "GET", "/v1/devices/dev-2")
    dev_before.pop("events"), dev_after.pop("events")
    assert dev_after == dev_before
    assert d.post(fresh) == (200, {"accepted": 1})
    # a lower seq never seen (a decision report queued earlier) is still taken, without rewinding state
    late = dict(first[0], seq=100, event="heartbeat")
    assert d.post(late)[0] == 200
    older = dict(first[0], seq=50, event="failed", version="0.9.0")
    assert d.post(older)[0] == 200
    _, dev = _op(srv, "GET", "/v1/devices/dev-2")
    assert dev["last_seq"] == 100 and dev["last_event"] == "heartbeat" and dev["version"] == "1.0.0"
    d.close()


def test_forged_reports_are_refused(srv: ServerThread) -> None:
    d = ReportingDevice(srv.url, SECRET, "dev-3", "general")
    other = ReportingDevice(srv.url, SECRET, "dev-4", "general")
    before = _events(srv)
    assert d.post(d.build("confirmed"), token="0" * 64)[0] == 401
    assert d.post(d.build("confirmed"), token=device_token(b"another fleet secret!", "dev-3"))[0] == 401
    assert d.post(d.build("confirmed"), token=other.token)[0] == 401
    # the token of dev-4, used honestly in the header, cannot carry a report about dev-3
    assert d.post(d.build("confirmed"), token=other.token, device_header="dev-4")[0] == 403
    c = HttpClient(srv.url)
    body = json.dumps(d.build("confirmed")).encode()
    assert c.request("POST", "/v1/reports", body, {"Content-Type": "application/json"})[0] == 401
    assert c.request("POST", "/v1/reports", body, {"Authorization": f"Basic {d.token}"})[0] == 401
    # no X-Mpota-Device header: the body names the device, the token must still be its own
    assert c.request("POST", "/v1/reports", body, {"Authorization": f"Bearer {other.token}"})[0] == 401
    assert c.request("POST", "/v1/reports", body, {"Authorization": f"Bearer {d.token}"})[0] == 200
    c.close()
    assert len(_events(srv)) == len(before) + 1
    assert _op(srv, "GET", "/v1/devices/dev-4")[0] == 404
    d.close(), other.close()


BAD = [
    b"not json", b"[]", b'{"reports": []}', b'{"reports": "x"}', b"{}",
    b'{"device_id": "dev-5", "event": "confirmed"}',
    b'{"device_id": "dev-5", "seq": -1, "event": "confirmed"}',
    b'{"device_id": "dev-5", "seq": "7", "event": "confirmed"}',
    b'{"device_id": "dev-5", "seq": 7.5, "event": "confirmed"}',
    b'{"device_id": "dev-5", "seq": true, "event": "confirmed"}',
    b'{"device_id": "dev-5", "seq": 7, "event": "exploded"}',
    b'{"device_id": "dev-5", "seq": 7, "event": "confirmed", "detail": [1]}',
    b'{"device_id": "dev-5", "seq": 7, "event": "confirmed", "detail": {"x": {"nested": 1}}}',
    b'{"device_id": "dev-5", "seq": 7, "event": "confirmed", "version": 12}',
    b'{"device_id": "dev-5", "seq": 7, "event": "confirmed", "uptime_ms": -5}',
    b'{"device_id": "dev 5", "seq": 7, "event": "confirmed"}',
    b'{"reports": [{"device_id": "dev-5", "seq": 8, "event": "checking"}, '
    b'{"device_id": "dev-5", "seq": 8, "event": "checking"}]}',
    b'{"reports": [{"device_id": "dev-5", "seq": 9, "event": "checking"}, {"seq": 10}]}',
    json.dumps({"reports": [{"device_id": "dev-5", "seq": i, "event": "heartbeat"}
                            for i in range(51)]}).encode(),
    b'{"device_id": "dev-5", "seq": 7, "event": "confirmed"' + b"]" * 5,
]


def test_malformed_reports_get_400_and_change_nothing(srv: ServerThread) -> None:
    token = device_token(SECRET, "dev-5")
    c = HttpClient(srv.url)
    for body in BAD:
        status, _, answer = c.request("POST", "/v1/reports", body,
                                      {"Authorization": f"Bearer {token}", "X-Mpota-Device": "dev-5"})
        assert status == 400, body
        assert json.loads(answer)["error"]
    assert _events(srv) == []
    assert _op(srv, "GET", "/v1/devices/dev-5")[0] == 404
    good = b'{"device_id": "dev-5", "seq": 7, "event": "confirmed"}'
    assert c.request("POST", "/v1/reports", good, {"Authorization": f"Bearer {token}"})[0] == 200
    c.close()


def test_oversize_reports_get_413(srv: ServerThread) -> None:
    d = ReportingDevice(srv.url, SECRET, "dev-6")
    big = {"reports": [d.build("heartbeat", note="x" * 250, **{f"k{i}": "y" * 250 for i in range(15)})
                       for _ in range(20)]}
    assert len(json.dumps(big)) > 64 * 1024
    assert d.post(big)[0] == 413
    # chunked upload (no Content-Length) is capped too
    host, port = srv.url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    payload = json.dumps(big).encode()
    conn.putrequest("POST", "/v1/reports")
    conn.putheader("Authorization", f"Bearer {d.token}")
    conn.putheader("X-Mpota-Device", "dev-6")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for i in range(0, len(payload), 8192):
        part = payload[i:i + 8192]
        conn.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")
    conn.send(b"0\r\n\r\n")
    assert conn.getresponse().status == 413
    conn.close()
    assert _events(srv) == []
    assert d.report("heartbeat") == 200  # still serving
    d.close()


def test_register_devices(srv: ServerThread) -> None:
    status, dev = _op(srv, "POST", "/v1/devices", {"device_id": "dev-7", "board": "esp32-generic-4mb",
                                                   "group": "canary"})
    assert status == 200 and dev["group"] == "canary" and dev["registered_at"] > 0
    c = HttpClient(srv.url)
    own = {"Authorization": f"Bearer {device_token(SECRET, 'dev-8')}"}
    body = json.dumps({"device_id": "dev-8", "board": "esp32-generic-4mb", "group": "pilot"}).encode()
    assert c.request("POST", "/v1/devices", body, own)[0] == 200
    wrong = {"Authorization": f"Bearer {device_token(SECRET, 'dev-7')}"}
    assert c.request("POST", "/v1/devices", body, wrong)[0] == 401
    reset = json.dumps({"device_id": "dev-8", "reset_seq": True}).encode()
    assert c.request("POST", "/v1/devices", reset, own)[0] == 403
    assert c.request("POST", "/v1/devices", b'{"device_id": "../x"}', own)[0] == 400
    c.close()
    status, listing = _op(srv, "GET", "/v1/devices")
    assert status == 200 and [d["device_id"] for d in listing["devices"]] == ["dev-7", "dev-8"]
    # operator reset of the replay window (a board whose flash was erased starts at seq 1 again)
    d = ReportingDevice(srv.url, SECRET, "dev-8", "pilot")
    assert d.report("heartbeat") == 200
    d.seq = 0
    assert d.report("heartbeat") == 409
    assert _op(srv, "POST", "/v1/devices", {"device_id": "dev-8", "reset_seq": True})[0] == 200
    for _ in range(2):  # twice: earlier resets' events do not collide either
        d.seq = 0
        assert d.report("heartbeat") == 200
        assert d.report("checking") == 200
        assert _op(srv, "POST", "/v1/devices", {"device_id": "dev-8", "reset_seq": True})[0] == 200
    events = _op(srv, "GET", "/v1/events?device=dev-8")[1]["events"]
    assert [e["event"] for e in events] == ["heartbeat", "heartbeat", "checking", "heartbeat", "checking"]
    assert all(e["seq"] < 0 for e in events)
    d.close()
