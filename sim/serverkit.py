"""The rollout server in a background thread (tests, examples, the demo), and clients that talk to
it as devices and operators do.

``ServerThread(config, publisher)`` starts the aiohttp app on 127.0.0.1 with a port chosen by the
OS; ``.url`` is its base URL; ``.stop()`` (or leaving the ``with`` block) shuts it down cleanly.
``ReportingDevice`` is a device reduced to its reports: it posts them over real HTTP
(http.client, keep-alive) with the device token, and runs no device code (for that, sim.board).
``publish_test_release`` puts a signed release of a built image into a feed; ``rollout_feed``
makes the feed most server tests start from and ``rollout_server`` serves it; ``register`` brings
``ReportingDevice``s into the fleet.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from host_tools.channel import ChannelDoc
from host_tools.fleet import device_token
from host_tools.keys import PublicKey
from host_tools.server.app import MpotaServer, ServerConfig, make_publisher, start_site
from host_tools.server.auth import operator_token
from host_tools.server.client import ServerClient
from host_tools.server.orchestrator import ChannelPublisher
from host_tools.server.store import Store


class ServerThread:
    def __init__(self, config: ServerConfig, publisher: ChannelPublisher | None = None,
                 host: str = "127.0.0.1", store: Store | None = None) -> None:
        self.server = MpotaServer(config, publisher, store)
        self.host = host
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="mpota-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("server did not start")
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # surfaced to the starting thread
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runner, self.url = await start_site(self.server, self.host, 0)
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def device_log(self, device_id: str, column: str, detail: tuple[str, ...]) -> str:
        """The reports stored for ``device_id``, a line each: seq, event, version, ``column`` and
        the ``detail`` keys the report has."""
        lines = []
        for e in self.server.store.device_events(device_id):
            d = e["detail"] or {}
            extra = " ".join(f"{k}={d[k]}" for k in detail if k in d)
            lines.append(f"  #{e['seq']:<3} {e['event']:<13} version {e['version'] or '-':<6} {column} "
                         f"{e[column] or '-':<6} {extra}".rstrip())
        return "\n".join(lines)

    def __enter__(self) -> ServerThread:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


class HttpClient:
    """A tiny keep-alive JSON client over http.client (one connection, reconnects when dropped)."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(base_url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.timeout = timeout
        self._conn: http.client.HTTPConnection | None = None

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=body, headers=headers or {})
                resp = self._conn.getresponse()
                data = resp.read()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
            except (ConnectionError, http.client.HTTPException):
                self._conn.close()
                self._conn = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def operator_call(url: str, secret: bytes, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    """One operator API call, as `mpota rollout` makes it: (status, the decoded JSON answer)."""
    return ServerClient(url, operator_token(secret)).send(method, path, body)


class ReportingDevice:
    """A device as the server sees it, reduced to its reports: id, group, token, a growing seq."""

    def __init__(self, base_url: str, secret: bytes, device_id: str, group: str | None = None,
                 board: str = "esp32-generic-4mb", version: str = "1.0.0", slot: str = "ota_0") -> None:
        self.base_url = base_url
        self.client = HttpClient(base_url)
        self.device_id = device_id
        self.group = group
        self.board = board
        self.version = version
        self.slot = slot
        self.token = device_token(secret, device_id)
        self.seq = 0

    def build(self, event: str, rollout: str | None = None, target: str | None = None,
              **detail: Any) -> dict[str, Any]:
        self.seq += 1
        return {"device_id": self.device_id, "seq": self.seq, "event": event, "uptime_ms": 1000 * self.seq,
                "board": self.board, "group": self.group, "version": self.version, "slot": self.slot,
                "rollout": rollout, "target": target, "detail": detail}

    def post(self, payload: object, token: str | None = None,
             device_header: str | None = None) -> tuple[int, dict[str, Any]]:
        headers = {"Content-Type": "application/json",
                   "Authorization": f"Bearer {self.token if token is None else token}",
                   "X-Mpota-Device": self.device_id if device_header is None else device_header}
        status, _, data = self.client.request("POST", "/v1/reports", json.dumps(payload).encode(), headers)
        try:
            answer = json.loads(data) if data else {}
        except ValueError:
            answer = {"raw": data.decode("utf-8", "replace")}
        return status, answer

    def register(self, secret: bytes, group: str | None = None, channel: str | None = None) -> int:
        """Register the device with the operator token (its group is then the operator's)."""
        body = {"device_id": self.device_id, "board": self.board, "group": group or self.group,
                "channel": channel}
        return operator_call(self.base_url, secret, "POST", "/v1/devices", body)[0]

    def report(self, event: str, rollout: str | None = None, target: str | None = None,
               **detail: Any) -> int:
        return self.post(self.build(event, rollout, target, **detail))[0]

    def update(self, rollout: str, target: str, outcome: str = "confirmed",
               how: dict[str, Any] | None = None) -> list[int]:
        """The reports of one update attempt: downloading..installed, then the outcome. ``how``:
        the detail a delta install adds to downloaded and installed (delta, bytes, full_bytes)."""
        how = how or {}
        codes = [self.report("downloading", rollout, target, progress=0),
                 self.report("downloaded", rollout, target, **how),
                 self.report("installed", rollout, target, **how)]
        if outcome == "confirmed":
            self.version = target
            self.slot = "ota_1" if self.slot == "ota_0" else "ota_0"
            codes.append(self.report("confirmed", rollout, target))
        elif outcome == "rolled_back":
            codes.append(self.report("health_failed", rollout, target, check="wifi"))
            codes.append(self.report("rolled_back", rollout, target, reason="health_check"))
        elif outcome == "failed":
            codes.append(self.report("failed", rollout, target, reason="hash_mismatch"))
        elif outcome != "stall":
            raise ValueError(outcome)
        return codes

    def close(self) -> None:
        self.client.close()


def publish_test_release(feed_dir: str | Path, work_dir: str | Path, key_path: str | Path, version: str,
                         board: str = "esp32-generic-4mb", channel: str | None = None,
                         security_version: int = 0, sim_flags: str = "", stock: bool = False) -> Path:
    """Build a genuine app image, sign it as a release and copy it into the feed.

    ``stock``: built like MicroPython's own firmware (no version or project name in its app
    description; the release version is only in the signed manifest).

    With ``channel`` the channel document is also pointed at it (a full release); without, only
    the release folder lands (what ``mpota rollout start`` needs). Returns the release folder.
    """
    from host_tools import feed, release
    from host_tools.boards import load_board
    from host_tools.keys import load_private_key
    from sim.images import build_sim_image

    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    chip = load_board(board).chip
    image = work / f"app-{version}.bin"
    image.write_bytes(build_sim_image(chip, "" if stock else version, "" if stock else "mpota-test",
                                      security_version, code_size=0x4000, flags=sim_flags, build=version))
    key = load_private_key(key_path)
    info = release.sign_release(image, key, board, version, out_dir=work / f"release-{version}",
                                security_version=security_version, any_role=True)
    if channel is not None:
        feed.publish_release(info.out_dir, feed_dir, channel, key, any_role=True, allow_downgrade=True)
    else:
        dest = Path(feed_dir) / "releases" / board / version
        dest.mkdir(parents=True, exist_ok=True)
        for f in (info.image_path, info.manifest_path):
            assert f is not None
            (dest / f.name).write_bytes(f.read_bytes())
    return info.out_dir


def rollout_feed(root: Path, board: str = "esp32-generic-4mb", old: dict[str, Any] | None = None,
                 new: dict[str, Any] | None = None) -> tuple[Path, Path]:
    """A rollout key (role both) at ``root/rollout.pem`` and a feed at ``root/feed``: 1.0.0 on the
    stable channel, 1.1.0 in the feed ready to roll out (``old``/``new``: more arguments for
    ``publish_test_release``). Returns (feed, key)."""
    from host_tools.keys import generate_key

    key, feed = root / "rollout.pem", root / "feed"
    generate_key(key, "both")
    publish_test_release(feed, root / "work", key, "1.0.0", board, channel="stable", **(old or {}))
    publish_test_release(feed, root / "work", key, "1.1.0", board, **(new or {}))
    return feed, key


@contextmanager
def rollout_server(root: Path, secret: bytes, tick_s: float = 0.1, **config: Any) -> Iterator[ServerThread]:
    """The rollout server over a fresh ``rollout_feed(root)``, on SQLite in ``root``, publishing
    channel documents with its key."""
    feed, key = rollout_feed(root)
    cfg = ServerConfig(feed_dir=feed, db_url=f"sqlite:///{root / 'db.sqlite'}", fleet_secret=secret,
                       tick_s=tick_s, **config)
    with ServerThread(cfg, make_publisher(feed, str(key))) as srv:
        yield srv


def register(url: str, secret: bytes, devices: Iterable[tuple[str, str]],
             heartbeat: bool = False) -> list[ReportingDevice]:
    """``ReportingDevice``s for (device id, group) pairs, registered by the operator as
    `mpota deploy` does; with ``heartbeat`` each then reports healthy once."""
    out = []
    for name, group in devices:
        d = ReportingDevice(url, secret, name, group)
        assert d.register(secret) == 200
        if heartbeat:
            assert d.report("heartbeat", health="OK") == 200
        out.append(d)
    return out


def fetch_channel(url: str, pub: PublicKey, board: str = "esp32-generic-4mb",
                  channel: str = "stable") -> ChannelDoc:
    """The channel document as a device gets it: over HTTP, its signature checked with ``pub``."""
    c = HttpClient(url)
    status, _, data = c.request("GET", f"/channels/{board}/{channel}.json")
    c.close()
    assert status == 200, status
    return ChannelDoc.from_envelope_bytes(data, [pub])
