"""Application files with the firmware, end to end on the simulated board (both interpreters):
signed releases with an app bundle (host_tools.appbundle) served over loopback, installed by the
device updater (mpota.appfiles) into the inactive app folder, tried, confirmed or rolled back
together with the firmware (mpota.trial)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sim.feedkit import (
    Feed,
    FeedEnv,
    FeedServer,
    Keys,
    image,
    update_script,
)

RUNNING = "1.0.0"

# What main.py does first on every boot: into the active app folder (the current folder is
# first on a board's import path), its own health check (app_health.check) in the trial, then
# the app's version as the app itself reports it.
BOOT = r'''
import os, json
from mpota.trial import app_folder, boot
app = app_folder(CONFIG)
checks = []
if app:
    os.chdir(app)
    try:
        import app_health
        checks.append(("app", app_health.check))
    except ImportError:
        pass
r = boot(checks=checks, config=CONFIG, builtin=(), wdt_ms=0)
ver = None
if app:
    import app_version
    ver = app_version.VERSION
import esp32
print("RESULT " + json.dumps({"boot": r.outcome, "check": r.check, "app": app, "app_version": ver,
                              "slot": esp32.Partition(esp32.Partition.RUNNING).info()[4]}))
'''


def app_dir(root: Path, version: str, healthy: bool = True, extra: dict[str, bytes] | None = None) -> Path:
    d = root / f"app-{version}-{'ok' if healthy else 'bad'}"
    (d / "lib").mkdir(parents=True, exist_ok=True)
    (d / "app_health.py").write_text(f"def check():\n    return {healthy}\n")
    (d / "app_version.py").write_text(f"VERSION = {version!r}\n")
    (d / "lib" / "util.py").write_text("def twice(x):\n    return 2 * x\n" + "# pad\n" * 900)
    for name, data in (extra or {}).items():
        (d / name).write_bytes(data)
    return d


@pytest.fixture
def rig(interp: str, keys: Keys, server: FeedServer, tmp_path: Path) -> Rig:
    return Rig(tmp_path, keys, server, interp)


class Rig(FeedEnv):
    """A board running RUNNING from the factory, with a filesystem model (free space counted)."""

    def __init__(self, tmp: Path, keys: Keys, server: FeedServer, interp: str, name: str = "sim",
                 fs_size: int | None = None) -> None:
        super().__init__(Feed(tmp / "feed", keys), server, keys, tmp, interp, image(RUNNING))
        self.make_board(version=RUNNING, name=name, create={"fs_model": True, "fs_size": fs_size})

    def release(self, version: str, *, firmware: bool = True, healthy: bool = True, **kw: Any) -> Path:
        out = self.feed.add_release(version, app_dir=app_dir(self.tmp, version, healthy),
                                    firmware=firmware, **kw)
        self.feed.set_channel(version)
        return out

    def boot(self) -> list[dict[str, Any]]:
        """Boot until the board settles (a rollback resets); every boot's RESULT."""
        runs = self.board.boot_until_settled(BOOT, self.interp)
        out = []
        for r in runs:
            lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
            out.append(json.loads(lines[-1][7:]) if lines else {"kind": r.kind, "output": r.stderr[-2000:]})
        assert runs[-1].kind == "exit", runs[-1]
        return out

    def state(self) -> dict[str, Any]:
        return self.board.state()

    def fs(self) -> Path:
        return self.board.sim.fs

    def health_failed(self) -> list[str]:
        return [d.get("check") for e, d in self.server.events() if e == "health_failed"]


def test_firmware_and_app_then_app_only(rig: Rig) -> None:
    rig.release("1.1.0")
    assert rig.update()["outcome"] == "ok"
    p = rig.state()["pending"]
    assert p["app"]["slot"] == "a" and p.get("fw") is not False
    assert (rig.fs() / "app.a" / "lib" / "util.py").read_text().startswith("def twice")
    runs = rig.boot()
    assert runs[-1]["boot"] == "confirmed" and runs[-1]["app_version"] == "1.1.0"
    assert runs[-1]["slot"] == "ota_1" and runs[-1]["app"].endswith("/app.a")
    assert rig.state()["app"]["slot"] == "a" and rig.state()["pending"] is None

    # an app-only release: no firmware fetched, no slot switched, the trial is the next boot
    rig.server.requests.clear()
    rig.release("1.2.0", firmware=False)
    before = rig.board.boot_state()
    assert rig.update()["outcome"] == "ok"
    assert rig.image_requests() == []
    assert rig.board.boot_state()["otadata"] == before["otadata"]
    assert rig.state()["pending"]["fw"] is False
    runs = rig.boot()
    assert runs[-1]["boot"] == "confirmed" and runs[-1]["app_version"] == "1.2.0"
    assert runs[-1]["slot"] == "ota_1" and runs[-1]["app"].endswith("/app.b")
    assert rig.state()["app"]["version"] == "1.2.0"
    # up to date: the app-only release's version counts as the running one
    assert rig.update()["outcome"] == "none"


