"""Sign a release (an app image -> RELEASE_DIR/manifest.json + the image) and verify one.

A release folder holds:
- ``firmware.bin`` (the raw app image) or ``firmware.bin.z`` (a zlib stream of it made with a
  bounded window, ``window_bits`` recorded in the manifest),
- ``manifest.json``: the DSSE envelope over the release manifest, ``image.url`` relative to it,
- with ``--delta-from``, one ``delta-from-<version>.patch[.z]`` per base release
  (host_tools/delta.py), listed in the manifest's ``image.deltas``,
- with ``--app DIR``, ``app.bin``: the application files (host_tools/appbundle.py), listed in the
  manifest's ``app`` section. A release carries a firmware image, an app bundle or both.

The folder is built under a temporary name next to RELEASE_DIR and renamed into place at the end,
so a failed or interrupted sign leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from host_tools.appbundle import BUNDLE_NAME, AppBundleError, build_bundle, check_bundle
from host_tools.delta import DeltaError, Patch, make_patch, patch_name
from host_tools.errors import MpotaError
from host_tools.esp_image import ImageError, load_app_image, parse_image
from host_tools.keys import PrivateKey, PublicKey, load_private_key, role_allows
from host_tools.manifest import (
    DEFAULT_WINDOW_BITS,
    MAX_DELTAS,
    MAX_MANIFEST_BYTES,
    MAX_WINDOW_BITS,
    MIN_WINDOW_BITS,
    AppBundle,
    DeltaRef,
    FirmwareManifest,
    ImageRef,
    ManifestError,
    Metadata,
    check_version,
    format_time,
    parse_time,
    utc_now,
)

if TYPE_CHECKING:
    from host_tools.boards import Board

MANIFEST_NAME = "manifest.json"
RAW_NAME = "firmware.bin"
ZLIB_NAME = "firmware.bin.z"
_CHUNK = 64 * 1024


class ReleaseError(MpotaError):
    """Signing refused or a release does not verify (the message names the first problem)."""


@dataclass
class ReleaseInfo:
    out_dir: Path
    manifest_path: Path
    image_path: Path | None  # None: an app-only release
    manifest: FirmwareManifest
    keyids: list[str]
    board: str
    warnings: list[str] = field(default_factory=list)


@dataclass
class VerifyResult:
    manifest: FirmwareManifest
    manifest_path: Path
    image_path: Path | None  # None: an app-only release
    manifest_sha256: str
    keyids: list[str]
    checks: list[str] = field(default_factory=list)  # what was checked, in plain words
    patches: list[tuple[str, bytes]] = field(default_factory=list)  # (file name, bytes) per delta
    app_file: tuple[str, bytes] | None = None  # (file name, bytes) of the app bundle
    app_files: list[tuple[str, bytes]] = field(default_factory=list)  # (path, bytes) in the bundle

    @property
    def image_name(self) -> str | None:
        """The firmware image's file name in the release folder (None: an app-only release)."""
        return None if self.image_path is None else self.image_path.name

    @property
    def extra_files(self) -> list[tuple[str, bytes]]:
        """(file name, bytes) of the release's files beside manifest and image: patches, app bundle."""
        return [*self.patches, *([self.app_file] if self.app_file else [])]


def _version_core(v: str) -> str:
    return v[1:] if v[:1] in ("v", "V") else v


def compress_image(data: bytes, window_bits: int = DEFAULT_WINDOW_BITS, level: int = 9) -> bytes:
    """A zlib stream (header + deflate + adler32) whose window is at most 2**window_bits bytes."""
    if not MIN_WINDOW_BITS <= window_bits <= MAX_WINDOW_BITS:
        raise ReleaseError(f"window bits {window_bits} must be in {MIN_WINDOW_BITS}..{MAX_WINDOW_BITS}")
    # zlib turns windowBits 8 into 9 for raw streams only; 9..15 are honoured as given.
    c = zlib.compressobj(level=level, method=zlib.DEFLATED, wbits=window_bits)
    return c.compress(data) + c.flush()


