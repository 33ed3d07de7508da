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

from host_tools.appbundle import BUNDLE_NAME, AppBundleError, Bundle, build_bundle, check_bundle
from host_tools.delta import DeltaError, Patch, make_patch, patch_name
from host_tools.errors import MpotaError
from host_tools.esp_image import AppDesc, ImageError, load_app_image, parse_image
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


def _check_window_bits(window_bits: int) -> None:
    if not MIN_WINDOW_BITS <= window_bits <= MAX_WINDOW_BITS:
        raise ReleaseError(f"window bits {window_bits} must be in {MIN_WINDOW_BITS}..{MAX_WINDOW_BITS}")


def compress_image(data: bytes, window_bits: int = DEFAULT_WINDOW_BITS, level: int = 9) -> bytes:
    """A zlib stream (header + deflate + adler32) whose window is at most 2**window_bits bytes."""
    _check_window_bits(window_bits)
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


@dataclass(frozen=True)
class _ManifestFields:
    """What the signer says of a release beside its version and files; the same for a release with
    a firmware image and an app-only one."""
    board: Board
    build_id: str | None
    notes: str
    required: bool
    created: str
    expires: str | None
    min_bootloader_version: str | None
    extra_boards: Sequence[str]
    allow_version_downgrade: bool

    def manifest(self, version: str, security_version: int, image: ImageRef | None,
                 app: AppBundle | None) -> FirmwareManifest:
        b = self.board
        return FirmwareManifest(
            version=version,
            build_id=self.build_id or utc_now().strftime("%Y%m%d-%H%M%S"),
            security_version=security_version,
            target_hardware=[b.name, *[e for e in self.extra_boards if e != b.name]],
            chip=b.chip,
            min_bootloader_version=self.min_bootloader_version,
            image=image,
            metadata=Metadata(self.notes, self.required, self.allow_version_downgrade),
            created=self.created,
            expires=self.expires,
            app=app,
        )


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
    # Every option is checked before the app bundle is built or the image read.
    out = Path(out_dir)
    if version is not None:
        check_version(version, "--version")
    b = _release_board(board, extra_boards)
    keys = _resolve_keys(key, any_role, "release")
    _check_out_dir(out)
    _check_security_version(security_version)
    _check_window_bits(window_bits)
    created = format_time(utc_now())
    if expires is not None and parse_time(expires, "expires") <= parse_time(created):
        raise ReleaseError(f"expires {expires} is not in the future")
    fields = _ManifestFields(b, build_id, notes, required, created, expires, min_bootloader_version,
                             extra_boards, allow_version_downgrade)
    bundle = _build_app_bundle(app_dir, app_root, mpy_cross)
    if image_path is None:
        return _sign_app_only(out, keys, fields, bundle, version, security_version, delta_from)

    name = os.fspath(image_path)
    data, desc = _board_app_image(name, b)
    warnings: list[str] = []
    version = _release_version(name, desc.version, version, force_version, warnings)
    security_version = _release_security_version(security_version, desc.secure_version, warnings)
    image, files = _image_files(data, compress, window_bits, delta_from, version, b.chip, warnings)
    if bundle is not None:
        files.append((BUNDLE_NAME, bundle.data))
    manifest = fields.manifest(version, security_version, image, None if bundle is None else bundle.app)
    return _write_release_dir(out, manifest, keys, files, b.name, warnings)


def _release_board(board: str, extra_boards: Sequence[str]) -> Board:
    """The release's board, after checking that every extra board has the same chip."""
    from host_tools.boards import load_board

    b = load_board(board)
    for extra in extra_boards:
        other = load_board(extra)
        if other.chip != b.chip:
            raise ReleaseError(f"board {other.name} is an {other.chip}, {b.name} an {b.chip}: "
                               "one chip per release")
    return b


def _check_security_version(security_version: int | None) -> None:
    # bool is an int to Python but never a security version.
    if security_version is not None and (isinstance(security_version, bool)
                                         or not 0 <= security_version < 2**32):
        raise ReleaseError(f"security version {security_version} must be an integer in 0..4294967295")


def _build_app_bundle(app_dir: str | os.PathLike[str] | None, app_root: str,
                      mpy_cross: str | None) -> Bundle | None:
    if app_dir is None:
        return None
    try:
        return build_bundle(app_dir, app_root, mpy_cross=mpy_cross)
    except (AppBundleError, ManifestError) as exc:
        raise ReleaseError(str(exc)) from None


