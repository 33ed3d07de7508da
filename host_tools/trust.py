"""What a device decides about a feed, decided on the host: the rules of device/mpota/trust.py in
the same order, over the host's own parsers (host_tools.dsse, channel, manifest).

The conformance corpus tests/vectors/trust holds both to the same verdict on every case. Errors
carry ``code``, the reason a device puts in its ``failed`` report for the same input.

    dev = DeviceView(board="esp32-generic-4mb", channel="stable", device_id="d1", ...)
    ch = check_channel(channel_bytes, dev)           # verified, parsed, board/seq/expiry
    if wanted(ch, dev):                              # rollout state, group/bucket, window, up to date
        m = check_manifest(manifest_bytes, ch, dev)  # pin, signature, fields, target, floor, size
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from host_tools.channel import ChannelDoc
from host_tools.dsse import CHANNEL_PAYLOAD_TYPE, RELEASE_PAYLOAD_TYPE, parse_envelope, verify_envelope
from host_tools.errors import MpotaError
from host_tools.fleet import DEFAULT_GROUP
from host_tools.keydoc import KEYS_PAYLOAD_TYPE, MAX_KEYS_BYTES, KeysDoc, KeysDocError
from host_tools.keys import PublicKey
from host_tools.manifest import MAX_CHANNEL_BYTES, MAX_MANIFEST_BYTES, FirmwareManifest, format_time
from host_tools.server.bucket import bucket

GROWTH = 64  # a zlib transfer may exceed the raw size by size/64 + 1 KiB


class TrustError(MpotaError):
    code = "metadata"


class TooLarge(TrustError):
    code = "too_large"


class WrongTarget(TrustError):
    code = "wrong_target"


class Replayed(TrustError):
    code = "replayed"


class Expired(TrustError):
    code = "expired"


class PinMismatch(TrustError):
    code = "manifest_mismatch"


class SecurityVersionTooLow(TrustError):
    code = "security_version"


class NotNewer(TrustError):
    code = "not_newer"


class TooBig(TrustError):
    code = "too_big"


class BadRunningVersion(TrustError):
    code = "malformed"


@dataclass
class DeviceView:
    """What a device knows when it checks: its config, its state, its running image, its clock."""

    board: str
    channel: str
    device_id: str
    group: str = DEFAULT_GROUP
    rollout_keys: Sequence[PublicKey] = field(default_factory=list)
    release_keys: Sequence[PublicKey] = field(default_factory=list)
    rollout_threshold: int = 1
    release_threshold: int = 1
    seen_seq: int = 0
    floor: int = 0
    running: str | None = None
    chip: str | None = None
    slot_size: int = 0x1F0000
    now: datetime | None = None  # None: the device's clock is not set

    def now_text(self) -> str | None:
        return None if self.now is None else format_time(self.now)[:19]


def _expired(expires: str | None, dev: DeviceView, what: str) -> None:
    now = dev.now_text()
    if expires is not None and now is not None and expires[:19] <= now:
        raise Expired(f"{what} expired {expires}")


def _running_key(text: str) -> tuple[int, int, int, tuple[tuple[int, int, str], ...]]:
    """A running version as the device reads it from app_desc (device/mpota/version.py): an
    optional leading v, 1-3 numbers, -prerelease, +build ignored."""
    t = text[1:] if text[:1] in ("v", "V") else text
    t = t.split("+", 1)[0]
    core, _, pre = t.partition("-")
    parts = core.split(".")
    if not text or not 1 <= len(parts) <= 3 or not all(p.isascii() and p.isdigit() for p in parts):
        raise BadRunningVersion(f"running version {text!r} is not a version")
    nums = [int(p) for p in parts] + [0] * (3 - len(parts))
    fields = pre.split(".") if "-" in t else []
    if any(not f for f in fields):
        raise BadRunningVersion(f"running version {text!r} is not a version")
    key = tuple((0, int(f), "") if f.isascii() and f.isdigit() else (1, 0, f) for f in fields)
    return nums[0], nums[1], nums[2], key


def compare_running(version: str, running: str) -> int:
    """-1, 0, 1 as a release version sorts before, with, after the running one (semver order)."""
    a, b = _running_key(version), _running_key(running)
    if a[:3] != b[:3]:
        return -1 if a[:3] < b[:3] else 1
    if a[3] == b[3]:
        return 0
    if not a[3] or not b[3]:
        return 1 if not a[3] else -1
    return -1 if a[3] < b[3] else 1


def check_channel(data: bytes, dev: DeviceView) -> ChannelDoc:
    if len(data) > MAX_CHANNEL_BYTES:
        raise TooLarge(f"channel document of {len(data)} bytes (cap {MAX_CHANNEL_BYTES})")
    env = parse_envelope(data, "channel document")
    doc = ChannelDoc.from_payload(verify_envelope(env, CHANNEL_PAYLOAD_TYPE, dev.rollout_keys,
                                                         dev.rollout_threshold))
    if doc.board != dev.board or doc.channel != dev.channel:
        raise WrongTarget(f"channel is for {doc.board}/{doc.channel}")
    if doc.seq < dev.seen_seq:
        raise Replayed(f"channel seq {doc.seq} < {dev.seen_seq} already seen")
    _expired(doc.expires, dev, "channel")
    return doc


def wanted(ch: ChannelDoc, dev: DeviceView) -> bool:
    ro = ch.rollout
    if ro.state != "active":
        return False
    if dev.group not in ro.groups and not bucket(ro.id, dev.device_id) < ro.percentage:
        return False
    now = dev.now
    if ro.window is not None and now is not None:
        a, b = (int(ro.window[k][:2]) * 60 + int(ro.window[k][3:]) for k in ("start", "end"))
        t = now.hour * 60 + now.minute
        if not (a <= t < b if a <= b else (t >= a or t < b)):
            return False
    return dev.running is None or compare_running(ch.release.version, dev.running) != 0


def check_manifest(data: bytes, ch: ChannelDoc, dev: DeviceView) -> FirmwareManifest:
    if len(data) > MAX_MANIFEST_BYTES:
        raise TooLarge(f"manifest of {len(data)} bytes (cap {MAX_MANIFEST_BYTES})")
    if hashlib.sha256(data).hexdigest() != ch.release.manifest_sha256:
        raise PinMismatch("manifest is not the one the channel pins")
    env = parse_envelope(data, "manifest")
    m = FirmwareManifest.from_payload(verify_envelope(env, RELEASE_PAYLOAD_TYPE, dev.release_keys,
                                                                    dev.release_threshold))
    if m.version != ch.release.version:
        raise PinMismatch(f"manifest {m.version}, channel says {ch.release.version}")
    if dev.board not in m.target_hardware:
        raise WrongTarget(f"release is not for board {dev.board}")
    if dev.chip is not None and m.chip != dev.chip:
        raise WrongTarget(f"release is for chip {m.chip}, this is {dev.chip}")
    if m.security_version < dev.floor:
        raise SecurityVersionTooLow(f"security_version {m.security_version} below the floor {dev.floor}")
    if (dev.running is not None and compare_running(m.version, dev.running) <= 0
            and not m.metadata.allow_downgrade):
        raise NotNewer(f"{m.version} is not newer than the running {dev.running}")
    img = m.image
    if img is None:  # an app-only release: its bundle's limits are the manifest's own
        _expired(m.expires, dev, "release")
        return m
    if img.size > dev.slot_size:
        raise TooBig(f"image of {img.size} bytes, slot holds {dev.slot_size}")
    assert img.transfer_size is not None
    if img.transfer_size > img.size + img.size // GROWTH + 1024:
        raise TooBig(f"transfer of {img.transfer_size} bytes for an image of {img.size}")
    for d in img.deltas:
        if d.size > img.size + img.size // GROWTH + 1024:
            raise TooBig(f"patch of {d.size} bytes for an image of {img.size}")
    _expired(m.expires, dev, "release")
    return m


def check_keys(data: bytes, trusted: KeysDoc) -> KeysDoc:
    """The next keys document a board takes after ``trusted`` (TUF's root rule): signed by a
    threshold of the trusted root keys and by a threshold of its own root keys, the same fleet,
    exactly the next version. Returns it, or raises the error a device reports for it."""
    if len(data) > MAX_KEYS_BYTES:
        raise TooLarge(f"keys document of {len(data)} bytes (cap {MAX_KEYS_BYTES})")
    env = parse_envelope(data, "keys document")
    root = trusted.role("root")
    new = KeysDoc.from_payload(verify_envelope(env, KEYS_PAYLOAD_TYPE, root.public_keys(), root.threshold,
                                               f"keys document (root of trusted v{trusted.version})"))
    if trusted.fleet is not None and new.fleet != trusted.fleet:
        raise WrongTarget(f"keys document for fleet {new.fleet}, this is {trusted.fleet}")
    if new.version <= trusted.version:
        raise Replayed(f"keys version {new.version}, {trusted.version} already trusted")
    if new.version != trusted.version + 1:
        raise KeysDocError(f"keys version {new.version}, expected {trusted.version + 1}")
    root = new.role("root")
    verify_envelope(env, KEYS_PAYLOAD_TYPE, root.public_keys(), root.threshold,
                    f"keys v{new.version} (its own new root)")
    return new
