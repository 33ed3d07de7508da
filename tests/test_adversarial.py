"""`mpota serve` attacked the way a careless or hostile client would: every answer is a 4xx (never
500, never a 5xx a device retries forever), nothing is stored from a refused request, no device
token opens an operator route, slow or vanishing clients cost one line and a closed socket."""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from host_tools.fleet import DEVICE_ID, GROUP_NAME, device_token
from host_tools.server.app import ServerConfig
from host_tools.server.auth import TokenCache, operator_token
from host_tools.server.ingest_plan import IngestResult, Report
from host_tools.server.store import SQLiteStore, UnstorableError
from sim.serverkit import HttpClient, ReportingDevice, ServerThread

SECRET = bytes(range(32))
OP = {"Authorization": f"Bearer {operator_token(SECRET)}"}


@pytest.fixture()
def srv(tmp_path: Path) -> Iterator[ServerThread]:
    (tmp_path / "feed").mkdir()
    (tmp_path / "feed" / "channel.json").write_bytes(b"0123456789" * 10)
    config = ServerConfig(feed_dir=tmp_path / "feed", db_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
                          fleet_secret=SECRET, header_timeout=1.0, body_timeout=1.0)
    with ServerThread(config) as s:
        yield s


def _addr(srv: ServerThread) -> tuple[str, int]:
    host, port = srv.url.split("//")[1].split(":")
    return host, int(port)


def raw(srv: ServerThread, data: bytes, wait: float = 5.0) -> bytes:
    """Send bytes as they are; everything the server answers until it closes (or `wait` passes)."""
    with socket.create_connection(_addr(srv), timeout=wait) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return out


def statuses(answer: bytes) -> list[int]:
    return [int(line.split(b" ")[1]) for line in answer.split(b"\r\n") if line.startswith((b"HTTP/1.1 ",
                                                                                           b"HTTP/1.0 "))]


def post(path: str, body: bytes, headers: dict[str, str] | None = None, close: bool = True) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
    for k, v in (headers or {}).items():
        head += f"{k}: {v}\r\n"
    if close:
        head += "Connection: close\r\n"
    return head.encode() + b"\r\n" + body


