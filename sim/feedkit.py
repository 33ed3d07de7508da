"""Test kit for the device updater: real signed feeds, served over loopback with faults.

- ``Keys``: a release key and a rollout key (host_tools.keys, real P-256 keys).
- ``Feed``: a static feed folder (docs/FORMATS.md "Feed layout") built with the host tools:
  ``add_release`` signs an image with ``host_tools.release.sign_release`` straight into
  ``releases/<board>/<version>/``; ``set_channel`` signs a channel document with
  ``host_tools.dsse.sign_envelope`` (any seq, rollout, expiry, key or payloadType, so tests can
  also publish what the host tools would refuse to: replays, wrong roles, expired documents).
- ``FeedServer``: a threaded HTTP/1.1 server on 127.0.0.1 (port from the OS) serving the feed
  with Range (206 + Content-Range, 416), recording every request, taking ``POST /v1/reports``
  like the rollout server, and injecting faults per path: drop the connection at byte N,
  stall, ignore Range, answer a status, send endless data, drip slowly, lie in
  Content-Length, send no Content-Length, or substitute the body.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from host_tools import dsse as hdsse
from host_tools.imagebuild import app_elf_sha256
from host_tools.keys import PrivateKey, generate_key, load_private_key
from host_tools.release import sign_release
from sim.images import build_sim_image

BOARD = "esp32-generic-4mb"
CHANNEL = "stable"
ROLLOUT_ID = "r-test-1"


class Keys:
    """Release + rollout key pairs (and a stranger key configured nowhere)."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.paths: dict[str, Path] = {}
        self.keys: dict[str, PrivateKey] = {}
        for name, role in (("release", "release"), ("rollout", "rollout"), ("stranger", "release")):
            path = folder / f"{name}.key"
            if not path.exists():
                generate_key(path, role)
            self.paths[name] = path
            self.keys[name] = load_private_key(path)

    def public_hex(self, name: str) -> str:
        return self.keys[name].public_hex

    def config_keys(self) -> dict[str, list[str]]:
        return {"release": [self.public_hex("release")], "rollout": [self.public_hex("rollout")]}


def image(version: str, size: int = 128 * 1024, chip: str = "esp32", secure_version: int = 0,
          sim_flags: str = "", stock: bool = True) -> bytes:
    """A genuine app image of about ``size`` bytes (host_tools.imagebuild) standing for release
    ``version``: built like MicroPython's own firmware (empty app_desc version and project name)
    unless ``stock`` is False."""
    code = max(0x1000, size - 0x10400)
    if stock:
        return build_sim_image(chip, "", "", secure_version, code_size=code, flags=sim_flags, build=version)
    return build_sim_image(chip, version, "mpota-app", secure_version, code_size=code, flags=sim_flags)


def factory_config(running_image: bytes, version: str) -> dict[str, str]:
    """What `mpota deploy` records for the factory firmware: its version, tied to the build."""
    return {"version": version, "version_elf": app_elf_sha256(running_image).hex()}


def sign_channel_bytes(doc: dict[str, Any], key: PrivateKey,
                       payload_type: str = hdsse.CHANNEL_PAYLOAD_TYPE) -> bytes:
    payload = json.dumps(doc, sort_keys=True).encode()
    return hdsse.envelope_bytes(hdsse.sign_envelope(payload_type, payload, key))


