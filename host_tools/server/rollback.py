"""Fleet rollback: republish an earlier firmware as a NEW release the devices will accept.

Devices only install a version newer than the one they run and never a security_version below
their floor, so "rolling back" means: take the earlier release's image, stamp a new version
into its esp_app_desc_t (devices read the running version from there) with the security_version
of the current release, fix the image checksum and appended SHA-256, sign it with the release key
and copy it into the feed. The rollout of that new release is then started like any other
(by `mpota rollout rollback`, usually one stage at 100%).
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from host_tools.errors import MpotaError
from host_tools.fsutil import atomic_write

_VERSION_AT = 16   # esp_app_desc_t: magic(4) secure_version(4) reserved(8) version[32]
_SV_AT = 4


class RollbackError(MpotaError):
    pass


@dataclass
class RollbackRelease:
    version: str
    from_version: str
    security_version: int
    release_dir: Path       # the signed release (outside the feed)
    feed_release: Path      # releases/<board>/<version>/ in the feed


def restamp_image(image: bytes, version: str, secure_version: int) -> bytes:
    """The same app image with another app_desc version/secure_version; checksum + hash fixed."""
    from host_tools.esp_image import parse_image

    rep = parse_image(image)
    if rep.kind != "app" or not rep.ok or not rep.segments or rep.image_length is None:
        raise RollbackError("the earlier release's image is not a valid ESP app image: "
                            + "; ".join(rep.errors or ["no app description"]))
    raw = version.encode()
    if len(raw) > 31:
        raise RollbackError(f"version {version!r} does not fit esp_app_desc_t.version (31 bytes)")
    out = bytearray(image)
    at = rep.segments[0].file_offset
    old = bytes(out[at:at + 48])
    out[at + _SV_AT:at + _SV_AT + 4] = struct.pack("<I", secure_version)
    out[at + _VERSION_AT:at + _VERSION_AT + 32] = raw + b"\0" * (32 - len(raw))
    new = bytes(out[at:at + 48])
    delta = 0
    for a, b in zip(old, new, strict=True):
        delta ^= a ^ b
    last = rep.segments[-1]
    end = last.file_offset + last.length
    cks_at = end + (15 - end % 16)
    out[cks_at] ^= delta
    if rep.hash_appended:
        out[cks_at + 1:cks_at + 33] = hashlib.sha256(out[:cks_at + 1]).digest()
    return bytes(out)


def prepare_rollback(feed_dir: str | os.PathLike[str], board: str, channel: str, from_version: str,
                     new_version: str, release_key: str | os.PathLike[str], work_dir: str | os.PathLike[str],
                     security_version: int | None = None, any_role: bool = False) -> RollbackRelease:
    """Build, sign and copy into the feed the rollback release (the channel is not touched)."""
    from host_tools import feed, release
    from host_tools.channel import release_dir_path
    from host_tools.keys import load_private_key
    from host_tools.manifest import DEFAULT_WINDOW_BITS

    feed_root = Path(feed_dir)
    key = load_private_key(release_key, None if any_role else "release")
    src = feed_root / release_dir_path(board, from_version)
    if not (src / release.MANIFEST_NAME).is_file():
        raise RollbackError(f"release {from_version} for {board} is not in the feed ({src})")
    dest = feed_root / release_dir_path(board, new_version)
    if dest.exists():
        raise RollbackError(f"the feed already has a release {new_version} for {board}; pick a new version")
    result, _, wire = release.load_release(src, None, allow_expired=True)
    old = result.manifest
    try:
        old_image = old.firmware  # a rollback release re-signs the old firmware (app files stay)
    except MpotaError as exc:
        raise RollbackError(f"release {from_version}: {exc}") from None
    image = zlib.decompress(wire) if old_image.encoding == "zlib" else wire
    if security_version is None:
        security_version = old.security_version
        current = feed.read_channel(feed_root, board, channel)
        if current is not None:
            try:
                cur, _, _ = release.load_release(feed_root / Path(current.release.manifest).parent, None,
                                                 allow_expired=True)
                security_version = max(security_version, cur.manifest.security_version)
            except MpotaError:
                pass
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    stamped = work / f"rollback-{new_version}.bin"
    atomic_write(stamped, restamp_image(image, new_version, security_version))
    out = work / f"release-{new_version}"
    info = release.sign_release(
        stamped, key, board, new_version, out_dir=out, security_version=security_version,
        notes=f"rollback to {from_version}", compress=old_image.encoding == "zlib",
        window_bits=old_image.window_bits or DEFAULT_WINDOW_BITS, any_role=any_role)
    assert info.image_path is not None
    with feed.feed_lock(feed_root):
        atomic_write(dest / info.image_path.name, info.image_path.read_bytes())
        atomic_write(dest / info.manifest_path.name, info.manifest_path.read_bytes())
    return RollbackRelease(new_version, from_version, security_version, info.out_dir, dest)
