"""device/mpota/http.py against a loopback server that answers canned bytes, under both
interpreters: bodies (Content-Length, chunked, close-delimited), redirects, caps on status and
header lines, timeouts, refused connections, early close, POST."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import free_port

from sim.deviceproc import import_path_env, interpreter_cmd

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"


def _stall(conn: socket.socket, stop: threading.Event) -> bytes | None:
    stop.wait(5)
    return None


class CannedServer:
    """Answers each request by path with raw bytes (or a callable's bytes); records requests."""

    def __init__(self) -> None:
        self.routes: dict[str, Any] = {}
        self.requests: list[bytes] = []
        self.stop = threading.Event()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(32)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._loop, daemon=True).start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    n = int(line.split(b":")[1])
                    while len(body) < n:
                        body += conn.recv(4096)
            self.requests.append(head + b"\r\n\r\n" + body)
            path = head.split(b" ")[1].decode()
            ans = self.routes.get(path, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            if callable(ans):
                ans = ans(conn, self.stop)
            if ans is not None:
                conn.sendall(ans)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.sock.close()


@pytest.fixture(scope="module")
def srv() -> Iterator[CannedServer]:
    s = CannedServer()
    port = s.port
    many = b"".join(b"X-Pad-%03d: %s\r\n" % (i, b"p" * 50) for i in range(200))
    s.routes.update({
        "/plain": OK,
        "/chunked": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\n"),
        "/close": b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc",
        "/r1": b"HTTP/1.1 302 Found\r\nLocation: /plain\r\nContent-Length: 0\r\n\r\n",
        "/r2": (b"HTTP/1.1 301 Moved\r\nLocation: http://127.0.0.1:%d/plain\r\n"
                b"Content-Length: 0\r\n\r\n" % port),
        "/dir/r3": b"HTTP/1.1 307 Temp\r\nLocation: sub\r\nContent-Length: 0\r\n\r\n",
        "/dir/sub": b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nsub!",
        "/loop": b"HTTP/1.1 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\n\r\n",
        "/noloc": b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\n\r\n",
        "/longline": b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * 2000 + b"\r\nContent-Length: 2\r\n\r\nok",
        "/longstatus": b"HTTP/1.1 200 " + b"O" * 2000 + b"\r\nContent-Length: 2\r\n\r\nok",
        "/manyheaders": b"HTTP/1.1 200 OK\r\n" + many + b"Content-Length: 0\r\n\r\n",
        "/garbage": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        "/short": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
        "/stall": _stall,
        "/stallbody": lambda c, stop: (c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"),
                                       stop.wait(5), None)[2],
        "/404": b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\n\r\nno\n",
        "/post": b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        "/badcl": b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
        "/badchunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        "/badutf8": b"HTTP/1.1 200 OK\r\nX-Bin: \xff\xfe\r\nContent-Length: 0\r\n\r\n",
        "/gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",
        "/elsewhere": (b"HTTP/1.1 307 Temp\r\nLocation: http://localhost:%d/created\r\n"
                       b"Content-Length: 0\r\n\r\n" % port),
        "/samehost": b"HTTP/1.1 307 Temp\r\nLocation: /created\r\nContent-Length: 0\r\n\r\n",
        "/created": b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
    })
    yield s
    s.close()



SCRIPT = r"""
import sys, json
import mpota.http as http
import mpota.errors as errors
def get(url, expect=None, trust=None, **kw):
    if trust is not None:
        http.trust(trust)
    try:
        r = http.open(url, **kw)
        if expect:
            r.expect(*expect)
        buf = bytearray(3)
        out = bytearray()
        while True:
            n = r.readinto(buf)
            if not n:
                break
            out.extend(buf[:n])
        r.close()
        return {"status": r.status, "length": r.length, "body": str(out, "utf-8"),
                "ct": r.headers.get("content-type")}
    except errors.OTAError as e:
        return {"error": e.code, "status": getattr(e, "status", None)}
res = {}
for name, url, kw in json.loads(%(cases)r):
    res[name] = get(url, **kw)
print("RESULT " + json.dumps(res))
"""


def run_cases(interp: str, cases: list[tuple[str, str, dict[str, Any]]], tmp: Path) -> dict[str, Any]:
    script = tmp / f"http_{interp}.py"
    script.write_text(SCRIPT % {"cases": json.dumps(cases)})
    p = subprocess.run(interpreter_cmd(interp, "128k") + [str(script)], capture_output=True, text=True,
                       timeout=60, env=import_path_env(interp))
    assert p.returncode == 0, p.stdout + p.stderr
    line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return dict(json.loads(line[7:]))


def test_http_client(srv: CannedServer, interp: str, tmp_path: Path) -> None:
    b = srv.base
    cases: list[tuple[str, str, dict[str, Any]]] = [
        ("plain", b + "/plain", {}),
        ("chunked", b + "/chunked", {}),
        ("close", b + "/close", {}),
        ("r1", b + "/r1", {}),
        ("r2", b + "/r2", {}),
        ("r3", b + "/dir/r3", {}),
        ("no_redirects", b + "/r1", {"max_redirects": 0}),
        ("loop", b + "/loop", {}),
        ("noloc", b + "/noloc", {}),
        ("longline", b + "/longline", {}),
        ("longstatus", b + "/longstatus", {}),
        ("manyheaders", b + "/manyheaders", {}),
        ("garbage", b + "/garbage", {}),
        ("short", b + "/short", {}),
        ("stall", b + "/stall", {"timeout_ms": 300}),
        ("stallbody", b + "/stallbody", {"timeout_ms": 300}),
        ("404", b + "/404", {}),
        ("404expect", b + "/404", {"expect": [200]}),
        ("post", b + "/post", {"method": "POST", "body": '{"a": 1}',
                               "headers": {"Content-Type": "application/json", "X-Mpota-Device": "d1"}}),
        ("refused", f"http://127.0.0.1:{free_port()}/x", {}),
        ("badcl", b + "/badcl", {}),
        ("badchunk", b + "/badchunk", {}),
        ("badutf8", b + "/badutf8", {}),
        ("gzip", b + "/gzip", {}),
        ("badurl", "ftp://example.com/x", {}),
        # the report token: never over plain http unless the config allows it, never to another origin
        ("token_plain", b + "/post", {"method": "POST", "body": "{}", "trust": {},
                                      "headers": {"Authorization": "Bearer secret-1"}}),
        ("token_lab", b + "/elsewhere", {"method": "POST", "body": "{}", "trust": {"allow_http": True},
                                         "headers": {"Authorization": "Bearer secret-2"}}),
        ("token_same", b + "/samehost", {"method": "POST", "body": "{}", "trust": {"allow_http": True},
                                         "headers": {"Authorization": "Bearer secret-3"}}),
    ]
    srv.requests.clear()
    r = run_cases(interp, cases, tmp_path)
    assert r["plain"] == {"status": 200, "length": 5, "body": "hello", "ct": "text/plain"}
    assert r["chunked"]["body"] == "hello world" and r["chunked"]["length"] is None
    assert r["close"]["body"] == "abc" and r["close"]["length"] is None
    assert r["r1"]["body"] == "hello" and r["r2"]["body"] == "hello" and r["r3"]["body"] == "sub!"
    assert r["no_redirects"]["error"] == "download"
    assert r["longline"]["body"] == "ok"  # an overlong header is skipped, not fatal
    for name in ("loop", "noloc", "longstatus", "manyheaders", "garbage", "short", "refused", "badcl",
                 "badchunk", "badutf8", "gzip", "badurl"):
        assert r[name]["error"] == "download", (name, r[name])
    assert r["stall"]["error"] == "timeout"
    assert r["stallbody"]["error"] == "timeout"
    assert r["404"]["status"] == 404 and r["404"]["body"] == "no\n"
    assert r["404expect"] == {"error": "http_status", "status": 404}
    assert r["post"]["status"] == 201
    post = [q for q in srv.requests if q.startswith(b"POST /post ")]
    assert len(post) == 1
    head, _, body = post[0].partition(b"\r\n\r\n")
    assert body == b'{"a": 1}'
    head += b"\r\n"
    assert b"\r\nContent-Length: 8\r\n" in head and b"\r\nX-Mpota-Device: d1\r\n" in head
    assert b"\r\nHost: 127.0.0.1:%d\r\n" % srv.port in head
    assert len([q for q in srv.requests if q.startswith(b"GET /loop ")]) == 4  # 1 + 3 redirects
    assert r["token_plain"]["error"] == "tls" and b"secret-1" not in b"".join(srv.requests)
    assert r["token_lab"]["status"] == 201 and r["token_same"]["status"] == 201
    sent = [q for q in srv.requests if b"Bearer secret-2" in q]
    assert [q.split(b" ")[1] for q in sent] == [b"/elsewhere"]  # not repeated to localhost
    assert len([q for q in srv.requests if b"Bearer secret-3" in q]) == 2  # same origin: kept


def test_split_and_join() -> None:
    import importlib

    http: Any = importlib.import_module("mpota.http")
    assert http.split("http://h/a/b") == (False, "h", 80, "/a/b")
    assert http.split("https://h:8443") == (True, "h", 8443, "/")
    assert http.split("http://127.0.0.1:8080/f?x=1") == (False, "127.0.0.1", 8080, "/f?x=1")
    j: Callable[[str, str], str] = http.join
    assert j("http://h/feed/", "channels/b/s.json") == "http://h/feed/channels/b/s.json"
    assert j("http://h/feed/releases/b/1.0/manifest.json", "firmware.bin") == \
        "http://h/feed/releases/b/1.0/firmware.bin"
    assert j("http://h/feed/x.json", "/abs") == "http://h/abs"
    assert j("http://h:81", "/abs") == "http://h:81/abs"
    assert j("http://h/a/x.json", "https://cdn/y.bin") == "https://cdn/y.bin"
    assert j("http://h", "y") == "http://h/y"