class Feed:
    def __init__(self, root: Path, keys: Keys, board: str = BOARD) -> None:
        self.root = root
        self.keys = keys
        self.board = board
        self.seq = 0
        root.mkdir(parents=True, exist_ok=True)

    def release_dir(self, version: str) -> Path:
        return self.root / "releases" / self.board / version

    def manifest_rel(self, version: str) -> str:
        return f"releases/{self.board}/{version}/manifest.json"

    def add_release(self, version: str, data: bytes | None = None, *, compress: bool = False,
                    window_bits: int = 10, security_version: int | None = None,
                    key: str = "release", expires: str | None = None,
                    delta_from: tuple[Path, ...] | list[Path] = (), app_dir: Path | None = None,
                    firmware: bool = True, allow_downgrade: bool = False, **image_kw: Any) -> Path:
        """Sign ``data`` (default: a fresh genuine image) as ``version`` into the feed; with
        ``app_dir`` the application files too (``firmware=False``: an app-only release)."""
        if data is None:
            data = image(version, **image_kw)
        src = self.root.parent / f"_src-{version}-{os.getpid()}.bin"
        src.write_bytes(data)
        out = self.release_dir(version)
        out.parent.mkdir(parents=True, exist_ok=True)
        sign_release(src if firmware else None, self.keys.keys[key], self.board, version, out_dir=out,
                     security_version=security_version, compress=compress, window_bits=window_bits,
                     expires=expires, force_version=True, any_role=True, delta_from=delta_from,
                     app_dir=app_dir, allow_version_downgrade=allow_downgrade)
        src.unlink()
        return out

    def image_path(self, version: str) -> Path:
        d = self.release_dir(version)
        z = d / "firmware.bin.z"
        return z if z.exists() else d / "firmware.bin"

    def manifest_doc(self, version: str) -> dict[str, Any]:
        env = json.loads((self.release_dir(version) / "manifest.json").read_bytes())
        return dict(json.loads(base64.b64decode(env["payload"])))

    def resign_manifest(self, version: str, doc: dict[str, Any], key: str = "release",
                        payload_type: str = hdsse.RELEASE_PAYLOAD_TYPE) -> None:
        """Replace a release's manifest with ``doc`` signed by ``key`` (no validation)."""
        payload = json.dumps(doc, sort_keys=True).encode()
        env = hdsse.sign_envelope(payload_type, payload, self.keys.keys[key])
        (self.release_dir(version) / "manifest.json").write_bytes(hdsse.envelope_bytes(env))

    def channel_path(self, channel: str = CHANNEL) -> Path:
        return self.root / "channels" / self.board / f"{channel}.json"

    def channel_doc(self, version: str, *, seq: int | None = None, channel: str = CHANNEL,
                    rollout: dict[str, Any] | None = None, expires: str | None = "2099-01-01T00:00:00Z",
                    manifest_sha256: str | None = None, board: str | None = None) -> dict[str, Any]:
        if seq is None:
            seq = self.seq + 1
        if manifest_sha256 is None:
            mpath = self.root / self.manifest_rel(version)
            manifest_sha256 = hashlib.sha256(mpath.read_bytes()).hexdigest()
        ro = {"id": ROLLOUT_ID, "state": "active", "groups": [], "percentage": 100.0, "window": None}
        if rollout:
            ro.update(rollout)
        doc: dict[str, Any] = {
            "_type": "channel", "spec": 1, "board": board or self.board, "channel": channel, "seq": seq,
            "release": {"version": version, "manifest": self.manifest_rel(version),
                        "manifest_sha256": manifest_sha256},
            "rollout": ro,
        }
        if expires is not None:
            doc["expires"] = expires
        return doc

    def set_channel(self, version: str, *, key: str = "rollout",
                    payload_type: str = hdsse.CHANNEL_PAYLOAD_TYPE, doc: dict[str, Any] | None = None,
                    channel: str = CHANNEL, **kw: Any) -> dict[str, Any]:
        """Sign and publish the channel document (last, like the host tools)."""
        if doc is None:
            doc = self.channel_doc(version, channel=channel, **kw)
        path = self.channel_path(channel)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(sign_channel_bytes(doc, self.keys.keys[key], payload_type))
        os.replace(tmp, path)
        self.seq = max(self.seq, int(doc.get("seq", 0)) if isinstance(doc.get("seq"), int) else 0)
        return doc