def test_a_firmware_only_release_below_the_app_installs_once(rig: Rig) -> None:
    # firmware 1.0.0 with an app-only 1.2.0 runs as 1.2.0; a firmware-only 1.1.0 may go below it
    rig.release("1.2.0", firmware=False)
    assert rig.update()["outcome"] == "ok"
    assert rig.boot()[-1]["app_version"] == "1.2.0"
    rig.feed.add_release("1.1.0", allow_downgrade=True)
    rig.feed.set_channel("1.1.0")
    assert rig.update()["outcome"] == "ok"
    runs = rig.boot()
    assert runs[-1]["boot"] == "confirmed" and runs[-1]["slot"] == "ota_1"
    assert runs[-1]["app_version"] == "1.2.0"  # a release without app files keeps the app
    # firmware 1.1.0 and app 1.2.0 run: every part of 1.1.0 is there, nothing to install again
    rig.server.requests.clear()
    assert rig.update()["outcome"] == "none"
    assert rig.image_requests() == []


def test_app_health_failure_rolls_back_app_and_firmware(rig: Rig) -> None:
    rig.release("1.1.0")
    assert rig.update()["outcome"] == "ok"
    assert rig.boot()[-1]["boot"] == "confirmed"
    rig.release("1.2.0", healthy=False)
    assert rig.update()["outcome"] == "ok"
    runs = rig.boot()
    assert runs[0]["kind"] == "reset"  # the trial of 1.2.0 failed its app check and reset
    assert set(rig.health_failed()) == {"app"}
    last = runs[-1]
    assert last["boot"] == "rolled_back"
    assert (last["slot"], last["app_version"]) == ("ota_1", "1.1.0") and last["app"].endswith("/app.a")
    st = rig.state()
    assert st["pending"] is None and st["app"]["version"] == "1.1.0"
    assert ["1.2.0", "r-test-1"] in st["failed"]
    events = [e for e, _ in rig.server.events()]
    assert "health_failed" in events and "rolled_back" in events


def test_app_only_health_failure_keeps_firmware_and_app(rig: Rig) -> None:
    rig.release("1.1.0", firmware=False)
    assert rig.update()["outcome"] == "ok"
    assert rig.boot()[-1]["app_version"] == "1.1.0"
    rig.release("1.2.0", firmware=False, healthy=False)
    assert rig.update()["outcome"] == "ok"
    runs = rig.boot()
    assert runs[0]["kind"] == "reset" and set(rig.health_failed()) == {"app"}
    assert runs[-1]["boot"] == "rolled_back" and runs[-1]["app_version"] == "1.1.0"
    assert runs[-1]["slot"] == "ota_0" and rig.board.boot_state()["next"] == "ota_0"
    assert rig.image_requests() == []


def test_tampered_file_is_refused_and_nothing_switches(rig: Rig) -> None:
    rel = rig.release("1.1.0")
    blob = bytearray((rel / "app.bin").read_bytes())
    blob[5] ^= 1
    (rel / "app.bin").write_bytes(bytes(blob))
    res = rig.update()
    assert (res["outcome"], res["code"]) == ("error", "hash_mismatch")
    st = rig.state()
    assert st["pending"] is None and st["app"] is None
    assert rig.board.boot_state()["next"] == "ota_0"
    assert rig.boot()[-1]["app"] is None


@pytest.mark.parametrize("bad", ["../boot.py", "/boot.py", "lib/../../boot.py"])
def test_path_escaping_the_root_is_refused_before_any_write(rig: Rig, bad: str) -> None:
    rig.release("1.1.0", firmware=False)
    doc = rig.feed.manifest_doc("1.1.0")
    doc["app"]["files"][0]["path"] = bad
    rig.feed.resign_manifest("1.1.0", doc)
    rig.feed.set_channel("1.1.0")
    (rig.fs() / "boot.py").write_text("# the board's own\n")
    res = rig.update()
    assert (res["outcome"], res["code"]) == ("error", "malformed")
    assert (rig.fs() / "boot.py").read_text() == "# the board's own\n"
    assert not (rig.fs() / "app.a").exists()
    assert not [r for r in rig.server.requests if r.path.endswith("/app.bin")]