def call(srv: ServerThread, method: str, path: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    c = HttpClient(srv.url)
    try:
        status, _, data = c.request(method, path, body, headers)
    finally:
        c.close()
    return status, json.loads(data, parse_constant=_no_constant) if data else None


def _no_constant(name: str) -> None:
    raise AssertionError(f"non-standard JSON {name} in an answer")


def events(srv: ServerThread) -> list[dict[str, Any]]:
    status, body = call(srv, "GET", "/v1/events?limit=10000", None, OP)
    assert status == 200
    return list(body["events"])


def dev_headers(device_id: str, header: bool = True) -> dict[str, str]:
    h = {"Authorization": f"Bearer {device_token(SECRET, device_id)}"}
    if header:
        h["X-Mpota-Device"] = device_id
    return h


# ---------------------------------------------------------------- seen case 3 and 4: 500s
def test_unauthenticated_bodies_are_refused_before_parsing(srv: ServerThread) -> None:
    # case 3: a junk token with a body the validator used to crash on
    body = b'{"device_id":"x","seq":1,"event":[]}'
    assert call(srv, "POST", "/v1/reports", body, {"Authorization": "Bearer junk"})[0] == 401
    # the same body with the device's real token: a 400, not a 500
    for header in (True, False):
        status, answer = call(srv, "POST", "/v1/reports", body, dev_headers("x", header))
        assert status == 400 and "event" in answer["error"]
    # case 4: deep nesting, without a token and with every kind of token
    deep = b"[" * 5000
    assert call(srv, "POST", "/v1/devices", deep)[0] == 401
    assert call(srv, "POST", "/v1/devices", deep, OP)[0] == 400
    assert call(srv, "POST", "/v1/devices", deep, dev_headers("x"))[0] == 400
    assert call(srv, "POST", "/v1/reports", deep, dev_headers("x"))[0] == 400
    assert call(srv, "POST", "/v1/reports", b'{"reports":' + deep, dev_headers("x"))[0] == 400
    assert call(srv, "POST", "/v1/rollouts", deep, OP)[0] == 400
    assert call(srv, "POST", "/v1/rollouts", b'{"plan":' + b"{\"a\":" * 3000, OP)[0] == 400
    assert events(srv) == []


BAD_VALUES = [
    b'"event": ["confirmed"]', b'"event": {"a": 1}', b'"event": null',
    b'"version": "\\ud800"', b'"version": "a\\udfff"', b'"detail": {"k": "\\udc80"}',
    b'"detail": {"free": 9223372036854775808}', b'"detail": {"free": -9223372036854775809}',
    b'"detail": {"free": 9007199254740993}', b'"detail": {"x": ' + b"9" * 5000 + b"}",
    b'"detail": {"x": NaN}', b'"detail": {"x": Infinity}', b'"detail": {"x": -Infinity}',
    b'"detail": {"x": 1e400}', b'"detail": {"x": -1e999}', b'"uptime_ms": 1e400',
    b'"time": 18446744073709551616', b'"seq": 9223372036854775807',
    b'"device_id": "dev-a\\n"', b'"version": "x", "version": "\\ud83d"', b'"version": "1\\u0000"',
    b'"detail": {"k\\u0000": 1}',
]


@pytest.mark.parametrize("header", [True, False], ids=["header", "body-id"])
def test_reports_that_could_never_be_stored_get_a_4xx(srv: ServerThread, header: bool) -> None:
    # case 6 and 7: a 5xx would be retried forever; NaN/Infinity would leak into /v1/events
    for extra in BAD_VALUES:
        body = b'{"device_id": "dev-a", "seq": 7, "event": "heartbeat", ' + extra + b"}"
        status, answer = call(srv, "POST", "/v1/reports", body, dev_headers("dev-a", header))
        assert 400 <= status < 500, (extra, status)
        assert answer["error"] and "\n" not in answer["error"]
        batch = b'{"reports": [{"device_id": "dev-a", "seq": 8, "event": "heartbeat"}, ' + body + b"]}"
        assert call(srv, "POST", "/v1/reports", batch, dev_headers("dev-a", header))[0] in (400, 422)
    for raw_body in (b"\xff\xfe{\x00}\x00", b'{"device_id": "dev-a", "seq": 7, "event": "\xe9"}',
                     b'\xef\xbb\xbf{"device_id": "dev-a", "seq": 7, "event": "heartbeat"}',
                     b'{"device_id": "dev-a", "seq": 7, "event": "heartbeat", "version": "\xed\xa0\x80"}'):
        assert call(srv, "POST", "/v1/reports", raw_body, dev_headers("dev-a", header))[0] == 400
    assert events(srv) == []
    # still serving, and what is stored is standard JSON (call() refuses NaN/Infinity)
    good = (b'{"device_id": "dev-a", "seq": 9, "event": "heartbeat", '
            b'"detail": {"x": 1.5, "big": -9007199254740991}}')
    assert call(srv, "POST", "/v1/reports", good, dev_headers("dev-a", header))[0] == 200
    assert [e["detail"] for e in events(srv)] == [{"x": 1.5, "big": -9007199254740991}]


def test_the_store_refusing_a_report_is_a_4xx_not_a_retry(srv: ServerThread,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # defence in depth: should a value ever pass validation that the store cannot hold, the
    # device gets 422 (dropped), the other requests of the same group commit are stored.
    store = srv.server.store
    assert isinstance(store, SQLiteStore)
    monkeypatch.setattr("host_tools.server.app.parse_reports", lambda data: [data])  # no validation
    d = ReportingDevice(srv.url, SECRET, "dev-p")
    bad = d.build("heartbeat")
    bad["seq"] = 1 << 60  # beyond what the store takes
    assert d.post(bad)[0] == 422
    assert d.post(d.build("heartbeat"))[0] == 200
    d.close()
    assert [(e["device_id"], e["seq"]) for e in events(srv)] == [("dev-p", 2)]
    with pytest.raises(UnstorableError):
        store.ingest([("dev-p", [{"device_id": "dev-p", "seq": 99, "event": "heartbeat",
                                  "version": "bad\x00"}])], time.time())


def test_a_server_fault_while_storing_is_a_5xx_not_the_devices_fault(srv: ServerThread,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # a bug in the store (here a TypeError) must not be answered as the client's mistake: a 4xx
    # would make the device drop a good report; a 503 keeps it queued until the server is fixed.
    store = srv.server.store
    assert isinstance(store, SQLiteStore)
    real = SQLiteStore._ingest

    def buggy(self: SQLiteStore, requests: list[tuple[str, list[Report]]], now: float,
              conn: sqlite3.Connection) -> list[IngestResult]:
        if any(r.get("version") == "trips-a-bug" for _, rs in requests for r in rs):
            raise TypeError("'<' not supported between instances of 'NoneType' and 'int'")
        return real(self, requests, now, conn)

    monkeypatch.setattr(SQLiteStore, "_ingest", buggy)
    d = ReportingDevice(srv.url, SECRET, "dev-q", version="trips-a-bug")
    assert d.post(d.build("heartbeat"))[0] == 503
    d.version = "1.0.0"
    assert d.post(d.build("heartbeat"))[0] == 200
    d.close()


# ---------------------------------------------------------------- seen case 5: one size cap
ROUTES = [("/v1/reports", 64 * 1024), ("/v1/devices", 8192), ("/v1/rollouts", 64 * 1024),
          ("/v1/rollouts/r-1/pause", 64 * 1024)]


@pytest.mark.parametrize(("path", "cap"), ROUTES)
def test_one_size_cap_whatever_the_transfer_encoding(srv: ServerThread, path: str, cap: int) -> None:
    auth = dev_headers("dev-b") if path == "/v1/reports" else OP
    hdrs = "".join(f"{k}: {v}\r\n" for k, v in auth.items())
    # Content-Length over the cap: answered at once, without waiting for (or reading) the body
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\n{hdrs}Content-Length: {900 * 1024}\r\n\r\n".encode()
    with socket.create_connection(_addr(srv), timeout=5) as s:
        s.sendall(head + b"{" * 1000)
        first = s.recv(4096)
    assert statuses(first) == [413], first[:80]
    # no token at all: 401 before the body (/v1/devices used to read 900 KB, then say 401)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {900 * 1024}\r\n\r\n".encode()
    with socket.create_connection(_addr(srv), timeout=5) as s:
        s.sendall(head + b"{" * 1000)
        assert statuses(s.recv(4096)) == [401]
    # chunked: cut as soon as it passes the cap
    chunk = b"x" * 4096
    body = b"".join(b"1000\r\n" + chunk + b"\r\n" for _ in range(cap // 4096 + 2)) + b"0\r\n\r\n"
    answer = raw(srv, f"POST {path} HTTP/1.1\r\nHost: x\r\n{hdrs}Transfer-Encoding: chunked\r\n"
                 f"Connection: close\r\n\r\n".encode() + body)
    assert statuses(answer) == [413]


# ---------------------------------------------------------------- seen case 7: ids, timeouts, hang-ups
def test_identifiers_are_matched_whole(srv: ServerThread) -> None:
    for bad in ("dev-c\n", "dev-c\r", " dev-c", "dev-c ", "dev\u00e9", "a" * 65, ""):
        body = json.dumps({"device_id": bad, "seq": 1, "event": "heartbeat"}).encode()
        token = device_token(SECRET, "dev-c")
        assert call(srv, "POST", "/v1/reports", body, {"Authorization": f"Bearer {token}"})[0] in (400, 401)
        reg = json.dumps({"device_id": bad, "board": "b", "group": "canary"}).encode()
        assert call(srv, "POST", "/v1/devices", reg, OP)[0] == 400
        reg = json.dumps({"device_id": "dev-c", "board": "b", "group": bad or "x\n"}).encode()
        assert call(srv, "POST", "/v1/devices", reg, OP)[0] == 400
    assert call(srv, "GET", "/v1/devices", None, OP)[1]["devices"] == []
    # the header's id is matched whole too
    body = json.dumps({"device_id": "dev-c", "seq": 1, "event": "heartbeat"}).encode()
    for claimed in ("dev-c,dev-d", "dev-c dev-c", "dev-c\x0b"):
        hdrs = {"Authorization": f"Bearer {device_token(SECRET, 'dev-c')}", "X-Mpota-Device": claimed}
        answer = raw(srv, post("/v1/reports", body, hdrs))
        assert statuses(answer) in ([400], [401]), claimed


def test_registered_group_follows_the_group_name_rule(srv: ServerThread) -> None:
    # a group is what a plan's stages name (fleet.GROUP_NAME), not a device id: a ':' or more than
    # 32 characters would be registered and then match no stage
    for bad in ("can:ary", "g" * 33):
        assert GROUP_NAME.fullmatch(bad) is None and DEVICE_ID.fullmatch(bad) is not None
        for headers in (OP, dev_headers("dev-g")):
            reg = json.dumps({"device_id": "dev-g", "board": "b", "group": bad}).encode()
            assert call(srv, "POST", "/v1/devices", reg, headers)[0] == 400, (bad, headers)
    assert call(srv, "GET", "/v1/devices", None, OP)[1]["devices"] == []
    # board and channel by the feed's name rule (manifest.NAME): no feed file could be named "beta+1"
    for field in ("board", "channel"):
        reg = json.dumps({"device_id": "dev-g", "board": "b", field: "beta+1"}).encode()
        assert call(srv, "POST", "/v1/devices", reg, OP)[0] == 400, field
    good = "g" * 32
    reg = json.dumps({"device_id": "dev-g", "board": "b", "group": good}).encode()
    status, device = call(srv, "POST", "/v1/devices", reg, OP)
    assert (status, device["group"]) == (200, good)


def test_slow_clients_are_cut_off(srv: ServerThread) -> None:
    addr = _addr(srv)
    silent = [socket.create_connection(addr) for _ in range(40)]
    dribble = [socket.create_connection(addr) for _ in range(40)]
    slow_body = [socket.create_connection(addr) for _ in range(40)]
    token = device_token(SECRET, "dev-d")
    for s in dribble:
        s.sendall(b"POST /v1/reports HTTP/1.1\r\nHost: x\r\n")
    for s in slow_body:
        s.sendall(post("/v1/reports", b"{" * 100, {"Authorization": f"Bearer {token}",
                                                   "X-Mpota-Device": "dev-d"}, close=False)[:-99])
    deadline = time.time() + 2.5
    while time.time() < deadline:  # keep dribbling a header byte now and then
        for s in dribble:
            try:
                s.sendall(b"X")
            except OSError:
                pass
        time.sleep(0.3)
    time.sleep(0.5)
    for group, want in ((silent, b""), (dribble, b""), (slow_body, b"408")):
        for s in group:
            s.settimeout(3)
            try:
                data = s.recv(4096)
            except ConnectionResetError:
                data = b""
            assert want in data[:12] and (want or data == b""), data[:40]
            s.close()
    d = ReportingDevice(srv.url, SECRET, "dev-d")
    assert d.report("heartbeat") == 200  # the server is fine
    d.close()


def test_a_hang_up_is_one_line(srv: ServerThread, capfd: pytest.CaptureFixture[str],
                               caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = device_token(SECRET, "dev-e")
    for path, auth in (("/v1/reports", {"Authorization": f"Bearer {token}", "X-Mpota-Device": "dev-e"}),
                       ("/v1/devices", OP), ("/v1/rollouts", OP)):
        with socket.create_connection(_addr(srv)) as s:
            s.sendall(post(path, b"{" * 1000, auth)[:-900])
            time.sleep(0.2)
    time.sleep(0.5)
    d = ReportingDevice(srv.url, SECRET, "dev-e")
    assert d.report("heartbeat") == 200
    d.close()
    err = capfd.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len([ln for ln in lines if "hung up" in ln]) == 3, err
    assert "Traceback" not in err
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.text


# ---------------------------------------------------------------- no device is an operator
OPERATOR_ROUTES = [("GET", "/v1/devices"), ("GET", "/v1/devices/dev-f"), ("GET", "/v1/events"),
                   ("GET", "/v1/events?device=dev-f"), ("GET", "/v1/rollouts"), ("POST", "/v1/rollouts"),
                   ("GET", "/v1/rollouts/r-1")] + [
                   ("POST", f"/v1/rollouts/r-1/{a}") for a in ("pause", "resume", "abort", "evaluate")]


def test_a_device_token_opens_no_operator_route(srv: ServerThread) -> None:
    d = ReportingDevice(srv.url, SECRET, "dev-f", "canary")
    assert d.report("heartbeat") == 200
    body = json.dumps({"board": "esp32-generic-4mb", "channel": "stable", "version": "1.1.0",
                       "plan": {}}).encode()
    for token in (d.token, d.token.upper(), operator_token(b"another fleet secret"), "", "x" * 5000):
        for header in ({}, {"X-Mpota-Device": "dev-f"}):
            for method, path in OPERATOR_ROUTES:
                status, answer = call(srv, method, path, body if method == "POST" else None,
                                      {"Authorization": f"Bearer {token}", **header})
                assert status == 401, (method, path, status)
    # reset_seq is an operator's: the device's own token gets 403 whatever the shape
    for value in (True, 1, "yes"):
        reg = json.dumps({"device_id": "dev-f", "reset_seq": value}).encode()
        assert call(srv, "POST", "/v1/devices", reg, dev_headers("dev-f"))[0] in (400, 403)
    # another device's token registers nobody else
    reg = json.dumps({"device_id": "dev-g", "group": "canary"}).encode()
    assert call(srv, "POST", "/v1/devices", reg, dev_headers("dev-f"))[0] == 401
    assert call(srv, "POST", "/v1/devices", reg, dev_headers("dev-f", header=False))[0] == 401
    # the operator label cannot be a device id (no device token can equal the operator token)
    label = json.dumps({"device_id": "mpota operator"}).encode()
    assert call(srv, "POST", "/v1/devices", label, OP)[0] == 400
    d.close()


# ---------------------------------------------------------------- feed: symlinks, Range
def test_symlinked_folders_and_odd_ranges(srv: ServerThread, tmp_path: Path) -> None:
    feed = tmp_path / "feed"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.json").write_text('{"secret": 1}')
    (feed / "releases").mkdir()
    os.symlink(outside, feed / "releases" / "out")
    os.symlink(feed / "releases", feed / "loop")
    os.symlink("../..", feed / "releases" / "up")
    c = HttpClient(srv.url)
    try:
        for path in ("/releases/out/secret.json", "/releases/up/outside/secret.json", "/loop/out/secret.json",
                     "/releases/out/", "/releases/out", "/%2e%2e/outside/secret.json",
                     "/releases/%2e%2e/%2e%2e/outside/secret.json", "/releases/out/../../db.sqlite"):
            status, _, data = c.request("GET", path)
            assert status in (403, 404), (path, status)
            assert b"secret" not in data
        assert c.request("GET", "/loop")[0] == 404  # a folder is not a file
        whole = (feed / "channel.json").read_bytes()
        for value in ("bytes=0-1,3-4", "bytes=5-2", "bytes=abc", "bytes=-0", "bytes=100-", "bytes=--1",
                      "bytes=0-99999999999999999999", "bytes=1-2, 5-", "items=0-1", "bytes=" + "0-1," * 1000,
                      "bytes=99999999999999999999-", "bytes=-99999999999999999999", "bytes= 1-2",
                      "bytes=1-2-3"):
            status, _, data = c.request("GET", "/channel.json", None, {"Range": value})
            assert status in (200, 206, 416), (value, status)
            if status == 206:
                assert data in whole, value
            elif status == 200:
                assert data == whole
        status, _, data = c.request("GET", "/channel.json", None, {"Range": "bytes=90-"})
        assert (status, data) == (206, b"0123456789")
    finally:
        c.close()


# ---------------------------------------------------------------- request smuggling shapes
SMUGGLE = [
    b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
    b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
    b"Content-Length: 4\r\nContent-Length: 40\r\n",
    b"Content-Length: 4, 40\r\n",
    b"Content-Length: +4\r\n",
    b"Content-Length: 0x4\r\n",
    b"Transfer-Encoding: chunked, identity\r\n",
    b"Transfer-Encoding: xchunked\r\n",
    b"Transfer-Encoding : chunked\r\n",
    b"Transfer-Encoding:\tchunked\r\n Content-Length: 4\r\n",
    b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
]


@pytest.mark.parametrize("shape", SMUGGLE, ids=range(len(SMUGGLE)))
def test_smuggling_shapes_are_refused(srv: ServerThread, shape: bytes) -> None:
    # a second request hidden in the body: it must never be answered as a request of its own
    hidden = b"GET /v1/events HTTP/1.1\r\nHost: x\r\n" + b"".join(
        f"{k}: {v}\r\n".encode() for k, v in OP.items()) + b"\r\n"
    body = b"0\r\n\r\n" + hidden
    head = (b"POST /v1/reports HTTP/1.1\r\nHost: x\r\n" + shape +
            b"".join(f"{k}: {v}\r\n".encode() for k, v in dev_headers("dev-h").items()) + b"\r\n")
    answer = raw(srv, head + body, wait=3)
    codes = statuses(answer)
    assert codes and all(400 <= c < 500 for c in codes), answer[:200]
    assert b'"events"' not in answer


# ---------------------------------------------------------------- replay across rollouts, floods
def test_replays_across_rollouts_are_refused(srv: ServerThread) -> None:
    d = ReportingDevice(srv.url, SECRET, "dev-i", "canary")
    captured = d.build("confirmed", "r-1", "1.1.0")
    assert d.post(captured)[0] == 200
    for rollout in ("r-2", "r-3"):  # the same seq, now claiming to be about a later rollout
        assert d.post(dict(captured, rollout=rollout))[0] == 409
        assert d.post({"reports": [d.build("heartbeat"), dict(captured, rollout=rollout)]})[0] == 409
    rows = [e for e in events(srv) if e["event"] == "confirmed"]
    assert [e["rollout"] for e in rows] == ["r-1"]
    d.close()


def test_a_flood_of_unknown_devices_stays_bounded(srv: ServerThread) -> None:
    tokens = srv.server.tokens
    assert tokens is not None
    before = len(tokens)
    c = HttpClient(srv.url)
    try:
        for i in range(300):
            did = f"ghost-{i}"
            body = json.dumps({"device_id": did, "seq": 1, "event": "confirmed", "rollout": "r-1"}).encode()
            for h in ({"Authorization": "Bearer " + "0" * 64, "X-Mpota-Device": did},
                      {"Authorization": "Bearer " + "0" * 64}):
                assert c.request("POST", "/v1/reports", body, h)[0] == 401
    finally:
        c.close()
    assert len(tokens) == before  # made-up ids cost no memory
    assert call(srv, "GET", "/v1/devices", None, OP)[1]["devices"] == []
    # the cache itself: bounded, oldest out first, a cached device still checked exactly
    cache = TokenCache(SECRET, limit=50)
    for i in range(120):
        assert cache.device_ok(f"d-{i}", device_token(SECRET, f"d-{i}"))
        assert not cache.device_ok(f"x-{i}", device_token(SECRET, f"d-{i}"))
    assert len(cache) == 50
    assert cache.device_ok("d-119", device_token(SECRET, "d-119"))
    assert not cache.device_ok("d-119", device_token(SECRET, "d-118"))
    assert cache.device_ok("d-0", device_token(SECRET, "d-0"))  # evicted, checked again from the secret
    assert len(cache) == 50


def test_rollout_bodies_with_odd_names_are_refused(srv: ServerThread) -> None:
    # ids and names matched whole: "r-1\n" used to start a rollout no URL could address
    base = {"board": "esp32-generic-4mb", "version": "1.1.0", "plan": {"stages": [{"name": "canary"}]}}
    for over in ({"id": "r-1\n"}, {"id": "r 1"}, {"id": "a" * 65}, {"id": 7}, {"version": "1.1.0\n"},
                 {"board": "esp32\u0000"}, {"channel": "stable\n"}, {"channel": "../x"}, {"version": ""},
                 {"board": "esp32+x"}, {"channel": "beta+1"}, {"version": "1.1"}, {"version": "1.1.0+a..b"},
                 {"plan": {"stages": [{"name": "canary\n"}]}},
                 {"plan": {"stages": [{"name": "canary", "groups": ["canary\n"]}]}}):
        body = json.dumps({**base, **over}).encode()
        status, answer = call(srv, "POST", "/v1/rollouts", body, OP)
        assert status == 400, (over, status, answer)
    assert call(srv, "GET", "/v1/rollouts", None, OP)[1]["rollouts"] == []
    # no string with a NUL reaches a database (PostgreSQL text cannot hold one): 400 on every route
    for path, body in (("/v1/rollouts/r-1/pause", {"reason": "a\u0000"}),
                       ("/v1/devices", {"device_id": "dev-n", "board": "b\u0000"}),
                       ("/v1/rollouts", {**base, "plan": {"stages": [{"name": "canary", "x": "\u0000"}]}})):
        assert call(srv, "POST", path, json.dumps(body).encode(), OP)[0] == 400, path


# ---------------------------------------------------------------- every route, every kind of junk
ROUTE_SHAPES = ["/", "/v1/status", "/v1/reports", "/v1/devices", "/v1/devices/{x}", "/v1/events",
                "/v1/events?device={x}&limit={x}", "/v1/rollouts", "/v1/rollouts/{x}", "/v1/rollouts/{x}/{x}",
                "/v1/{x}", "/console/login", "/console/logout", "/console/rollouts", "/console/rollouts/{x}",
                "/console/rollouts/{x}/{x}", "/console/devices", "/console/devices/{x}",
                "/console/devices?q={x}&page={x}&state={x}", "/console/{x}", "/{x}", "/{x}/{x}/{x}"]
JUNK_PARAMS = ["%00", "%ff", "..", "%2e%2e", "a" * 3000, "%F0%9F%98%80", "-1", "99999999999999999999999",
               "nan", "%0d%0aX:1", "pause", "abort", "evaluate", "x;y", "%25"]
JUNK_BODIES = [b"", b"{", b"[]", b"null", b'{"a":' * 200, b"\xff\xfe", b"x=1&" * 50, b'{"reason": 5}',
               b'{"reason": "' + b"r" * 5000 + b'"}', b"csrf=&next=//evil", b'{"device_id": "\\u0000"}']


def test_no_route_answers_5xx_to_junk(srv: ServerThread) -> None:
    auths = [{}, OP, dev_headers("dev-z"), {"Cookie": "mpota_session=" + "A" * 500},
             {"Cookie": "mpota_session=..; mpota_csrf=\x7f"}, {"Authorization": "Bearer " + "\u00e9" * 10}]
    seen = 0
    for shape in ROUTE_SHAPES:
        for i, param in enumerate(JUNK_PARAMS):
            path = shape.replace("{x}", param)
            auth = auths[i % len(auths)]
            for method, body in (("GET", None), ("POST", JUNK_BODIES[i % len(JUNK_BODIES)]), ("HEAD", None),
                                 ("DELETE", None)):
                head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode("latin-1",
                                                                                                "replace")
                for k, v in auth.items():
                    head += f"{k}: {v}\r\n".encode("latin-1", "replace")
                if body is not None:
                    head += b"Content-Length: %d\r\n" % len(body)
                    head += b"Content-Type: application/x-www-form-urlencoded\r\n"
                answer = raw(srv, head + b"\r\n" + (body or b""), wait=5)
                codes = statuses(answer)
                assert codes and all(c < 500 for c in codes), (method, path[:80], answer[:200])
                seen += 1
    assert seen > 1000
