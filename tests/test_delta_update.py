"""A delta update end to end: a simulated board (CPython and the MicroPython unix port) running 1.0.0
is offered 1.1.0 with a patch from 1.0.0 in its signed manifest; it downloads the patch only and
rebuilds a byte-identical image from its running slot, with the same read-back, set_boot and pending
record as a full update. Every problem with the patch falls back to the full image in the same
update() and says so (detail.delta = "fallback: <reason>"); the running slot is never written."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path
from typing import Any

import pytest

from host_tools.delta import detools_patch
from host_tools.imagebuild import build_app_image
from host_tools.release import compress_image, sign_release
from sim.feedkit import (
    BOARD,
    Feed,
    FeedEnv,
    FeedServer,
    Keys,
    update_script,
)

RUNNING, NEW = "1.0.0", "1.1.0"


def code(release: int) -> bytes:
    rnd = random.Random(42)
    blob = bytearray(rnd.randbytes(96 * 1024))
    for r in range(release):
        e = random.Random(r)
        for _ in range(30):
            at = e.randrange(len(blob) - 64)
            blob[at:at + 12] = e.randbytes(12)
    return bytes(blob)


def build(version: str, release: int) -> bytes:
    return build_app_image("esp32", "", "", 0, code=code(release), build=version)


class Rig(FeedEnv):
    def __init__(self, keys: Keys, server: FeedServer, tmp: Path, interp: str, compress: bool = True) -> None:
        super().__init__(Feed(tmp / "feed", keys), server, keys, tmp, interp, build(RUNNING, 1))
        self.new = build(NEW, 2)
        self.sign(RUNNING, self.running, compress)
        self.sign(NEW, self.new, compress, [self.feed.release_dir(RUNNING)])
        self.feed.set_channel(NEW)

    def sign(self, version: str, data: bytes, compress: bool, bases: list[Path] | None = None) -> None:
        src = self.tmp / f"app-{version}.bin"
        src.write_bytes(data)
        sign_release(src, self.keys.keys["release"], BOARD, version, out_dir=self.feed.release_dir(version),
                     compress=compress, force_version=True, any_role=True, delta_from=bases or [])

    def run(self, running: bytes | None = None) -> dict[str, Any]:
        self.make_board(version=RUNNING, running=running)
        return self.update()

    def requests(self, part: str) -> int:
        return len([r for r in self.server.requests if part in r.path])

    def detail(self, event: str) -> dict[str, Any]:
        return [d for e, d in self.server.events() if e == event][-1]

    def assert_installed(self, running: bytes | None = None) -> None:
        b = self.board
        running = self.running if running is None else running
        assert b.slot("ota_1", len(self.new)) == self.new  # byte-identical
        assert b.boot_state()["next"] == "ota_1" and b.sim.ota_state("ota_1") == "NEW"
        assert b.sim.verify_slot("ota_1") is None
        assert b.slot("ota_0", len(running)) == running  # only ever read
        p = b.state()["pending"]
        assert p["version"] == NEW and p["slot"] == "ota_1" and "phase" not in p
        assert "failed" not in [e for e, _ in self.server.events()]

    def patch_path(self) -> Path:
        return self.feed.release_dir(NEW) / f"delta-from-{RUNNING}.patch.z"

    def resign(self, edit: Any) -> None:
        doc = self.feed.manifest_doc(NEW)
        edit(doc["image"]["deltas"][0])
        self.feed.resign_manifest(NEW, doc)
        self.feed.set_channel(NEW)


@pytest.fixture
def rig(interp: str, keys: Keys, server: FeedServer, tmp_path: Path) -> Rig:
    return Rig(keys, server, tmp_path, interp)


def test_patch_applied(rig: Rig) -> None:
    res = rig.run()
    assert res["outcome"] == "ok", res
    rig.assert_installed()
    assert rig.requests("delta-from-1.0.0") == 1 and rig.requests("firmware.bin") == 0
    d = rig.detail("installed")
    assert d["delta"] == "applied" and d["bytes"] == rig.patch_path().stat().st_size
    assert d["bytes"] < d["full_bytes"]


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))


def _other_base_patch(rig: Rig) -> None:
    """A well-formed patch from another image, listed (and signed) for the running one."""
    other = build("0.9.0", 5)
    p = rig.patch_path()
    p.write_bytes(compress_image(detools_patch(other, rig.new), 10))
    rig.resign(lambda d: d.update(size=p.stat().st_size,
                                  hash="sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()))


def _hostile_patch(rig: Rig, raw: bytes) -> None:
    p = rig.patch_path()
    p.write_bytes(compress_image(raw, 10))
    rig.resign(lambda d: d.update(size=p.stat().st_size,
                                  hash="sha256:" + hashlib.sha256(p.read_bytes()).hexdigest()))


def _reads_past_base(rig: Rig) -> None:
    from detools.common import pack_size

    n, b = len(rig.new), len(rig.running)
    # one extra byte, jump to 10 bytes before the base's end, then a diff over the rest
    _hostile_patch(rig, b"\0" + pack_size(n) + pack_size(0) + pack_size(0) + pack_size(1) + b"x"
                   + pack_size(b - 10) + pack_size(n - 1) + b"\0" * (n - 1) + pack_size(0) + pack_size(0))


def _truncated(rig: Rig) -> None:
    raw = detools_patch(rig.running, rig.new)
    _hostile_patch(rig, raw[: len(raw) * 2 // 3])


@pytest.mark.parametrize("attack, reason", [
    (lambda rig: _flip(rig.patch_path()), "fallback: hash_mismatch"),      # bytes changed on the wire
    (_other_base_patch, "fallback: hash_mismatch"),                        # output hashes wrong
    (_reads_past_base, "fallback: bad_patch"),                             # a read outside the base
    (_truncated, "fallback: bad_patch"),                                   # length does not add up
    (lambda rig: rig.patch_path().unlink(), "fallback: http_status"),      # 404
])
def test_bad_patch_falls_back_to_the_full_image(rig: Rig, attack: Any, reason: str) -> None:
    attack(rig)
    res = rig.run()
    assert res["outcome"] == "ok", res
    rig.assert_installed()
    assert rig.requests("firmware.bin") == 1
    assert rig.detail("installed")["delta"] == reason
    assert rig.detail("downloaded")["delta"] == reason


def test_base_mismatch_takes_the_full_image(rig: Rig) -> None:
    other = build(RUNNING, 3)  # runs another build than the patch's base
    res = rig.run(running=other)
    assert res["outcome"] == "ok", res
    rig.assert_installed(running=other)
    assert rig.requests("delta-from") == 0 and rig.requests("firmware.bin") == 1
    assert rig.detail("installed")["delta"] == "fallback: base"


SEED_DL = r'''
import json
from mpota.state import State, open_store
s = State(open_store(simboot.ROOT or "/"))
s["dl"] = json.loads(%r)
s.save()
print("RESULT {}")
'''


@pytest.mark.parametrize("left", ["one block", "most"])
def test_a_half_done_plain_download_against_a_patch(keys: Keys, server: FeedServer, tmp_path: Path,
                                                    interp: str, left: str) -> None:
    """A plain download cut by an earlier run: its rest is fetched (Range) when that is fewer bytes
    than the patch; else the patch is applied and the record it overwrites is dropped."""
    rig = Rig(keys, server, tmp_path, interp, compress=False)
    patch = next(rig.feed.release_dir(NEW).glob("delta-from-*"))
    size = len(rig.new)
    done = (size // 4096) * 4096 if left == "one block" else 4096
    assert (size - done <= patch.stat().st_size) == (left == "one block")
    rig.make_board(version=RUNNING)
    rig.board.write_slot("ota_1", rig.new[:done])
    h = hashlib.sha256(rig.new).hexdigest()
    rec = {"version": NEW, "slot": "ota_1", "hash": h, "transfer_hash": h, "offset": done,
           "transfer_offset": done}
    import json

    assert rig.board.run(SEED_DL % json.dumps(rec), interp).returncode == 0
    out = rig.board.run(update_script(), interp)
    assert out.result()["outcome"] == "ok", out.stdout + out.stderr
    rig.assert_installed()
    d = rig.detail("installed")
    full = [r for r in server.requests if r.path.endswith("firmware.bin")]
    if left == "one block":
        assert d["delta"] == "fallback: resume" and rig.requests("delta-from") == 0
        assert [r.range for r in full] == [f"bytes={done}-"]
    else:
        assert d["delta"] == "applied" and not full
    assert rig.board.state().get("dl") is None


# Counts the bytes read from the running slot (ota_0) by the update that follows.
COUNT_READS = r'''
import esp32
_rb = esp32.Partition.readblocks
READ = [0]
def _count(self, block, buf, offset=0):
    if self.info()[4] == "ota_0":
        READ[0] += len(buf)
    return _rb(self, block, buf, offset)
esp32.Partition.readblocks = _count
'''


def test_the_running_slot_is_hashed_once_for_several_patches(keys: Keys, server: FeedServer, tmp_path: Path,
                                                             interp: str) -> None:
    """Patches from three releases (two base sizes), the running one listed last: one pass over the
    slot finds its patch, then the patch reads the base about once more."""
    rig = Rig(keys, server, tmp_path, interp)
    for i in range(2):
        bigger = code(10 + i) + code(0)[:4096 * i + 100]
        rig.sign(f"0.{i}.0", build_app_image("esp32", "", "", 0, code=bigger, build=f"0.{i}.0"), True)
    import shutil

    shutil.rmtree(rig.feed.release_dir(NEW))
    rig.sign(NEW, rig.new, True, [rig.feed.release_dir(v) for v in ("0.0.0", "0.1.0", RUNNING)])
    rig.feed.set_channel(NEW)
    rig.make_board(version=RUNNING)
    out = rig.board.run(COUNT_READS + update_script() + 'print("READ", READ[0])\n', interp)
    assert out.result()["outcome"] == "ok", out.stdout + out.stderr
    rig.assert_installed()
    assert rig.detail("installed")["delta"] == "applied"
    assert rig.requests("delta-from-1.0.0") == 1 and rig.requests("delta-from-0.") == 0
    read = int(out.stdout.split("READ ")[1].split()[0])
    # hashing each of the three bases from the slot would read it three times before the patch
    assert read < 2.3 * len(rig.running), (read, len(rig.running))