def test_bundle_larger_than_free_space_is_refused_before_writing(rig: Rig, tmp_path: Path) -> None:
    small = Rig(tmp_path, rig.keys, rig.server, rig.interp, name="small")
    # a filesystem with 64 KiB left (what simfs counts: blocks per file + a metadata block each)
    used = sum(1 + -(-f.stat().st_size // 4096) for f in small.fs().rglob("*"))
    cfg = json.loads((small.board.dir / "board.json").read_text())
    cfg["fs_size"] = (used + 16) * 4096
    (small.board.dir / "board.json").write_text(json.dumps(cfg))
    src = app_dir(tmp_path, "1.1.0", extra={"table.bin": bytes(range(256)) * 400})  # 100 KB
    small.feed.add_release("1.1.0", app_dir=src, firmware=False)
    small.feed.set_channel("1.1.0")
    res = small.update()
    assert (res["outcome"], res["code"]) == ("error", "too_big"), res
    assert "filesystem has" in res["msg"]
    assert small.state()["pending"] is None
    assert not list((small.fs() / "app.a").iterdir())
    assert not [r for r in small.server.requests if r.path.endswith("/app.bin")]


def _app_files(feed: Feed, version: str) -> dict[str, bytes]:
    """The files of a release's app bundle, by path, from the feed's bundle file."""
    m = feed.manifest_doc(version)["app"]
    blob = (feed.release_dir(version) / m["url"]).read_bytes()
    out, pos = {}, 0
    for f in m["files"]:
        out[f["path"]] = blob[pos:pos + f["size"]]
        pos += f["size"]
    return out


def _folder_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_power_cut_at_every_file_operation_keeps_one_complete_app(tmp_path: Path, keys: Keys,
                                                                  server: FeedServer, interp: str) -> None:
    import shutil

    from sim.board import SimBoard

    rig = Rig(tmp_path, keys, server, interp, name="ref")
    for v in ("1.1.0", "1.2.0"):  # 1.1.0 in app.a, then 1.2.0 in app.b, both confirmed
        rig.release(v, firmware=False)
        assert rig.update()["outcome"] == "ok"
        assert rig.boot()[-1]["app_version"] == v
    rig.release("1.3.0", firmware=False)  # goes into app.a: its old files are removed first
    files = {v: _app_files(rig.feed, v) for v in ("1.2.0", "1.3.0")}
    base = tmp_path / "base"
    shutil.copytree(rig.board.dir, base)
    # the operations of an uninterrupted update, then of its trial boot (file operations
    # under /app count, with flash writes, erases and NVS commits)
    ref = rig.update(fs_cuts=["/app"])
    assert ref["outcome"] == "ok"
    assert rig.board.sim.last is not None
    upd_log = rig.board.sim.last.log
    head = "import simboot\nCONFIG = simboot.CONFIG\n"
    heap = "2m" if interp == "micropython" else None
    trial = rig.board.sim.run(head + BOOT, interp, heapsize=heap, fs_cuts=["/app"])
    assert trial.kind == "exit"
    assert sum(1 for k, _, _ in upd_log if k == "file") >= 10
    points = [("update", n) for n in range(rig.board.sim.last.boot_ops + 1, len(upd_log) + 1)]
    points += [("trial", n) for n in range(trial.boot_ops + 1, len(trial.log) + 1)]
    seen = set()
    for phase, n in points:
        d = tmp_path / f"cut-{phase}-{n}"
        shutil.copytree(base, d)
        b = SimBoard(d)
        if phase == "trial":
            assert b.run(head + update_script(), interp, heapsize=heap).kind == "exit"
        cut = b.run(head + (update_script() if phase == "update" else BOOT), interp, heapsize=heap,
                    cut=n, fs_cuts=["/app"])
        assert cut.kind == "powercut", (phase, n, cut)
        runs = b.boot_until_settled(head + BOOT, interpreter=interp, heapsize=heap)
        assert runs[-1].kind == "exit", (phase, n, runs[-1])
        res = json.loads([ln for ln in runs[-1].stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
        ver = res["app_version"]
        assert ver in files, (phase, n, res)
        # the folder the board imports holds exactly one release's files, every byte
        active = Path(res["app"]) if interp == "cpython" else d / "fs" / res["app"].lstrip("/")
        assert _folder_files(active) == files[ver], (phase, n, ver)
        st = json.loads(b.nvs()["mpota"]["state"])
        assert st["pending"] is None and st["app"]["version"] == ver
        seen.add(ver)
        shutil.rmtree(d)
    assert seen == {"1.2.0", "1.3.0"}  # cuts early keep the old app, late ones the new