def _sign_app_only(out: Path, keys: list[PrivateKey], fields: _ManifestFields, bundle: Bundle | None,
                   version: str | None, security_version: int | None,
                   delta_from: Sequence[str | os.PathLike[str]]) -> ReleaseInfo:
    """A release without a firmware image: the app bundle alone, its version given."""
    if bundle is None:
        raise ReleaseError("nothing to sign: give a firmware image, --app DIR or both")
    if delta_from:
        raise ReleaseError("--delta-from needs a firmware image (an app-only release has none)")
    if version is None:
        raise ReleaseError("an app-only release needs --version")
    manifest = fields.manifest(version, security_version or 0, None, bundle.app)
    return _write_release_dir(out, manifest, keys, [(BUNDLE_NAME, bundle.data)], fields.board.name, [])


def _board_app_image(name: str, b: Board) -> tuple[bytes, AppDesc]:
    """The app image file's bytes and descriptor, checked to fit the board's chip and OTA slot."""
    data, rep = load_app_image(name)
    assert rep.app_desc is not None
    if rep.chip != b.chip:
        raise ReleaseError(f"{name} is an {rep.chip} image, but board {b.name} is an {b.chip}")
    if b.slot_size <= 0:
        raise ReleaseError(f"board {b.name} has no OTA slots to update")
    if len(data) > b.slot_size:
        raise ReleaseError(f"{name} is {len(data)} bytes, larger than board {b.name}'s OTA slot "
                           f"({b.slot_size} bytes)")
    return data, rep.app_desc


def _release_version(name: str, desc_version: str, version: str | None, force_version: bool,
                     warnings: list[str]) -> str:
    """The version to sign: --version, or the image's own; both given must agree unless forced."""
    if not desc_version:
        if version is None:
            raise ReleaseError(
                f"{name} carries no version (its esp_app_desc_t.version is empty, as in MicroPython's own "
                "ESP32 builds, which set CONFIG_APP_EXCLUDE_PROJECT_VER_VAR): give --version to say which "
                "release it is; devices compare that signed version, the image cannot tell them")
        return version
    if version is None:
        version = _version_core(desc_version)
        check_version(version, f"the version in {name}")
        return version
    if _version_core(desc_version) != version:
        if not force_version:
            raise ReleaseError(f"the image says version {desc_version!r} (esp_app_desc_t) but --version is "
                               f"{version!r}; rebuild the image or pass --force-version")
        warnings.append(f"image version {desc_version!r} differs from release version {version!r} (forced)")
    return version


def _release_security_version(given: int | None, secure_version: int, warnings: list[str]) -> int:
    """The security version to sign: the given one (a warning where the image says another), else
    the image's secure_version."""
    if given is None:
        return secure_version
    if given != secure_version:
        warnings.append(f"security_version {given} differs from the image's secure_version "
                        f"{secure_version}")
    return given


def _image_files(data: bytes, compress: bool, window_bits: int, delta_from: Sequence[str | os.PathLike[str]],
                 version: str, chip: str, warnings: list[str]) -> tuple[ImageRef, list[tuple[str, bytes]]]:
    """The manifest's image entry and the files it names: the image as sent, then one patch per
    delta base."""
    if compress:
        wire = compress_image(data, window_bits)
        if decode_stream(wire, window_bits, len(data)) != data:  # never publish a stream we cannot read
            raise ReleaseError("internal error: the zlib stream does not round-trip")
        file_name, encoding, wbits = ZLIB_NAME, "zlib", window_bits
        if len(wire) >= len(data):
            warnings.append(f"compression does not pay off for this image ({len(wire)} >= {len(data)} bytes)")
    else:
        wire, file_name, encoding, wbits = data, RAW_NAME, "none", None
    patches = make_deltas(delta_from, data, version, chip, window_bits)
    image = ImageRef(url=file_name, size=len(data), hash="sha256:" + hashlib.sha256(data).hexdigest(),
                     encoding=encoding, window_bits=wbits, transfer_size=len(wire),
                     transfer_hash="sha256:" + hashlib.sha256(wire).hexdigest(),
                     deltas=[p.ref(n) for n, p in patches])
    return image, [(file_name, wire), *((n, p.wire) for n, p in patches)]


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
    mpath = _manifest_path(path)
    raw = _read_manifest(mpath)
    payload, signed_by, checks = _open_envelope(raw, mpath, public_keys, threshold)
    m = _release_manifest(payload, mpath, board, allow_expired)
    checks.append(f"manifest fields (version {m.version}, security_version {m.security_version})")
    app_file, app_files = _check_app_bundle(mpath, m, checks)
    manifest_sha256 = hashlib.sha256(raw).hexdigest()
    if m.image is None:
        return (VerifyResult(m, mpath, None, manifest_sha256, signed_by, checks, [], app_file, app_files),
                raw, b"")
    img, wire = _read_image_file(mpath, m.image, checks)
    raw_image = _decode_image(wire, m.image, checks)
    patches = [(d.url, _check_patch(mpath, d)) for d in m.image.deltas]
    if m.image.deltas:
        checks.append(f"{len(m.image.deltas)} patch(es): size, hash and encoding")
    _check_app_image(raw_image, m, checks)
    return (VerifyResult(m, mpath, img, manifest_sha256, signed_by, checks, patches, app_file, app_files),
            raw, wire)