@dataclass
class Fault:
    """One fault for requests whose path ends with ``path`` (applies ``times`` times; -1 = always).

    kinds: drop (close after body byte ``at``, absolute file offset), stall (stop at ``at`` for
    ``delay`` s), ignore_range (200 + whole file), status (answer ``status``), endless (no
    Content-Length, the file then garbage forever), drip (``chunk`` bytes every ``delay`` s),
    length (declare ``length`` as Content-Length), nolength (no Content-Length, close at the end),
    body (serve ``body`` instead of the file), pace (send at ``rate`` bytes/s, a slower link),
    redirect (answer ``status`` 30x to the same file under another URL), chunked (the body in
    Transfer-Encoding: chunked, odd chunk sizes).
    """

    kind: str
    path: str
    at: int = 0
    times: int = 1
    delay: float = 0.0
    status: int = 500
    length: int = 0
    chunk: int = 64
    rate: float = 0.0
    body: bytes = b""
    hits: int = 0


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    status: int
    fault: str | None = None


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], OSError):  # a client hanging up is not news
            super().handle_error(request, client_address)


@dataclass
class FeedServer:
    root: Path
    faults: list[Fault] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/"

    @property
    def report_url(self) -> str:
        return self.url + "v1/reports"

    def close(self) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    def reset(self, root: Path | None = None) -> None:
        with self._lock:
            if root is not None:
                self.root = root
            self.faults.clear()
            self.requests.clear()
            self.reports.clear()

    def fault(self, kind: str, path: str, **kw: Any) -> Fault:
        f = Fault(kind, path, **kw)
        with self._lock:
            self.faults.append(f)
        return f

    def events(self) -> list[tuple[str, dict[str, Any]]]:
        return [(r["event"], r.get("detail") or {}) for r in self.reports]

    def _take(self, path: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if path.endswith(f.path) and (f.times < 0 or f.hits < f.times):
                    f.hits += 1
                    return f
        return None

    def _log(self, req: Request) -> None:
        with self._lock:
            self.requests.append(req)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        srv = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a: Any) -> None:
                pass

            def _status(self, code: int, body: bytes = b"", fault: str | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)
                srv._log(Request(self.command, self.path, self.headers.get("Range"), code, fault))

            def do_POST(self) -> None:  # noqa: N802
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n)
                try:
                    obj = json.loads(body)
                except ValueError:
                    self._status(400)
                    return
                items = obj.get("reports", [obj]) if isinstance(obj, dict) else []
                with srv._lock:
                    srv.reports.extend(x for x in items if isinstance(x, dict))
                self._status(200, b"{}")

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0]
                f = srv._take(path)
                if f is not None and f.kind == "status":
                    self._status(f.status, b"nope\n", "status")
                    return
                if f is not None and f.kind == "redirect":  # to the same file by another name
                    self.send_response(f.status if f.status in (301, 302, 303, 307, 308) else 302)
                    self.send_header("Location", path + "?moved=1")
                    self.send_header("Content-Length", "0")
                    self.send_header("Connection", "close")
                    self.end_headers()
                    srv._log(Request("GET", self.path, self.headers.get("Range"), 302, "redirect"))
                    return
                fs = (srv.root / path.lstrip("/")).resolve()
                if not str(fs).startswith(str(srv.root.resolve())) or not fs.is_file():
                    self._status(404, b"not found\n")
                    return
                data = f.body if f is not None and f.kind == "body" else fs.read_bytes()
                total = len(data)
                start = 0
                code = 200
                rng = self.headers.get("Range")
                if rng and not (f is not None and f.kind == "ignore_range"):
                    try:
                        a, _, b = rng.split("=", 1)[1].partition("-")
                        start = int(a)
                        end = int(b) if b else total - 1
                    except (ValueError, IndexError):
                        self._status(400)
                        return
                    if start >= total:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{total}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        srv._log(Request("GET", self.path, rng, 416))
                        return
                    code = 206
                    data = data[start: end + 1]
                else:
                    end = total - 1
                kind = f.kind if f is not None else None
                self.send_response(code)
                if code == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end}/{total}")
                if kind == "length":
                    self.send_header("Content-Length", str(f.length))  # type: ignore[union-attr]
                elif kind == "chunked":
                    self.send_header("Transfer-Encoding", "chunked")
                elif kind not in ("endless", "nolength"):
                    self.send_header("Content-Length", str(len(data)))
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                srv._log(Request("GET", self.path, rng, code, kind))
                try:
                    self._body(f, data, start)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

            def _body(self, f: Fault | None, data: bytes, start: int) -> None:
                w = self.wfile
                if f is None or f.kind in ("ignore_range", "length", "nolength", "body"):
                    w.write(data)
                elif f.kind == "chunked":  # odd chunk sizes, none aligned with the device's blocks
                    i, n = 0, 1
                    while i < len(data):
                        part = data[i: i + n]
                        w.write(b"%x\r\n" % len(part) + part + b"\r\n")
                        i += len(part)
                        n = n * 7 % 9973 + 1
                    w.write(b"0\r\n\r\n")
                elif f.kind == "pace":
                    t0 = time.monotonic()
                    for i in range(0, len(data), 8192):
                        w.write(data[i: i + 8192])
                        ahead = t0 + (i + 8192) / f.rate - time.monotonic()
                        if ahead > 0:
                            time.sleep(ahead)
                elif f.kind == "drop":
                    w.write(data[: max(0, f.at - start)])
                    w.flush()
                    self.connection.shutdown(2)
                elif f.kind == "stall":
                    w.write(data[: max(0, f.at - start)])
                    w.flush()
                    srv._stop.wait(f.delay)
                elif f.kind == "endless":
                    w.write(data)
                    junk = b"\xa5" * 4096
                    deadline = time.monotonic() + 30
                    while not srv._stop.is_set() and time.monotonic() < deadline:
                        w.write(junk)
                elif f.kind == "drip":
                    for i in range(0, len(data), f.chunk):
                        w.write(data[i: i + f.chunk])
                        w.flush()
                        time.sleep(f.delay)
                else:
                    raise AssertionError(f"unknown fault {f.kind}")

        return H