def decode_stream(stream: bytes, window_bits: int, limit: int) -> bytes:
    """Inflate with exactly the recorded window (as the device will); raise ReleaseError on any fault."""
    d = zlib.decompressobj(wbits=window_bits)
    out = bytearray()
    try:
        for i in range(0, len(stream), _CHUNK):
            out += d.decompress(stream[i : i + _CHUNK], limit + 1 - len(out))
            if len(out) > limit:
                raise ReleaseError(f"the zlib stream inflates to more than the declared {limit} bytes")
            while d.unconsumed_tail:
                out += d.decompress(d.unconsumed_tail, limit + 1 - len(out))
                if len(out) > limit:
                    raise ReleaseError(f"the zlib stream inflates to more than the declared {limit} bytes")
        out += d.flush()
    except zlib.error as exc:
        raise ReleaseError(f"the zlib stream does not decode with window_bits {window_bits}: {exc}") from None
    if not d.eof:
        raise ReleaseError("the zlib stream is truncated (no end of stream)")
    if d.unused_data:
        raise ReleaseError(f"{len(d.unused_data)} bytes follow the end of the zlib stream")
    return bytes(out)


def _resolve_keys(key: PrivateKey | str | os.PathLike[str] | Sequence[PrivateKey], any_role: bool,
                  role: str) -> list[PrivateKey]:
    if isinstance(key, (str, os.PathLike)):
        return [load_private_key(key, None if any_role else role)]
    keys = [key] if isinstance(key, PrivateKey) else list(key)
    if not keys:
        raise ReleaseError("no signing key given")
    for k in keys:
        if not any_role and not role_allows(k.role, role):
            what = f"a {k.role} key" if k.role else "a key without an mpota role"
            raise ReleaseError(f"{k.path or 'key'} is {what}; signing a release needs a {role} key "
                               "(or accept any role explicitly)")
    return keys


def _check_out_dir(out: Path) -> None:
    if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise ReleaseError(f"output {out} already exists "
                           "(choose a new folder; releases are never overwritten)")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:  # missing folders are created when writing
        parent = parent.parent
    if not parent.is_dir():
        raise ReleaseError(f"cannot create {out}: {parent} is not a folder")