def _read_manifest(mpath: Path) -> bytes:
    # One byte over the cap is enough to refuse; a huge file is never read whole.
    try:
        with open(mpath, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as exc:
        raise ReleaseError(f"cannot read manifest {mpath}: {exc.strerror or exc}") from None
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ReleaseError(f"manifest {mpath} is over the {MAX_MANIFEST_BYTES}-byte cap")
    return raw


def _open_envelope(raw: bytes, mpath: Path, public_keys: Sequence[PublicKey] | None,
                   threshold: int) -> tuple[bytes, list[str], list[str]]:
    """The manifest's payload, the keyids that signed it and the first check's words; with
    public_keys None only the payload type is checked, not the signatures."""
    from host_tools.dsse import RELEASE_PAYLOAD_TYPE, envelope_payload, parse_envelope, verify_envelope

    env = parse_envelope(raw, str(mpath))
    if public_keys is None:
        if env["payloadType"] != RELEASE_PAYLOAD_TYPE:
            raise ReleaseError(f"{mpath}: payloadType is {env['payloadType']!r}, "
                               f"expected {RELEASE_PAYLOAD_TYPE!r}")
        return envelope_payload(env, str(mpath)), [], ["signature not checked (no release key given)"]
    payload = verify_envelope(env, RELEASE_PAYLOAD_TYPE, public_keys, threshold, str(mpath))
    signed_by = sorted({s.get("keyid", "") for s in env["signatures"]} & {k.keyid for k in public_keys})
    signers = ", ".join(k[:16] for k in signed_by)
    return payload, signed_by, [f"signature ({RELEASE_PAYLOAD_TYPE}) by {signers}"]


def _release_manifest(payload: bytes, mpath: Path, board: str | None,
                      allow_expired: bool) -> FirmwareManifest:
    """The manifest's fields, checked to be in date and (board given) to target the board."""
    try:
        m = FirmwareManifest.from_payload(payload)
    except ManifestError as exc:
        raise ReleaseError(f"{mpath}: {exc}") from None
    if m.expires is not None and parse_time(m.expires) <= utc_now() and not allow_expired:
        raise ReleaseError(f"{mpath}: the manifest expired at {m.expires}")
    if board is not None and board not in m.target_hardware:
        raise ReleaseError(f"{mpath}: board {board} is not in target_hardware "
                           f"({', '.join(m.target_hardware)})")
    return m


def _check_app_bundle(mpath: Path, m: FirmwareManifest,
                      checks: list[str]) -> tuple[tuple[str, bytes] | None, list[tuple[str, bytes]]]:
    """The app bundle file (name, bytes) and its files (path, bytes), each checked; none without one."""
    if m.app is None:
        return None, []
    app_file = (m.app.url, _release_file(mpath, m.app.url, "app bundle"))
    try:
        app_files = check_bundle(m.app, app_file[1])
    except AppBundleError as exc:
        raise ReleaseError(str(exc)) from None
    checks.append(f"app bundle: {len(m.app.files)} file(s) under {m.app.root}, {m.app.size} bytes, "
                  "each size and hash")
    return app_file, app_files


def _read_image_file(mpath: Path, ref: ImageRef, checks: list[str]) -> tuple[Path, bytes]:
    """The image file as sent (its path and bytes): inside the release folder, transfer size and hash
    as listed."""
    url = ref.url
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
    if t_size != ref.transfer_size:
        raise ReleaseError(f"{img.name} is {t_size} bytes, the manifest says {ref.transfer_size}")
    if "sha256:" + t_hex != ref.transfer_hash:
        raise ReleaseError(f"{img.name}: SHA-256 does not match the manifest's transfer_hash")
    checks.append(f"transfer size and hash ({t_size} bytes)")
    return img, wire


def _decode_image(wire: bytes, ref: ImageRef, checks: list[str]) -> bytes:
    """The raw image from the file as sent, inflated as the device will, size and hash as listed."""
    if ref.encoding == "zlib":
        assert ref.window_bits is not None
        raw_image = decode_stream(wire, ref.window_bits, ref.size)
        checks.append(f"zlib stream decodes with window_bits {ref.window_bits}")
    else:
        raw_image = wire
    if len(raw_image) != ref.size:
        raise ReleaseError(f"the image is {len(raw_image)} bytes, the manifest says {ref.size}")
    if "sha256:" + hashlib.sha256(raw_image).hexdigest() != ref.hash:
        raise ReleaseError("the image SHA-256 does not match the manifest's hash")
    checks.append(f"image size and hash ({ref.size} bytes)")
    return raw_image


def _check_app_image(raw_image: bytes, m: FirmwareManifest, checks: list[str]) -> None:
    """The signed image is a valid app image for the manifest's chip."""
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