@contextmanager
def serve(root: Path) -> Iterator[FeedServer]:
    s = FeedServer(root)
    try:
        yield s
    finally:
        s.close()


def device_config(server: FeedServer, keys: Keys, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "device_id": "dev-0001", "board": BOARD, "group": "general", "channel": CHANNEL,
        "feed_url": server.url, "report_url": server.report_url, "token": "tok", "allow_http": True,
        "keys": keys.config_keys(), "timeout_ms": 1500, "retries": 3, "backoff_ms": 20,
        "max_backoff_ms": 100,
    }
    cfg.update(over)
    return cfg


# --- the simulated board (sim/board.py) as the updater tests use it ----------------------

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class RunOut:
    kind: str
    returncode: int
    stdout: str
    stderr: str
    ops: int = -1
    log: list[tuple[str, int, int]] = field(default_factory=list)
    slot: str | None = None  # the slot the bootloader started

    def result(self) -> dict[str, Any]:
        for line in reversed(self.stdout.splitlines()):
            if line.startswith("RESULT "):
                return dict(json.loads(line[7:]))
        raise AssertionError(f"no RESULT in output ({self.kind}, rc {self.returncode}):\n"
                             f"{self.stdout}\n{self.stderr}")


class Board:
    """A SimBoard in factory state (``running_image`` in ota_0, blank otadata), the device
    package installed (.mpy for MicroPython, as deployed; source for CPython), ``config`` as
    /mpota.json. Scripts get ``CONFIG`` (the config path on the board) predefined."""

    def __init__(self, simdir: Path, running_image: bytes, config: dict[str, Any],
                 device: str = "copy", **create: Any) -> None:
        from sim.board import SimBoard

        self.sim = SimBoard.create(simdir, BOARD, image=running_image, config=config, device=device, **create)
        self.dir = self.sim.simdir

    def write_slot(self, label: str, data: bytes) -> None:
        self.sim.flash_slot(label, data)

    def slot(self, label: str, n: int | None = None) -> bytes:
        return self.sim.read_slot(label, n)

    def boot_state(self) -> dict[str, Any]:
        """Which slot boots next and the otadata entries (what "the boot slot" means)."""
        return {"next": self.sim.next_boot_slot(), "otadata": self.sim.otadata()}

    def state(self) -> dict[str, Any]:
        blob = self.sim.nvs().get("mpota", {}).get("state")
        return dict(json.loads(blob)) if isinstance(blob, bytes) else {}

    def run(self, body: str, interpreter: str, heapsize: str | None = None, timeout: float = 60,
            cut: Any = None, fs_cuts: list[str] | None = None) -> RunOut:
        r = self.sim.run(_HEAD + body, interpreter, heapsize=_heap(interpreter, heapsize), timeout=timeout,
                         cut=cut, fs_cuts=fs_cuts)
        return RunOut(r.kind, r.returncode, r.stdout, r.stderr, r.ops, r.log, r.slot)

    def boot_until_settled(self, body: str, interpreter: str, timeout: float = 60) -> list[RunOut]:
        """Boot ``body`` until the board stops resetting itself (a trial that rolls back resets)."""
        runs = self.sim.boot_until_settled(_HEAD + body, interpreter=interpreter, timeout=timeout,
                                           heapsize=_heap(interpreter, None))
        return [RunOut(r.kind, r.returncode, r.stdout, r.stderr, r.ops, r.log, r.slot) for r in runs]