def sign_release(
    image_path: str | os.PathLike[str] | None,
    key: PrivateKey | str | os.PathLike[str] | Sequence[PrivateKey],
    board: str,
    version: str | None,
    *,
    out_dir: str | os.PathLike[str],
    security_version: int | None = None,
    build_id: str | None = None,
    notes: str = "",
    required: bool = False,
    compress: bool = False,
    window_bits: int = DEFAULT_WINDOW_BITS,
    expires: str | None = None,
    min_bootloader_version: str | None = None,
    force_version: bool = False,
    any_role: bool = False,
    extra_boards: Sequence[str] = (),
    allow_version_downgrade: bool = False,
    delta_from: Sequence[str | os.PathLike[str]] = (),
    app_dir: str | os.PathLike[str] | None = None,
    app_root: str = "/app",
    mpy_cross: str | None = None,
) -> ReleaseInfo:
    """Check the image against the board, build + sign the manifest, write RELEASE_DIR atomically.

    ``version`` None takes the image's own (esp_app_desc_t.version); an image without one (a
    stock MicroPython build) needs it given.

    delta_from: earlier release folders; a patch from each one's image is written next to the
    image and listed in image.deltas (boards running that image fetch the patch instead).

    app_dir: a folder of application files installed under app_root with the firmware
    (host_tools/appbundle.py; .py compiled with the mpy-cross program ``mpy_cross`` when given);
    image_path None signs an app-only release (then ``version`` is required)."""
    from host_tools.boards import load_board

    out = Path(out_dir)
    if version is not None:
        check_version(version, "--version")
    b = load_board(board)
    for extra in extra_boards:
        other = load_board(extra)
        if other.chip != b.chip:
            raise ReleaseError(f"board {other.name} is an {other.chip}, {b.name} an {b.chip}: "
                               "one chip per release")
    keys = _resolve_keys(key, any_role, "release")
    _check_out_dir(out)
    if security_version is not None and (isinstance(security_version, bool)
                                         or not 0 <= security_version < 2**32):
        raise ReleaseError(f"security version {security_version} must be an integer in 0..4294967295")
    if not MIN_WINDOW_BITS <= window_bits <= MAX_WINDOW_BITS:
        raise ReleaseError(f"window bits {window_bits} must be in {MIN_WINDOW_BITS}..{MAX_WINDOW_BITS}")
    created = format_time(utc_now())
    if expires is not None and parse_time(expires, "expires") <= parse_time(created):
        raise ReleaseError(f"expires {expires} is not in the future")
    bundle = None
    if app_dir is not None:
        try:
            bundle = build_bundle(app_dir, app_root, mpy_cross=mpy_cross)
        except (AppBundleError, ManifestError) as exc:
            raise ReleaseError(str(exc)) from None
    if image_path is None:
        if bundle is None:
            raise ReleaseError("nothing to sign: give a firmware image, --app DIR or both")
        if delta_from:
            raise ReleaseError("--delta-from needs a firmware image (an app-only release has none)")
        if version is None:
            raise ReleaseError("an app-only release needs --version")
        return _write_app_only(out, keys, b, version, bundle.app, bundle.data, security_version or 0,
                               build_id, notes, required, created, expires, min_bootloader_version,
                               extra_boards, allow_version_downgrade)

    name = os.fspath(image_path)
    data, rep = load_app_image(name)
    assert rep.app_desc is not None
    warnings: list[str] = []
    if rep.chip != b.chip:
        raise ReleaseError(f"{name} is an {rep.chip} image, but board {b.name} is an {b.chip}")
    if b.slot_size <= 0:
        raise ReleaseError(f"board {b.name} has no OTA slots to update")
    if len(data) > b.slot_size:
        raise ReleaseError(f"{name} is {len(data)} bytes, larger than board {b.name}'s OTA slot "
                           f"({b.slot_size} bytes)")
    desc_version = rep.app_desc.version
    if not desc_version:
        if version is None:
            raise ReleaseError(
                f"{name} carries no version (its esp_app_desc_t.version is empty, as in MicroPython's own "
                "ESP32 builds, which set CONFIG_APP_EXCLUDE_PROJECT_VER_VAR): give --version to say which "
                "release it is; devices compare that signed version, the image cannot tell them")
    elif version is None:
        version = _version_core(desc_version)
        check_version(version, f"the version in {name}")
    elif _version_core(desc_version) != version:
        if not force_version:
            raise ReleaseError(f"the image says version {desc_version!r} (esp_app_desc_t) but --version is "
                               f"{version!r}; rebuild the image or pass --force-version")
        warnings.append(f"image version {desc_version!r} differs from release version {version!r} (forced)")
    if security_version is None:
        security_version = rep.app_desc.secure_version
    elif security_version != rep.app_desc.secure_version:
        warnings.append(f"security_version {security_version} differs from the image's secure_version "
                        f"{rep.app_desc.secure_version}")

    raw_hash = "sha256:" + hashlib.sha256(data).hexdigest()
    if compress:
        wire = compress_image(data, window_bits)
        if decode_stream(wire, window_bits, len(data)) != data:  # never publish a stream we cannot read
            raise ReleaseError("internal error: the zlib stream does not round-trip")
        file_name, encoding, wbits = ZLIB_NAME, "zlib", window_bits
        if len(wire) >= len(data):
            warnings.append(f"compression does not pay off for this image ({len(wire)} >= {len(data)} bytes)")
    else:
        wire, file_name, encoding, wbits = data, RAW_NAME, "none", None
    patches = make_deltas(delta_from, data, version, b.chip, window_bits)
    manifest = FirmwareManifest(
        version=version,
        build_id=build_id or utc_now().strftime("%Y%m%d-%H%M%S"),
        security_version=security_version,
        target_hardware=[b.name, *[e for e in extra_boards if e != b.name]],
        chip=b.chip,
        min_bootloader_version=min_bootloader_version,
        image=ImageRef(url=file_name, size=len(data), hash=raw_hash, encoding=encoding, window_bits=wbits,
                       transfer_size=len(wire), transfer_hash="sha256:" + hashlib.sha256(wire).hexdigest(),
                       deltas=[p.ref(n) for n, p in patches]),
        metadata=Metadata(notes, required, allow_version_downgrade),
        created=created,
        expires=expires,
        app=None if bundle is None else bundle.app,
    )
    files = [(file_name, wire), *((n, p.wire) for n, p in patches)]
    if bundle is not None:
        files.append((BUNDLE_NAME, bundle.data))
    return _write_release_dir(out, manifest, keys, files, b.name, warnings)


