"""The feed as `mpota serve` serves it: Range, 416, ETag/304, HEAD, types, no way out of the feed."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from host_tools.server.app import ServerConfig
from sim.serverkit import HttpClient, ServerThread


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, Path]]:
    root = tmp_path_factory.mktemp("feedsrv")
    feed = root / "feed"
    (feed / "releases" / "b" / "1.0.0").mkdir(parents=True)
    (feed / "channels" / "b").mkdir(parents=True)
    (feed / "releases" / "b" / "1.0.0" / "firmware.bin").write_bytes(bytes(range(256)) * 40)  # 10240
    (feed / "releases" / "b" / "1.0.0" / "firmware.bin.z").write_bytes(b"\x78\xda" + b"z" * 100)
    (feed / "channels" / "b" / "stable.json").write_text('{"payloadType": "x"}')
    (feed / ".mpota-feed.lock").write_text("")
    (root / "secret.txt").write_text("TOP-SECRET")
    os.symlink(root / "secret.txt", feed / "escape.json")
    os.symlink(feed / "channels" / "b" / "stable.json", feed / "inside.json")
    with ServerThread(ServerConfig(feed_dir=feed, db_url=f"sqlite:///{root / 'db.sqlite'}")) as srv:
        yield srv, feed


def _get(srv: ServerThread, path: str, method: str = "GET",
         **headers: str) -> tuple[int, dict[str, str], bytes]:
    c = HttpClient(srv.url)
    try:
        return c.request(method, path, headers=headers)
    finally:
        c.close()


def _raw(srv: ServerThread, target: str) -> int:
    """Send a request line exactly as written (no client-side normalisation of '..')."""
    host, port = srv.url.rsplit(":", 1)
    with socket.create_connection((host.split("//")[1], int(port)), timeout=5) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def test_whole_file_types_and_etag(served: tuple[ServerThread, Path]) -> None:
    srv, feed = served
    status, h, body = _get(srv, "/releases/b/1.0.0/firmware.bin")
    assert status == 200 and body == bytes(range(256)) * 40
    assert h["content-type"] == "application/octet-stream" and h["accept-ranges"] == "bytes"
    assert _get(srv, "/releases/b/1.0.0/firmware.bin.z")[1]["content-type"] == "application/octet-stream"
    status, h2, _ = _get(srv, "/channels/b/stable.json")
    assert status == 200 and h2["content-type"].startswith("application/json")
    etag = h["etag"]
    status, _, body = _get(srv, "/releases/b/1.0.0/firmware.bin", **{"If-None-Match": etag})
    assert status == 304 and body == b""
    assert _get(srv, "/releases/b/1.0.0/firmware.bin", **{"If-None-Match": '"other"'})[0] == 200


def test_etag_changes_when_the_channel_is_replaced(served: tuple[ServerThread, Path]) -> None:
    srv, feed = served
    _, h, _ = _get(srv, "/channels/b/stable.json")
    path = feed / "channels" / "b" / "stable.json"
    tmp = path.with_name(".stable.json.tmp")
    tmp.write_text('{"payloadType": "y", "longer": true}')
    os.replace(tmp, path)
    status, h2, body = _get(srv, "/channels/b/stable.json", **{"If-None-Match": h["etag"]})
    assert status == 200 and b'"y"' in body and h2["etag"] != h["etag"]


def test_range_requests(served: tuple[ServerThread, Path]) -> None:
    srv, _ = served
    full = bytes(range(256)) * 40
    status, h, body = _get(srv, "/releases/b/1.0.0/firmware.bin", Range="bytes=4096-8191")
    assert status == 206 and body == full[4096:8192]
    assert h["content-range"] == "bytes 4096-8191/10240"
    status, h, body = _get(srv, "/releases/b/1.0.0/firmware.bin", Range="bytes=10000-")
    assert status == 206 and body == full[10000:] and h["content-range"] == "bytes 10000-10239/10240"
    status, h, body = _get(srv, "/releases/b/1.0.0/firmware.bin", Range="bytes=-100")
    assert status == 206 and body == full[-100:]
    status, h, _ = _get(srv, "/releases/b/1.0.0/firmware.bin", Range="bytes=10240-")
    assert status == 416 and h["content-range"] == "bytes */10240"


def test_head(served: tuple[ServerThread, Path]) -> None:
    srv, _ = served
    status, h, body = _get(srv, "/releases/b/1.0.0/firmware.bin", method="HEAD")
    assert status == 200 and body == b"" and h["content-length"] == "10240" and "etag" in h


@pytest.mark.parametrize("target", [
    "/../secret.txt", "/releases/../../secret.txt", "/%2e%2e/secret.txt",
    "/releases/%2e%2e/%2e%2e/secret.txt",
    "/releases/b/1.0.0/..%2f..%2f..%2f..%2fsecret.txt", "/.mpota-feed.lock", "/channels/b/.stable.json.tmp",
    "/releases/b/1.0.0/firmware.bin%00.json", "/releases\\b\\1.0.0\\firmware.bin", "/nothing/here.json",
])
def test_no_way_out_of_the_feed(served: tuple[ServerThread, Path], target: str) -> None:
    srv, _ = served
    assert _raw(srv, target) in (400, 403, 404)


def test_symlinks(served: tuple[ServerThread, Path]) -> None:
    srv, _ = served
    status, _, body = _get(srv, "/escape.json")
    assert status == 403 and b"TOP-SECRET" not in body
    status, _, body = _get(srv, "/inside.json")
    assert status == 200  # a link that stays inside the feed is fine


def test_api_and_status_page_without_secret(served: tuple[ServerThread, Path]) -> None:
    srv, _ = served
    status, h, body = _get(srv, "/")  # the console needs the fleet secret (operator login)
    assert status == 503 and h["content-type"].startswith("text/html") and b"--fleet-secret" in body
    c = HttpClient(srv.url)
    assert c.request("POST", "/v1/reports", b"{}", {"Authorization": "Bearer x"})[0] == 503
    assert c.request("GET", "/v1/rollouts")[0] == 503
    assert c.request("GET", "/v1/nothing")[0] == 404
    c.close()