_HEAD = "import simboot\nCONFIG = simboot.CONFIG\n"


def _heap(interpreter: str, heapsize: str | None) -> str | None:
    return "2m" if interpreter == "micropython" and heapsize is None else heapsize


def device_kind(interpreter: str) -> str:
    """How the device package goes on a board: compiled .mpy under MicroPython (as deployed), the
    source under CPython."""
    return "mpy" if interpreter == "micropython" else "copy"


class FeedEnv:
    """One test's feed on the module's shared ``FeedServer`` and the simulated board polling it.
    ``running`` is the factory image the board boots. Tests subclass it for their own checks."""

    def __init__(self, feed: Feed, server: FeedServer, keys: Keys, tmp: Path, interp: str,
                 running: bytes) -> None:
        self.feed, self.server, self.keys, self.tmp, self.interp = feed, server, keys, tmp, interp
        self.running = running
        self.board: Board | None = None
        self.last: RunOut | None = None
        server.reset(feed.root)  # the shared server serves this feed now, with no faults

    def make_board(self, version: str | None = "1.0.0", running: bytes | None = None, name: str = "sim",
                   create: dict[str, Any] | None = None, **cfg: Any) -> Board:
        """A board in factory state, its config as `mpota deploy` writes it (``version`` None: as an
        older deploy did, without the factory version)."""
        running = self.running if running is None else running
        if version is not None:
            cfg = {**factory_config(running, version), **cfg}
        doc = device_config(self.server, self.keys, **cfg)
        self.board = Board(self.tmp / name, running, doc, device_kind(self.interp), **(create or {}))
        return self.board

    def update(self, call: str = "update(reset=False)", **run: Any) -> dict[str, Any]:
        """One Updater call on the board (``update_script``); its RESULT."""
        assert self.board is not None
        out = self.last = self.board.run(update_script(call), self.interp, **run)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.result()

    def failed_reasons(self) -> list[str]:
        return [d.get("reason", "") for e, d in self.server.events() if e == "failed"]

    def image_requests(self) -> list[Request]:
        return [r for r in self.server.requests if "/firmware.bin" in r.path]


# The device script every updater test runs: one update(), the outcome as one JSON line.
UPDATE_SCRIPT = r'''
import json
import mpota.errors as errors
from mpota.updater import Updater
def out(**kw):
    print("RESULT " + json.dumps(kw))
try:
    u = Updater.from_config(CONFIG)
    r = u.%(call)s
    if r is None:
        out(outcome="none")
    else:
        out(outcome="ok", version=r.version, slot=r.slot)
except errors.OTAError as e:
    out(outcome="error", error=type(e).__name__, code=e.code, msg=str(e))
'''


def update_script(call: str = "update(reset=False)") -> str:
    return UPDATE_SCRIPT % {"call": call}