def _write_app_only(out: Path, keys: list[PrivateKey], b: Board, version: str, app: AppBundle, data: bytes,
                    security_version: int, build_id: str | None, notes: str, required: bool, created: str,
                    expires: str | None, min_bootloader_version: str | None, extra_boards: Sequence[str],
                    allow_version_downgrade: bool) -> ReleaseInfo:
    manifest = FirmwareManifest(
        version=version, build_id=build_id or utc_now().strftime("%Y%m%d-%H%M%S"),
        security_version=security_version,
        target_hardware=[b.name, *[e for e in extra_boards if e != b.name]], chip=b.chip,
        min_bootloader_version=min_bootloader_version, image=None,
        metadata=Metadata(notes, required, allow_version_downgrade), created=created, expires=expires,
        app=app)
    return _write_release_dir(out, manifest, keys, [(BUNDLE_NAME, data)], b.name, [])


def _write_release_dir(out: Path, manifest: FirmwareManifest, keys: list[PrivateKey],
                       files: list[tuple[str, bytes]], board: str, warnings: list[str]) -> ReleaseInfo:
    """Sign the manifest and write the folder: the files, then manifest.json, under a temporary
    name renamed into place."""
    envelope = manifest.sign(keys)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReleaseError(f"cannot create {out.parent}: {exc.strerror or exc}") from None
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        for n, data in files:
            _write_synced(tmp / n, data)
        _write_synced(tmp / MANIFEST_NAME, envelope)
        os.chmod(tmp, 0o755)
        if out.is_dir():
            out.rmdir()  # empty (checked above): rename needs the name free on every platform
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(out.parent)
    image = out / files[0][0] if manifest.image is not None else None
    return ReleaseInfo(out, out / MANIFEST_NAME, image, manifest, [k.keyid for k in keys], board, warnings)


def release_image(path: str | os.PathLike[str]) -> tuple[FirmwareManifest, bytes]:
    """A release folder's manifest (signature not checked) and its raw image, hashes checked."""
    res, _, wire = load_release(path, None, allow_expired=True)
    img = res.manifest.firmware
    if img.encoding == "zlib":
        assert img.window_bits is not None
        return res.manifest, decode_stream(wire, img.window_bits, img.size)
    return res.manifest, wire


def make_deltas(bases: Sequence[str | os.PathLike[str]], new: bytes, version: str, chip: str,
                window_bits: int) -> list[tuple[str, Patch]]:
    """(file name, patch) from each base release folder's image to ``new``."""
    out: list[tuple[str, Patch]] = []
    seen: dict[str, str] = {}
    new_hash = "sha256:" + hashlib.sha256(new).hexdigest()
    if len(bases) > MAX_DELTAS:
        raise ReleaseError(f"{len(bases)} delta bases; a manifest lists at most {MAX_DELTAS}")
    for base_dir in bases:
        try:
            bm, base = release_image(base_dir)
        except MpotaError as exc:
            raise ReleaseError(f"--delta-from {base_dir}: {exc}") from None
        if bm.chip != chip:
            raise ReleaseError(f"--delta-from {base_dir} is an {bm.chip} release, this one is for {chip}")
        if bm.firmware.hash == new_hash:
            raise ReleaseError(f"--delta-from {base_dir} has the very image being signed")
        if bm.firmware.hash in seen:
            raise ReleaseError(f"--delta-from {base_dir} has the same image as {seen[bm.firmware.hash]}")
        if bm.version == version:
            raise ReleaseError(f"--delta-from {base_dir} is version {version} itself")
        seen[bm.firmware.hash] = str(base_dir)
        try:
            patch = make_patch(base, new, window_bits)
        except DeltaError as exc:
            raise ReleaseError(f"--delta-from {base_dir}: {exc}") from None
        out.append((patch_name(bm.version, patch.encoding), patch))
    return out


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o644)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _manifest_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise ReleaseError(f"release {p} not found (expected a release folder or its manifest.json)")
    if p.is_dir():
        p = p / MANIFEST_NAME
    return p


def verify_release(
    path: str | os.PathLike[str],
    public_keys: Sequence[PublicKey],
    *,
    threshold: int = 1,
    board: str | None = None,
    allow_expired: bool = False,
) -> VerifyResult:
    """Check a release folder (or its manifest file); raise ReleaseError/DsseError on the first fault.

    Signature and payload type, manifest fields, transfer size + hash of the image file, the zlib
    stream inflating (with the recorded window) to exactly size + hash, and that the image is a valid
    app image for the manifest's chip.
    """
    if not public_keys:
        raise ReleaseError("no public key given to verify with")
    return load_release(path, public_keys, threshold=threshold, board=board, allow_expired=allow_expired)[0]


