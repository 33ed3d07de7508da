"""Hostile-feed corpus: what TUF says an updater must survive, against the real device code.

Each case builds its own signed feed (sim/feedkit.py: host-tools releases and channel documents,
re-signed or tampered as the attack needs) under one loopback server (faults injected per path),
boots a simulated board on v1.0.0 (sim/board.py) and lets the real updater (``Updater.update()``)
at it, under CPython and the MicroPython unix port. For every attack the board must:

- refuse with the typed error whose reason code the table names;
- never switch slot: the otadata and the boot slot are what they were, the running slot's bytes
  are untouched and the next boot starts v1.0.0 again;
- report it: a ``failed`` report carrying that reason code reaches the collector.

A few faults are not attacks but weather (a dropped connection, a server that ignores Range):
there the board must get through and install exactly the signed image.

Patch attacks (the manifest offers a patch from the running image, ``image.deltas``): a patch that
reads outside the base, overflows or lies about a length, was made for another base or another
chip, is truncated, has bytes after its end, or rebuilds an image that hashes wrong. There the
board must fall back to the full image in the same update: install exactly the signed image,
the running slot only ever read, and say so (``detail.delta = "fallback: <reason>"`` on its
``installed`` report). When the full image is bad too, it refuses as above.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from detools.common import pack_size

from host_tools.delta import detools_patch
from host_tools.imagebuild import build_app_image
from host_tools.release import compress_image
from sim import feedkit
from sim.board import SimBoard

VERSION = "1.1.0"
BOARD = feedkit.BOARD
OTHER_BOARD = "esp32s3-generic-8mb"
IMG = 72 * 1024
# The board's factory image (SimBoard's default, given explicitly: the patch cases patch it) and,
# for those cases, v1.1.0 as its next build: the same code with another version.
RUNNING = build_app_image("esp32", "1.0.0", "mpota-app", 0)
PATCHED = build_app_image("esp32", VERSION, "mpota-app", 0, build="1.0.0")

UPDATE = r'''
import simboot, json
CONFIG = simboot.ROOT + "/mpota.json"
import mpota.errors as errors
from mpota.updater import Updater
try:
    o = Updater.from_config(CONFIG).update()
    print("RESULT " + json.dumps({"outcome": "none" if o is None else "installed"}))
except errors.OTAError as e:
    print("RESULT " + json.dumps({"outcome": "error", "error": type(e).__name__, "code": e.code,
                                  "msg": str(e)}))
'''

# Sets the board's persistent state through the device's own state module (what an earlier
# update would have left): {"seq": {...}} replay memory, {"floor": N} security floor.
SEED = r'''
import simboot, json, sys
from mpota.state import State, open_store
s = State(open_store(simboot.ROOT or "/"))
for k, v in json.loads(sys.argv[1]).items():
    s[k] = v
s.save()
print("SEEDED")
'''


@dataclass
class Ctx:
    name: str
    root: Path
    keys: feedkit.Keys
    server: feedkit.FeedServer
    feed: feedkit.Feed = field(init=False)
    config: dict[str, Any] = field(default_factory=dict)   # config overrides
    seed: dict[str, Any] | None = None                     # device state before the update
    signed: bytes = b""                                    # the image an install must write

    def __post_init__(self) -> None:
        self.feed = feedkit.Feed(self.root / self.name, self.keys)

    @property
    def prefix(self) -> str:
        return f"/{self.name}/"

    def release(self, version: str = VERSION, data: bytes | None = None, **kw: Any) -> Path:
        kw.setdefault("compress", True)
        data = feedkit.image(version, size=IMG) if data is None else data
        if version == VERSION:
            self.signed = data
        return self.feed.add_release(version, data, **kw)

    def delta_release(self, **kw: Any) -> Path:
        """v1.1.0 with a patch from the running v1.0.0 (a release of the board's own image) and
        the channel offering it; returns the patch file."""
        base = self.feed.add_release("1.0.0", RUNNING, compress=True)
        self.release(data=PATCHED, delta_from=[base], **kw)
        self.feed.set_channel(VERSION)
        return self.feed.release_dir(VERSION) / self.feed.manifest_doc(VERSION)["image"]["deltas"][0]["url"]

    def patch_url_path(self) -> str:
        return self.prefix + str(self.feed.release_dir(VERSION).relative_to(self.feed.root)) + "/" + \
            self.feed.manifest_doc(VERSION)["image"]["deltas"][0]["url"]

    def standard(self, **kw: Any) -> None:
        self.release(**kw)
        self.feed.set_channel(VERSION)

    def image_file(self, version: str = VERSION) -> Path:
        return self.feed.image_path(version)

    def image_url_path(self, version: str = VERSION) -> str:
        return self.prefix + str(self.image_file(version).relative_to(self.feed.root))

    def manifest_file(self, version: str = VERSION) -> Path:
        return self.feed.release_dir(version) / "manifest.json"

    def repin(self, version: str = VERSION, **kw: Any) -> None:
        """Re-sign the channel so it pins the manifest file as it is now (isolates a manifest attack)."""
        self.feed.set_channel(version, seq=self.feed.seq + 1, **kw)

    def fault(self, kind: str, path: str, **kw: Any) -> None:
        self.server.fault(kind, path, **kw)


def _flip(path: Path, offset: int, bit: int = 0x10) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= bit
    path.write_bytes(bytes(data))


def _resign_envelope_sig(path: Path) -> None:
    env = json.loads(path.read_bytes())
    sig = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
    sig[5] ^= 0x01
    env["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    path.write_bytes(json.dumps(env).encode())


def _manifest_edit(c: Ctx, edit: Callable[[dict[str, Any]], None], key: str = "release",
                   payload_type: str | None = None) -> None:
    doc = c.feed.manifest_doc(VERSION)
    edit(doc)
    kw: dict[str, Any] = {"key": key}
    if payload_type:
        kw["payload_type"] = payload_type
    c.feed.resign_manifest(VERSION, doc, **kw)
    c.repin()


# ---------------------------------------------------------------------------- the attacks
def bad_signature_channel(c: Ctx) -> None:
    c.standard()
    _resign_envelope_sig(c.feed.channel_path())


def bad_signature_manifest(c: Ctx) -> None:
    c.release()
    _resign_envelope_sig(c.manifest_file())
    c.feed.set_channel(VERSION)


def unknown_key_channel(c: Ctx) -> None:
    c.release()
    c.feed.set_channel(VERSION, key="stranger")


def unknown_key_manifest(c: Ctx) -> None:
    c.release()
    _manifest_edit(c, lambda d: None, key="stranger")


def wrong_role_channel(c: Ctx) -> None:  # signed by the release key: not a rollout key
    c.release()
    c.feed.set_channel(VERSION, key="release")


def wrong_role_manifest(c: Ctx) -> None:  # signed by the rollout key: not a release key
    c.release()
    _manifest_edit(c, lambda d: None, key="rollout")


def wrong_payload_type_channel(c: Ctx) -> None:
    c.release()
    c.feed.set_channel(VERSION, payload_type="application/vnd.mpota.release+json")


def wrong_payload_type_manifest(c: Ctx) -> None:
    c.release()
    _manifest_edit(c, lambda d: None, payload_type="application/vnd.mpota.channel+json")


def manifest_not_pinned(c: Ctx) -> None:
    c.release()
    c.feed.set_channel(VERSION, manifest_sha256="0" * 64)


def older_manifest_replayed(c: Ctx) -> None:
    # a validly signed older manifest served where the pinned one should be
    c.release("1.0.5")
    c.release()
    c.feed.set_channel(VERSION)
    c.manifest_file().write_bytes(c.manifest_file("1.0.5").read_bytes())


def replayed_lower_seq(c: Ctx) -> None:
    c.release()
    c.feed.set_channel(VERSION, seq=7)
    c.seed = {"seq": {feedkit.CHANNEL: 8}}


def older_channel_replayed(c: Ctx) -> None:
    # the board accepted seq 20 (paused); an attacker serves the earlier, validly signed seq 19
    c.release()
    older = feedkit.sign_channel_bytes(c.feed.channel_doc(VERSION, seq=19), c.keys.keys["rollout"])
    c.feed.set_channel(VERSION, seq=20, rollout={"state": "paused"})
    c.feed.channel_path().write_bytes(older)
    c.seed = {"seq": {feedkit.CHANNEL: 20}}


def expired_channel(c: Ctx) -> None:
    c.release()
    c.feed.set_channel(VERSION, expires="2021-01-01T00:00:00Z")


def expired_manifest(c: Ctx) -> None:
    c.release()
    _manifest_edit(c, lambda d: d.update(created="2020-01-01T00:00:00Z", expires="2021-01-01T00:00:00Z"))


def channel_for_another_board(c: Ctx) -> None:
    c.release()
    c.feed.set_channel(VERSION, board=OTHER_BOARD)


def manifest_for_another_board(c: Ctx) -> None:
    c.release()
    _manifest_edit(c, lambda d: d.update(target_hardware=[OTHER_BOARD]))


def manifest_for_another_chip(c: Ctx) -> None:
    c.release()
    _manifest_edit(c, lambda d: d.update(chip="esp32s3"))


def channel_points_at_another_boards_manifest(c: Ctx) -> None:
    # a genuine, correctly signed release for the ESP32-S3 board, pinned by our board's channel
    other = feedkit.Feed(c.feed.root, c.keys, board=OTHER_BOARD)
    other.add_release(VERSION, feedkit.image(VERSION, size=IMG, chip="esp32s3"))
    rel = other.manifest_rel(VERSION)
    pin = hashlib.sha256((c.feed.root / rel).read_bytes()).hexdigest()
    doc = c.feed.channel_doc(VERSION, manifest_sha256=pin)
    doc["release"]["manifest"] = rel
    c.feed.set_channel(VERSION, doc=doc)


def image_for_another_chip(c: Ctx) -> None:
    # a signed manifest with the right hash and size of the bytes served, but those bytes are an
    # ESP32-S3 image (the release key signed the wrong file): refused at the first block
    c.release(compress=False)
    s3 = feedkit.image(VERSION, size=IMG, chip="esp32s3")
    c.image_file().write_bytes(s3)
    digest = "sha256:" + hashlib.sha256(s3).hexdigest()
    _manifest_edit(c, lambda d: d["image"].update(size=len(s3), hash=digest, transfer_size=len(s3),
                                                  transfer_hash=digest))


def mixed_versions_channel_manifest(c: Ctx) -> None:
    c.release("1.2.0")
    doc = c.feed.channel_doc("1.2.0")
    doc["release"]["version"] = VERSION  # the channel says 1.1.0, the pinned manifest is 1.2.0
    c.feed.set_channel(VERSION, doc=doc)


def lower_security_version(c: Ctx) -> None:
    c.release(security_version=2)
    c.feed.set_channel(VERSION)
    c.seed = {"floor": 3}


def not_newer(c: Ctx) -> None:
    c.release("0.9.0")
    c.feed.set_channel("0.9.0")


def oversize_image(c: Ctx) -> None:
    c.release()
    _manifest_edit(c, lambda d: d["image"].update(size=0x200000))


def oversize_transfer(c: Ctx) -> None:
    c.release()
    _manifest_edit(c, lambda d: d["image"].update(transfer_size=d["image"]["size"] * 4))


def image_hash_mismatch(c: Ctx) -> None:
    c.release(compress=False)
    wrong = "sha256:" + "ab" * 32
    _manifest_edit(c, lambda d: d["image"].update(hash=wrong, transfer_hash=wrong))


def bit_flip_in_image(c: Ctx) -> None:
    c.standard(compress=False)
    _flip(c.image_file(), 40000)


def bit_flip_in_compressed_image(c: Ctx) -> None:
    c.standard()
    _flip(c.image_file(), 30000)


def compressed_stream_ends_early(c: Ctx) -> None:
    # a signed transfer (size and hash its own) whose deflate data stops before the image does
    c.standard()
    path = c.image_file()
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    wire = path.read_bytes()
    _manifest_edit(c, lambda d: d["image"].update(
        transfer_size=len(wire), transfer_hash="sha256:" + hashlib.sha256(wire).hexdigest()))


def bit_flip_in_last_byte(c: Ctx) -> None:
    c.standard(compress=False)
    _flip(c.image_file(), -1, 0x01)


def bad_header_first_block(c: Ctx) -> None:
    c.standard(compress=False)
    _flip(c.image_file(), 0, 0x01)  # magic 0xE9 -> 0xE8: refused before anything is written


def truncated_transfer(c: Ctx) -> None:
    c.standard(compress=False)
    f = c.image_file()
    f.write_bytes(f.read_bytes()[:-5000])


def longer_than_declared(c: Ctx) -> None:
    c.standard(compress=False)
    f = c.image_file()
    f.write_bytes(f.read_bytes() + b"\x00" * 8192)


def lying_content_length(c: Ctx) -> None:
    c.standard(compress=False)
    c.fault("length", c.image_url_path(), times=-1, length=IMG * 2)


def garbage_json_channel(c: Ctx) -> None:
    c.release()
    p = c.feed.channel_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b'{"payloadType": "application/vnd.mpota.channel+json", "payload": "%%%garbage')


def garbage_json_manifest(c: Ctx) -> None:
    c.release()
    c.manifest_file().write_bytes(b"\x00\xffnot json at all}")
    c.repin()


def huge_json_channel(c: Ctx) -> None:
    c.release()
    p = c.feed.channel_path()
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b'{"payload": "' + b"A" * (2 * 1024 * 1024) + b'"}')


def huge_json_manifest(c: Ctx) -> None:
    c.release()
    env = json.loads(c.manifest_file().read_bytes())
    env["padding"] = "B" * (512 * 1024)
    c.manifest_file().write_bytes(json.dumps(env).encode())
    c.repin()


def channel_404(c: Ctx) -> None:
    c.release()  # no channel document at all


def image_404(c: Ctx) -> None:
    c.standard()
    c.image_file().unlink()


def image_500(c: Ctx) -> None:
    c.standard()
    c.fault("status", c.image_url_path(), times=-1, status=500)


def manifest_500(c: Ctx) -> None:
    c.standard()
    c.fault("status", c.prefix + c.feed.manifest_rel(VERSION), times=-1, status=503)


def connection_drop_every_time(c: Ctx) -> None:
    c.standard()
    c.fault("drop", c.image_url_path(), times=-1, at=9000)


def stalled_server(c: Ctx) -> None:
    c.standard()
    c.fault("stall", c.image_url_path(), times=-1, at=5000, delay=20)


def endless_data(c: Ctx) -> None:
    c.standard(compress=False)
    c.fault("endless", c.image_url_path(), times=-1)


def slow_retrieval(c: Ctx) -> None:
    # bytes trickle in (32 bytes every 0.3 s): each read is in time, the transfer never ends
    c.standard()
    c.fault("drip", c.image_url_path(), times=-1, chunk=32, delay=0.3)


# ---------------------------------------------------------------------------- patch attacks
def _ship_patch(c: Ctx, raw: bytes) -> None:
    """Ship ``raw`` as the patch (in the encoding the manifest lists), listed and signed by the
    release key as the real one was: only the applier stands between it and the slot."""
    c.delta_release()
    doc = c.feed.manifest_doc(VERSION)
    d = doc["image"]["deltas"][0]
    path = c.feed.release_dir(VERSION) / d["url"]
    path.write_bytes(compress_image(raw, d["window_bits"]) if d["encoding"] == "detools-zlib" else raw)
    d.update(size=path.stat().st_size, hash="sha256:" + hashlib.sha256(path.read_bytes()).hexdigest())
    c.feed.resign_manifest(VERSION, doc)
    c.repin()


def _head(size: int = len(PATCHED)) -> bytes:
    # a detools sequential patch, compression none: type byte, to_size, data-format size 0
    return b"\0" + pack_size(size) + pack_size(0)


def patch_reads_past_base(c: Ctx) -> None:
    # one extra byte, the base offset moved to 10 bytes before the base's end, then a long diff
    n = len(PATCHED)
    _ship_patch(c, _head() + pack_size(0) + pack_size(1) + b"x" + pack_size(len(RUNNING) - 10)
                + pack_size(n - 1) + b"\0" * (n - 1) + pack_size(0) + pack_size(0))


def patch_reads_before_base(c: Ctx) -> None:
    n = len(PATCHED)
    _ship_patch(c, _head() + pack_size(0) + pack_size(1) + b"x" + pack_size(-4096)
                + pack_size(n - 1) + b"\0" * (n - 1) + pack_size(0) + pack_size(0))


def patch_overflowing_length(c: Ctx) -> None:
    # a diff size of 8 varint bytes (over 2^40): no length the applier could hold in a small int
    _ship_patch(c, _head() + b"\xbf" + b"\xff" * 6 + b"\x7f" + b"\0" * 64)


def patch_run_past_image(c: Ctx) -> None:
    n = len(PATCHED)
    _ship_patch(c, _head() + pack_size(0) + pack_size(n + 4096) + b"\0" * (n + 4096))


def patch_negative_length(c: Ctx) -> None:
    _ship_patch(c, _head() + pack_size(-1) + b"\0" * 64)


def patch_for_another_size(c: Ctx) -> None:
    raw = detools_patch(RUNNING, PATCHED)
    _ship_patch(c, _head(len(PATCHED) + 4096) + raw[len(_head()):])


def patch_in_another_compression(c: Ctx) -> None:
    # the patch as esp_delta_ota takes it (heatshrink): not what this manifest says it is
    import io

    import detools

    out = io.BytesIO()
    detools.create_patch(io.BytesIO(RUNNING), io.BytesIO(PATCHED), out, compression="heatshrink")
    _ship_patch(c, out.getvalue())


def patch_for_another_base(c: Ctx) -> None:
    # a well-formed patch from another build, listed (and signed) for the running one
    _ship_patch(c, detools_patch(build_app_image("esp32", "0.9.0", "mpota-app", 0), PATCHED))


def patch_for_another_image(c: Ctx) -> None:
    # well-formed, from the right base, but it rebuilds another image than the manifest's hash
    other = bytearray(PATCHED)
    other[len(other) // 2] ^= 0x01
    _ship_patch(c, detools_patch(RUNNING, bytes(other)))


def patch_for_another_chip(c: Ctx) -> None:
    # it rebuilds an ESP32-S3 image: refused at the first block, before anything is written
    s3 = build_app_image("esp32s3", VERSION, "mpota-app", 0, build="1.0.0")
    _ship_patch(c, detools_patch(RUNNING, s3[:len(PATCHED)].ljust(len(PATCHED), b"\xff")))


def patch_truncated(c: Ctx) -> None:
    raw = detools_patch(RUNNING, PATCHED)
    _ship_patch(c, raw[: len(raw) * 2 // 3])


def patch_with_bytes_after_its_end(c: Ctx) -> None:
    _ship_patch(c, detools_patch(RUNNING, PATCHED) + b"\0" * 16)


def patch_bit_flip(c: Ctx) -> None:
    # changed on the wire: the signed patch hash no longer matches
    _flip(c.delta_release(), 40)


def patch_404(c: Ctx) -> None:
    c.delta_release().unlink()


def patch_stalled(c: Ctx) -> None:
    c.delta_release()
    c.fault("stall", c.patch_url_path(), times=-1, at=100, delay=20)


def patch_for_a_base_not_running(c: Ctx) -> None:
    c.delta_release()
    _manifest_edit(c, lambda d: d["image"]["deltas"][0].update(
        base_hash="sha256:" + hashlib.sha256(b"another build").hexdigest()))


def patch_and_image_both_bad(c: Ctx) -> None:
    # the patch fails, the full image is bit-flipped too: nothing is installed
    patch_truncated(c)
    _flip(c.image_file(), 30000)


# weather, not attacks: the board gets through and installs the signed image
def connection_drop_once(c: Ctx) -> None:
    c.standard()
    c.fault("drop", c.image_url_path(), times=1, at=20000)


def range_ignored_after_drop(c: Ctx) -> None:
    c.standard(compress=False)
    c.fault("drop", c.image_url_path(), times=1, at=30000)
    c.fault("ignore_range", c.image_url_path(), times=-1)


INSTALLED = "installed"

# (case, expected reason codes). One code where the updater's error is specific; two where
# either is a correct name for the refusal.
CASES: list[tuple[Callable[[Ctx], None], set[str]]] = [
    (bad_signature_channel, {"bad_signature"}),
    (bad_signature_manifest, {"bad_signature"}),
    (unknown_key_channel, {"unknown_key"}),
    (unknown_key_manifest, {"unknown_key"}),
    (wrong_role_channel, {"unknown_key"}),
    (wrong_role_manifest, {"unknown_key"}),
    (wrong_payload_type_channel, {"payload_type"}),
    (wrong_payload_type_manifest, {"payload_type"}),
    (manifest_not_pinned, {"manifest_mismatch"}),
    (older_manifest_replayed, {"manifest_mismatch"}),
    (replayed_lower_seq, {"replayed"}),
    (older_channel_replayed, {"replayed"}),
    (expired_channel, {"expired"}),
    (expired_manifest, {"expired"}),
    (channel_for_another_board, {"wrong_target"}),
    (manifest_for_another_board, {"wrong_target"}),
    (manifest_for_another_chip, {"wrong_target"}),
    (channel_points_at_another_boards_manifest, {"wrong_target"}),
    (image_for_another_chip, {"bad_image"}),
    (mixed_versions_channel_manifest, {"manifest_mismatch"}),
    (lower_security_version, {"security_version"}),
    (not_newer, {"not_newer"}),
    (oversize_image, {"too_big"}),
    (oversize_transfer, {"too_big"}),
    (image_hash_mismatch, {"hash_mismatch"}),
    (bit_flip_in_image, {"hash_mismatch"}),
    (bit_flip_in_compressed_image, {"hash_mismatch", "bad_image"}),
    (compressed_stream_ends_early, {"hash_mismatch"}),
    (bit_flip_in_last_byte, {"hash_mismatch"}),
    (bad_header_first_block, {"bad_image"}),
    (truncated_transfer, {"size_mismatch"}),
    (longer_than_declared, {"size_mismatch"}),
    (lying_content_length, {"size_mismatch", "download"}),
    (garbage_json_channel, {"malformed"}),
    (garbage_json_manifest, {"manifest_mismatch", "malformed"}),
    (huge_json_channel, {"too_large"}),
    (huge_json_manifest, {"too_large"}),
    (channel_404, {"http_status"}),
    (image_404, {"http_status"}),
    (image_500, {"http_status"}),
    (manifest_500, {"http_status"}),
    (connection_drop_every_time, {"download"}),
    (stalled_server, {"timeout"}),
    (endless_data, {"size_mismatch"}),
    (slow_retrieval, {"timeout"}),
    (connection_drop_once, {INSTALLED}),
    (range_ignored_after_drop, {INSTALLED}),
    (patch_reads_past_base, {"fallback: bad_patch"}),
    (patch_reads_before_base, {"fallback: bad_patch"}),
    (patch_overflowing_length, {"fallback: bad_patch"}),
    (patch_run_past_image, {"fallback: bad_patch"}),
    (patch_negative_length, {"fallback: bad_patch"}),
    (patch_for_another_size, {"fallback: bad_patch"}),
    (patch_in_another_compression, {"fallback: bad_patch"}),
    (patch_for_another_base, {"fallback: hash_mismatch", "fallback: bad_patch"}),
    (patch_for_another_image, {"fallback: hash_mismatch"}),
    (patch_for_another_chip, {"fallback: bad_image"}),
    (patch_truncated, {"fallback: bad_patch"}),
    (patch_with_bytes_after_its_end, {"fallback: bad_patch"}),
    (patch_bit_flip, {"fallback: hash_mismatch", "fallback: bad_patch"}),
    (patch_404, {"fallback: http_status"}),
    (patch_stalled, {"fallback: timeout"}),
    (patch_for_a_base_not_running, {"fallback: base"}),
    (patch_and_image_both_bad, {"hash_mismatch", "bad_image"}),
]


World = tuple[Path, feedkit.Keys, feedkit.FeedServer]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("hostile")
    keys = feedkit.Keys(root / "keys")
    (root / "feeds").mkdir()
    server = feedkit.FeedServer(root / "feeds")
    try:
        yield root, keys, server
    finally:
        server.close()


def _result(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.splitlines()):
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    return {}


def test_corpus_is_big_enough() -> None:
    attacks = [c for c, codes in CASES if INSTALLED not in codes]
    assert len(attacks) >= 30
    assert len([c for c in attacks if c.__name__.startswith("patch_")]) >= 15
    assert len({c.__name__ for c, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("case,codes", CASES, ids=[c.__name__ for c, _ in CASES])
def test_hostile_feed(case: Callable[[Ctx], None], codes: set[str], interp: str,
                      world: World) -> None:
    root, keys, server = world
    name = f"{case.__name__}-{interp}"
    c = Ctx(name, root / "feeds", keys, server)
    case(c)
    cfg = feedkit.device_config(server, keys, device_id=name, feed_url=server.url + name + "/",
                                timeout_ms=800, retries=1, backoff_ms=10, max_backoff_ms=20)
    cfg.update(c.config)
    b = SimBoard.create(root / "boards" / name, device="mpy" if interp == "micropython" else "link",
                        config=cfg, image=RUNNING)
    # the factory first boot (the bootloader initialises otadata), and any state to start from
    first = b.run(SEED, interp, args=(json.dumps(c.seed or {}),))
    assert first.kind == "exit" and "SEEDED" in first.stdout, first
    otadata = b.otadata()
    running = b.read_slot("ota_0", IMG)
    boot_slot = b.boot_slot()

    # slow retrieval must be cut off by the updater itself, well before this harness limit
    r = b.run(UPDATE, interp, timeout=30)
    res = _result(r.stdout)

    fallback = {x for x in codes if x.startswith("fallback: ")}
    if codes == {INSTALLED} or fallback:
        assert r.kind == "reset", r
        assert b.next_boot_slot() == "ota_1"
        assert b.read_slot("ota_1", len(c.signed)) == c.signed
        assert b.read_slot("ota_0", len(RUNNING)) == RUNNING  # only ever read
        with server._lock:
            done = [x["detail"] for x in server.reports if x.get("device_id") == name
                    and x.get("event") == "installed"]
        assert len(done) == 1, done
        if fallback:  # the full image, in the same update, and the report says why
            assert done[0].get("delta") in fallback, done
            assert done[0].get("full_bytes") == c.image_file().stat().st_size
        return
    # refused with the right reason ...
    assert r.kind == "exit", f"the board did not refuse: {r}"
    assert res.get("outcome") == "error", r
    assert res["code"] in codes, f"{res['code']} ({res['error']}: {res['msg']}), expected {codes}"
    # ... never switched slot ...
    assert b.otadata() == otadata
    assert b.boot_slot() == boot_slot
    assert b.next_boot_slot() == "ota_0"
    assert b.read_slot("ota_0", IMG) == running
    assert b.firmware("ota_0")["version"] == "1.0.0"
    # ... and said why
    with server._lock:
        failed = [x for x in server.reports if x.get("device_id") == name and x.get("event") == "failed"]
    assert [x["detail"].get("reason") for x in failed] == [res["code"]], failed
