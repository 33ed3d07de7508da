"""A loopback HTTP report collector for device tests.

Speaks the `POST /v1/reports` contract of docs/ARCHITECTURE.md: a single report or
``{"reports": [...]}``, ``Authorization: Bearer <token>``, ``X-Mpota-Device``; answers 409
when a body holds a (device, seq) it has already stored (storing nothing from that body),
401 for a wrong token, 400 for a malformed body. ``mode`` switches it to answer 503 or to
drop connections, so tests can take the "server" down and up again without changing ports;
``fail_next`` answers 503 to the next POSTs, ``delay`` makes every answer slow.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Collector:
    def __init__(self, tokens: dict[str, str] | None = None) -> None:
        self.tokens = tokens  # device_id -> token; None accepts any token
        self.reports: list[dict[str, Any]] = []
        self.posts: list[int] = []  # status answered for every POST
        self.mode = "up"  # up | 503 | drop
        self.fail_next = 0   # answer 503 to this many POSTs, then go on as `mode` says
        self.delay = 0.0     # seconds before answering each POST (a slow server)
        self._seen: set[tuple[str, int]] = set()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/reports"

    def start(self) -> Collector:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Collector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def events(self, device_id: str | None = None) -> list[str]:
        with self._lock:
            return [r["event"] for r in self.reports if device_id in (None, r.get("device_id"))]

    def of(self, event: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.reports if r["event"] == event]

    def _accept(self, device: str, token: str, body: bytes) -> int:
        try:
            doc = json.loads(body)
        except ValueError:
            return 400
        items = doc["reports"] if isinstance(doc, dict) and "reports" in doc else [doc]
        if not isinstance(items, list) or not 1 <= len(items) <= 50:
            return 400
        for r in items:
            if not isinstance(r, dict) or not isinstance(r.get("seq"), int) or "event" not in r:
                return 400
            if r.get("device_id") != device:
                return 400
        if self.tokens is not None and self.tokens.get(device) != token:
            return 401
        with self._lock:
            keys = [(device, int(r["seq"])) for r in items]
            if any(k in self._seen for k in keys) or len(set(keys)) != len(keys):
                return 409
            self._seen.update(keys)
            self.reports.extend(items)
        return 200

    def _handler(self) -> Callable[..., BaseHTTPRequestHandler]:
        collector = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                if collector.mode == "drop":
                    self.close_connection = True
                    self.connection.close()
                    return
                if collector.delay:
                    time.sleep(collector.delay)
                with collector._lock:
                    failing = collector.fail_next > 0
                    if failing:
                        collector.fail_next -= 1
                if collector.mode == "503" or failing:
                    status = 503
                elif self.path != "/v1/reports":
                    status = 404
                else:
                    auth = self.headers.get("Authorization") or ""
                    token = auth[7:] if auth.startswith("Bearer ") else ""
                    status = collector._accept(self.headers.get("X-Mpota-Device") or "", token, body)
                collector.posts.append(status)
                out = json.dumps({"status": status}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(out)

        return Handler