def load_release(
    path: str | os.PathLike[str],
    public_keys: Sequence[PublicKey] | None,
    *,
    threshold: int = 1,
    board: str | None = None,
    allow_expired: bool = False,
) -> tuple[VerifyResult, bytes, bytes]:
    """verify_release's checks, plus the manifest file bytes and the image file bytes.

    With public_keys None the signature is not checked (the publisher may not hold the release
    keys); everything else is.
    """
    from host_tools.dsse import RELEASE_PAYLOAD_TYPE, envelope_payload, parse_envelope, verify_envelope

    mpath = _manifest_path(path)
    try:
        with open(mpath, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ReleaseError(f"cannot read manifest {mpath}: {exc.strerror or exc}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ReleaseError(f"manifest {mpath} is over the {MAX_MANIFEST_BYTES}-byte cap")
    env = parse_envelope(raw, str(mpath))
    if public_keys is None:
        if env["payloadType"] != RELEASE_PAYLOAD_TYPE:
            raise ReleaseError(f"{mpath}: payloadType is {env['payloadType']!r}, "
                               f"expected {RELEASE_PAYLOAD_TYPE!r}")
        payload = envelope_payload(env, str(mpath))
        signed_by: list[str] = []
        checks = ["signature not checked (no release key given)"]
    else:
        payload = verify_envelope(env, RELEASE_PAYLOAD_TYPE, public_keys, threshold, str(mpath))
        signed_by = sorted({s.get("keyid", "") for s in env["signatures"]} & {k.keyid for k in public_keys})
        checks = [f"signature ({RELEASE_PAYLOAD_TYPE}) by {', '.join(k[:16] for k in signed_by)}"]
    try:
        m = FirmwareManifest.from_payload(payload)
    except ManifestError as exc:
        raise ReleaseError(f"{mpath}: {exc}") from None
    checks.append(f"manifest fields (version {m.version}, security_version {m.security_version})")
    if m.expires is not None and parse_time(m.expires) <= utc_now() and not allow_expired:
        raise ReleaseError(f"{mpath}: the manifest expired at {m.expires}")
    if board is not None and board not in m.target_hardware:
        raise ReleaseError(f"{mpath}: board {board} is not in target_hardware "
                           f"({', '.join(m.target_hardware)})")
    app_file = None
    app_files: list[tuple[str, bytes]] = []
    if m.app is not None:
        app_file = (m.app.url, _release_file(mpath, m.app.url, "app bundle"))
        try:
            app_files = check_bundle(m.app, app_file[1])
        except AppBundleError as exc:
            raise ReleaseError(str(exc)) from None
        checks.append(f"app bundle: {len(m.app.files)} file(s) under {m.app.root}, {m.app.size} bytes, "
                      "each size and hash")
    if m.image is None:
        return (VerifyResult(m, mpath, None, hashlib.sha256(raw).hexdigest(), signed_by, checks, [],
                             app_file, app_files), raw, b"")
    url = m.image.url
    if "://" in url or url.startswith("/"):
        raise ReleaseError(f"{mpath}: image url {url!r} is absolute; "
                           "verify checks local release folders only")
    img = (mpath.parent / url).resolve()
    if mpath.parent.resolve() not in img.parents:
        raise ReleaseError(f"{mpath}: image url {url!r} points outside the release folder")
    try:
        wire = img.read_bytes()
    except OSError as exc:
        raise ReleaseError(f"cannot read image {img}: {exc.strerror or exc}") from None
    t_size, t_hex = len(wire), hashlib.sha256(wire).hexdigest()
    if t_size != m.image.transfer_size:
        raise ReleaseError(f"{img.name} is {t_size} bytes, the manifest says {m.image.transfer_size}")
    if "sha256:" + t_hex != m.image.transfer_hash:
        raise ReleaseError(f"{img.name}: SHA-256 does not match the manifest's transfer_hash")
    checks.append(f"transfer size and hash ({t_size} bytes)")
    if m.image.encoding == "zlib":
        assert m.image.window_bits is not None
        raw_image = decode_stream(wire, m.image.window_bits, m.image.size)
        checks.append(f"zlib stream decodes with window_bits {m.image.window_bits}")
    else:
        raw_image = wire
    if len(raw_image) != m.image.size:
        raise ReleaseError(f"the image is {len(raw_image)} bytes, the manifest says {m.image.size}")
    if "sha256:" + hashlib.sha256(raw_image).hexdigest() != m.image.hash:
        raise ReleaseError("the image SHA-256 does not match the manifest's hash")
    checks.append(f"image size and hash ({m.image.size} bytes)")
    patches = []
    for d in m.image.deltas:
        patches.append((d.url, _check_patch(mpath, d)))
    if m.image.deltas:
        checks.append(f"{len(m.image.deltas)} patch(es): size, hash and encoding")
    rep = parse_image(raw_image)
    if rep.errors or rep.kind != "app":
        why = (rep.errors or ["no app descriptor"])[0]
        raise ReleaseError(f"the signed image is not a valid app image: {why}")
    if rep.chip != m.chip:
        raise ReleaseError(f"the signed image is for {rep.chip}, the manifest says chip {m.chip}")
    if rep.app_desc is not None:
        desc_v = rep.app_desc.version
        note = "" if _version_core(desc_v) == m.version else \
            f" (image says {desc_v})" if desc_v else " (the image carries no version of its own)"
        checks.append(f"valid {rep.chip} app image{note}")
    return (VerifyResult(m, mpath, img, hashlib.sha256(raw).hexdigest(), signed_by, checks, patches,
                         app_file, app_files), raw, wire)


def _release_file(mpath: Path, url: str, what: str) -> bytes:
    """A file listed in the manifest: a plain name next to it."""
    if "/" in url or url in ("", ".", ".."):
        raise ReleaseError(f"{mpath}: {what} url {url!r} must be a file name next to the manifest")
    try:
        return (mpath.parent / url).read_bytes()
    except OSError as exc:
        raise ReleaseError(f"cannot read {what} {mpath.parent / url}: {exc.strerror or exc}") from None


def _check_patch(mpath: Path, d: DeltaRef) -> bytes:
    """A patch file of the release: next to the manifest, size and hash as listed, decodable."""
    from host_tools.delta import ENC_ZLIB

    data = _release_file(mpath, d.url, "patch")
    if len(data) != d.size or "sha256:" + hashlib.sha256(data).hexdigest() != d.hash:
        raise ReleaseError(f"{d.url}: size or SHA-256 does not match the manifest")
    if d.encoding == ENC_ZLIB:
        assert d.window_bits is not None
        decode_stream(data, d.window_bits, 1 << 26)
    return data


__all__ = [
    "ImageError", "ReleaseError", "ReleaseInfo", "VerifyResult", "compress_image", "decode_stream",
    "sign_release", "verify_release", "load_release", "MANIFEST_NAME", "RAW_NAME", "ZLIB_NAME",
]


def cosign_release(path: str | os.PathLike[str], key: PrivateKey | Sequence[PrivateKey],
                   any_role: bool = False) -> tuple[Path, list[str]]:
    """Add the signatures of ``key`` to a release folder's manifest (a second release engineer,
    for a release threshold), before it is published: the channel pins the manifest's bytes.
    Returns the manifest path and the keyids that have signed it now."""
    from host_tools.dsse import RELEASE_PAYLOAD_TYPE, add_signatures, envelope_bytes, parse_envelope
    from host_tools.fsutil import atomic_write

    keys = _resolve_keys(key, any_role, "release")
    mpath = _manifest_path(path)
    load_release(path, None, allow_expired=True)  # a whole release: fields, image, hashes
    raw = mpath.read_bytes()
    env = parse_envelope(raw, str(mpath))
    if env["payloadType"] != RELEASE_PAYLOAD_TYPE:
        raise ReleaseError(f"{mpath} is not a release manifest")
    try:
        new = add_signatures(env, keys, str(mpath))
    except MpotaError as exc:
        raise ReleaseError(str(exc)) from None
    data = envelope_bytes(new)
    if len(data) > MAX_MANIFEST_BYTES:
        raise ReleaseError(f"{mpath} would be {len(data)} bytes, over the {MAX_MANIFEST_BYTES}-byte cap")
    atomic_write(mpath, data)
    return mpath, [s.get("keyid", "") for s in new["signatures"]]
