"""The release manifest (docs/FORMATS.md "Release manifest"), signed as a DSSE envelope by the release role.

Fields: version, build_id, security_version, target_hardware, chip,
min_bootloader_version, image{url, size, hash, encoding, window_bits, transfer_size, transfer_hash},
metadata{release_notes, required}, created, expires; plus ``_type: "release"`` and ``spec: 1``.
``from_dict`` validates everything and raises ManifestError with one line; ``to_dict`` gives the
payload in the documented key order. Unknown keys are kept (``extra``) so newer fields survive.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from host_tools.errors import MpotaError
from host_tools.esp_image import CHIP_IDS
from host_tools.versions import VersionError, parse_version

SPEC = 1
ENCODINGS = ("none", "zlib")
DELTA_ENCODINGS = ("detools", "detools-zlib")  # host_tools/delta.py
MAX_DELTAS = 8
MIN_WINDOW_BITS = 9
MAX_WINDOW_BITS = 15
DEFAULT_WINDOW_BITS = 10
# Size caps the device enforces while reading (DESIGN "Device"); the host refuses to write more.
MAX_MANIFEST_BYTES = 16 * 1024
MAX_CHANNEL_BYTES = 8 * 1024
MAX_RELEASE_NOTES = 4096
# Application bundle (app{}): the files a board installs next to its firmware. The caps keep the
# signed manifest under its 16 KiB cap and the bundle within a board's filesystem.
MAX_APP_FILES = 64
MAX_APP_FILE_BYTES = 256 * 1024
MAX_APP_BYTES = 1024 * 1024
MAX_APP_DEPTH = 4
MAX_APP_PATH = 128

# \Z, not $ ($ also matches before a final newline), and [0-9], not \d (\d takes any Unicode
# digit): the device's rules, character for character.
# board and channel names: feed folders and file names, the server's registrations and rollouts
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_HASH = re.compile(r"^sha256:[0-9a-f]{64}\Z")
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")
_TIME = re.compile(r"^([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})Z\Z")
_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_BUILD_ID = re.compile(r"^[\x21-\x7e]{1,64}\Z")
# An app root: "/" and one folder name (the board keeps <root>.a and <root>.b beside each other).
_APP_ROOT = re.compile(r"^/[A-Za-z0-9_-]{1,32}\Z")
# One segment of a file path inside the root: no "..", no ".", no hidden files, no separators.
_APP_SEGMENT = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}\Z")


class ManifestError(MpotaError):
    """A document field is missing or invalid (the message names it)."""

    code = "malformed"  # the device's report reason for the same document


# --- time ---------------------------------------------------------------------------------------

def format_time(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def utc_now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def parse_time(text: Any, what: str = "time") -> datetime:
    """A UTC timestamp in the one form documents use: 2026-11-27T00:00:00Z."""
    m = _TIME.match(text) if isinstance(text, str) else None
    if not m:
        raise ManifestError(f"{what} {text!r} is not a UTC timestamp like 2026-11-27T00:00:00Z")
    try:
        y, mo, d, h, mi, s = (int(g) for g in m.groups())
        return datetime(y, mo, d, h, mi, s, tzinfo=timezone.utc)
    except ValueError:
        raise ManifestError(f"{what} {text!r} is not a valid date and time") from None


def parse_expires(text: str | None, now: datetime | None = None) -> str | None:
    """--expires: a UTC timestamp, a duration from now (90d, 12h, 30m, 2w, 45s) or 'never'."""
    if text is None or text == "never":
        return None
    base = now or utc_now()
    m = _DURATION.match(text.strip())
    if m:
        n, unit = int(m.group(1)), m.group(2)
        if n <= 0:
            raise ManifestError(f"--expires {text!r} must be in the future")
        secs = n * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit]
        return format_time(base + timedelta(seconds=secs))
    try:
        when = parse_time(text, "--expires")
    except ManifestError:
        raise ManifestError(
            f"--expires {text!r} is neither a UTC timestamp (2027-11-27T00:00:00Z), "
            "a duration (90d, 12h) nor 'never'"
        ) from None
    if when <= base:
        raise ManifestError(f"--expires {text} is in the past")
    return text


# --- field checks -------------------------------------------------------------------------------

def _get(d: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise ManifestError(f"{where}: missing field {key!r}")
    return d[key]


def _int(v: Any, what: str, lo: int = 0, hi: int = 2**32 - 1) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ManifestError(f"{what} must be an integer in {lo}..{hi}, not {v!r}")
    return int(v)


def _str(v: Any, what: str, max_len: int = 256) -> str:
    if not isinstance(v, str) or len(v) > max_len:
        raise ManifestError(f"{what} must be a string of at most {max_len} characters")
    return v


def check_name(v: Any, what: str) -> str:
    if not isinstance(v, str) or not NAME.fullmatch(v):
        raise ManifestError(f"{what} {v!r} must be 1-64 letters, digits, '.', '_' or '-'")
    return v


def check_version(v: Any, what: str = "version") -> str:
    try:
        parse_version(v)
    except VersionError as exc:
        raise ManifestError(f"{what}: {exc}") from None
    return str(v)


def check_hash(v: Any, what: str) -> str:
    if not isinstance(v, str) or not _HASH.match(v):
        raise ManifestError(f"{what} must be 'sha256:' and 64 lower-case hex digits")
    return v


def check_hex64(v: Any, what: str) -> str:
    if not isinstance(v, str) or not _HEX64.match(v):
        raise ManifestError(f"{what} must be 64 lower-case hex digits")
    return v


def check_url(v: Any, what: str) -> str:
    if not isinstance(v, str) or not v or len(v) > 512 or any(c in v for c in " \\\n\r\t"):
        raise ManifestError(f"{what} must be a non-empty URL or relative path without spaces")
    return v


def sha256_file(path: str | os.PathLike[str]) -> tuple[int, str]:
    """(size, 'sha256:<hex>') of a file, read in 64 KiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(65536):
            h.update(chunk)
            size += len(chunk)
    return size, "sha256:" + h.hexdigest()


def _extra(d: Mapping[str, Any], known: Iterable[str]) -> dict[str, Any]:
    k = set(known)
    return {key: value for key, value in d.items() if key not in k}


# --- documents ------------------------------------------------------------------------------------

@dataclass
class DeltaRef:
    """One patch a board running the base image may fetch instead of the image (image.deltas[]):
    base_size/base_hash name the base image, url/size/hash the patch file on the wire, encoding
    'detools' (a detools sequential patch, compression none) or 'detools-zlib' (that, in a zlib
    stream with window_bits)."""

    base_size: int
    base_hash: str
    url: str
    size: int
    hash: str
    encoding: str = "detools"
    window_bits: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        _int(self.base_size, "image.deltas[].base_size", 1)
        check_hash(self.base_hash, "image.deltas[].base_hash")
        check_url(self.url, "image.deltas[].url")
        _int(self.size, "image.deltas[].size", 1)
        check_hash(self.hash, "image.deltas[].hash")
        if self.encoding not in DELTA_ENCODINGS:
            raise ManifestError(f"image.deltas[].encoding {self.encoding!r} must be one of "
                                f"{', '.join(DELTA_ENCODINGS)}")
        if self.encoding == "detools-zlib":
            _int(self.window_bits, "image.deltas[].window_bits", MIN_WINDOW_BITS, MAX_WINDOW_BITS)
        elif self.window_bits is not None:
            raise ManifestError("image.deltas[].window_bits is only for encoding 'detools-zlib'")

    @classmethod
    def from_dict(cls, d: Any) -> DeltaRef:
        if not isinstance(d, dict):
            raise ManifestError("image.deltas[] must be an object")
        known = ("base_size", "base_hash", "url", "size", "hash", "encoding", "window_bits")
        return cls(
            base_size=_get(d, "base_size", "image.deltas[]"),
            base_hash=_get(d, "base_hash", "image.deltas[]"),
            url=_get(d, "url", "image.deltas[]"), size=_get(d, "size", "image.deltas[]"),
            hash=_get(d, "hash", "image.deltas[]"), encoding=_get(d, "encoding", "image.deltas[]"),
            window_bits=d.get("window_bits"), extra=_extra(d, known),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"base_size": self.base_size, "base_hash": self.base_hash, "url": self.url,
                               "size": self.size, "hash": self.hash, "encoding": self.encoding}
        if self.encoding == "detools-zlib":
            out["window_bits"] = self.window_bits
        out.update(self.extra)
        return out


@dataclass
class ImageRef:
    url: str
    size: int
    hash: str
    encoding: str = "none"
    window_bits: int | None = None
    transfer_size: int | None = None
    transfer_hash: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    deltas: list[DeltaRef] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.transfer_size is None and self.encoding == "none":
            self.transfer_size = self.size
        if self.transfer_hash is None and self.encoding == "none":
            self.transfer_hash = self.hash
        self.validate()

    def validate(self) -> None:
        check_url(self.url, "image.url")
        _int(self.size, "image.size", 1)
        check_hash(self.hash, "image.hash")
        if self.encoding not in ENCODINGS:
            raise ManifestError(f"image.encoding {self.encoding!r} must be one of {', '.join(ENCODINGS)}")
        _int(self.transfer_size, "image.transfer_size", 1)
        check_hash(self.transfer_hash, "image.transfer_hash")
        if self.encoding == "zlib":
            _int(self.window_bits, "image.window_bits", MIN_WINDOW_BITS, MAX_WINDOW_BITS)
        else:
            if self.window_bits is not None:
                raise ManifestError("image.window_bits is only for encoding 'zlib'")
            if self.transfer_size != self.size or self.transfer_hash != self.hash:
                raise ManifestError("image.transfer_size/transfer_hash must equal size/hash "
                                    "for encoding 'none'")
        if not isinstance(self.deltas, list) or len(self.deltas) > MAX_DELTAS:
            raise ManifestError(f"image.deltas must be a list of at most {MAX_DELTAS} patches")
        bases = set()
        for d in self.deltas:
            if not isinstance(d, DeltaRef):
                raise ManifestError("image.deltas[] must be a DeltaRef")
            d.validate()
            if d.base_hash == self.hash or d.base_hash in bases:
                raise ManifestError("image.deltas: one patch per base image, none from the image itself")
            bases.add(d.base_hash)

    @classmethod
    def from_dict(cls, d: Any) -> ImageRef:
        if not isinstance(d, dict):
            raise ManifestError("image must be an object")
        known = ("url", "size", "hash", "encoding", "window_bits", "transfer_size", "transfer_hash", "deltas")
        deltas = d.get("deltas", [])
        if not isinstance(deltas, list):
            raise ManifestError("image.deltas must be a list")
        return cls(
            url=_get(d, "url", "image"), size=_get(d, "size", "image"), hash=_get(d, "hash", "image"),
            encoding=d.get("encoding", "none"), window_bits=d.get("window_bits"),
            transfer_size=d.get("transfer_size"), transfer_hash=d.get("transfer_hash"),
            extra=_extra(d, known), deltas=[DeltaRef.from_dict(x) for x in deltas],
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"url": self.url, "size": self.size, "hash": self.hash,
                               "encoding": self.encoding}
        if self.encoding == "zlib":
            out["window_bits"] = self.window_bits
        out["transfer_size"] = self.transfer_size
        out["transfer_hash"] = self.transfer_hash
        if self.deltas:
            out["deltas"] = [d.to_dict() for d in self.deltas]
        out.update(self.extra)
        return out


def check_app_path(v: Any, what: str = "app.files[].path") -> str:
    """A file's path inside the app root: relative, '/'-separated segments of [A-Za-z0-9._-]
    (none empty, none starting with '.', so no '..'), at most MAX_APP_DEPTH deep and MAX_APP_PATH
    characters: it can never name anything outside the root."""
    if not isinstance(v, str) or not 0 < len(v) <= MAX_APP_PATH:
        raise ManifestError(f"{what} {v!r} must be a relative path of 1-{MAX_APP_PATH} characters")
    parts = v.split("/")
    if len(parts) > MAX_APP_DEPTH or not all(_APP_SEGMENT.match(p) for p in parts):
        raise ManifestError(f"{what} {v!r} must be at most {MAX_APP_DEPTH} '/'-separated names of "
                            "letters, digits, '.', '_' or '-' (no leading '.', no '..', not absolute)")
    return v


@dataclass
class AppFile:
    """One file of the bundle: its path inside the root, size and sha256."""

    path: str
    size: int
    hash: str
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        check_app_path(self.path)
        _int(self.size, "app.files[].size", 0, MAX_APP_FILE_BYTES)
        check_hash(self.hash, "app.files[].hash")

    @classmethod
    def from_dict(cls, d: Any) -> AppFile:
        if not isinstance(d, dict):
            raise ManifestError("app.files[] must be an object")
        return cls(_get(d, "path", "app.files[]"), _get(d, "size", "app.files[]"),
                   _get(d, "hash", "app.files[]"), _extra(d, ("path", "size", "hash")))

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "hash": self.hash, **self.extra}


@dataclass
class AppBundle:
    """The application files (app{}): installed under ``root`` (the board keeps two folders,
    <root>.a and <root>.b, and a pointer in its state). The bundle is one file on the wire
    (``url``), the files' bytes one after another in list order; ``size``/``hash`` are that
    file's, and every file's own size and hash are checked as it is written."""

    root: str
    url: str
    size: int
    hash: str
    files: list[AppFile]
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.root, str) or not _APP_ROOT.match(self.root):
            raise ManifestError(f"app.root {self.root!r} must be '/' and a folder name of 1-32 letters, "
                                "digits, '_' or '-'")
        check_url(self.url, "app.url")
        _int(self.size, "app.size", 0, MAX_APP_BYTES)
        check_hash(self.hash, "app.hash")
        if not isinstance(self.files, list) or not 0 < len(self.files) <= MAX_APP_FILES:
            raise ManifestError(f"app.files must list 1-{MAX_APP_FILES} files")
        seen: set[str] = set()
        folders: set[str] = set()
        for f in self.files:
            if not isinstance(f, AppFile):
                raise ManifestError("app.files[] must be an AppFile")
            f.validate()
            parts = f.path.split("/")
            dirs = {"/".join(parts[:i]) for i in range(1, len(parts))}
            if f.path in seen or f.path in folders or dirs & seen:
                raise ManifestError(f"app.files: {f.path!r} is listed twice or is both a file and a folder")
            seen.add(f.path)
            folders |= dirs
        if sum(f.size for f in self.files) != self.size:
            raise ManifestError("app.size must be the sum of the files' sizes")

    @classmethod
    def from_dict(cls, d: Any) -> AppBundle:
        if not isinstance(d, dict):
            raise ManifestError("app must be an object")
        files = _get(d, "files", "app")
        if not isinstance(files, list):
            raise ManifestError("app.files must be a list")
        return cls(root=_get(d, "root", "app"), url=_get(d, "url", "app"), size=_get(d, "size", "app"),
                   hash=_get(d, "hash", "app"), files=[AppFile.from_dict(f) for f in files],
                   extra=_extra(d, ("root", "url", "size", "hash", "files")))

    def to_dict(self) -> dict[str, Any]:
        return {"root": self.root, "url": self.url, "size": self.size, "hash": self.hash,
                "files": [f.to_dict() for f in self.files], **self.extra}


@dataclass
class Metadata:
    """``allow_downgrade`` (written only when true) lets a device install this release although it
    runs a newer version (a signed, deliberate downgrade; security_version still applies)."""

    release_notes: str = ""
    required: bool = False
    allow_downgrade: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _str(self.release_notes, "metadata.release_notes", MAX_RELEASE_NOTES)
        if not isinstance(self.required, bool):
            raise ManifestError("metadata.required must be true or false")
        if not isinstance(self.allow_downgrade, bool):
            raise ManifestError("metadata.allow_downgrade must be true or false")

    @classmethod
    def from_dict(cls, d: Any) -> Metadata:
        if not isinstance(d, dict):
            raise ManifestError("metadata must be an object")
        return cls(d.get("release_notes", ""), d.get("required", False), d.get("allow_downgrade", False),
                   _extra(d, ("release_notes", "required", "allow_downgrade")))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"release_notes": self.release_notes, "required": self.required}
        if self.allow_downgrade:
            out["allow_downgrade"] = True
        out.update(self.extra)
        return out


@dataclass
class FirmwareManifest:
    version: str
    build_id: str
    security_version: int
    target_hardware: list[str]
    chip: str
    image: ImageRef | None  # None: an app-only release (app is then required)
    min_bootloader_version: str | None = None
    metadata: Metadata = field(default_factory=Metadata)
    created: str = field(default_factory=lambda: format_time(utc_now()))
    expires: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    app: AppBundle | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def firmware(self) -> ImageRef:
        """The firmware image (ManifestError for an app-only release)."""
        if self.image is None:
            raise ManifestError(f"release {self.version} carries no firmware image (app files only)")
        return self.image

    def validate(self) -> None:
        check_version(self.version)
        if not isinstance(self.build_id, str) or not _BUILD_ID.match(self.build_id):
            raise ManifestError(f"build_id {self.build_id!r} must be 1-64 printable characters "
                                "without spaces")
        _int(self.security_version, "security_version")
        if not isinstance(self.target_hardware, list) or not self.target_hardware:
            raise ManifestError("target_hardware must be a non-empty list of board names")
        for b in self.target_hardware:
            check_name(b, "target_hardware entry")
        if self.chip not in CHIP_IDS:
            raise ManifestError(f"chip {self.chip!r} is not a known ESP32 chip")
        if self.min_bootloader_version is not None:
            _str(self.min_bootloader_version, "min_bootloader_version", 32)
        if self.image is None and self.app is None:
            raise ManifestError("a release carries a firmware image, an app bundle or both")
        if self.image is not None and not isinstance(self.image, ImageRef):
            raise ManifestError("image must be an ImageRef")
        if self.app is not None and not isinstance(self.app, AppBundle):
            raise ManifestError("app must be an AppBundle")
        if self.image is not None:
            self.image.validate()
        if self.app is not None:
            self.app.validate()
        created = parse_time(self.created, "created")
        if self.expires is not None and parse_time(self.expires, "expires") <= created:
            raise ManifestError(f"expires {self.expires} is not after created {self.created}")

    @classmethod
    def from_dict(cls, d: Any) -> FirmwareManifest:
        check_document(d, "release", "release manifest")
        known = ("_type", "spec", "version", "build_id", "security_version", "target_hardware", "chip",
                 "min_bootloader_version", "image", "metadata", "created", "expires", "app")
        image = d.get("image")
        app = d.get("app")
        return cls(
            version=_get(d, "version", "manifest"), build_id=_get(d, "build_id", "manifest"),
            security_version=_get(d, "security_version", "manifest"),
            target_hardware=_get(d, "target_hardware", "manifest"), chip=_get(d, "chip", "manifest"),
            min_bootloader_version=d.get("min_bootloader_version"),
            image=None if image is None and "app" in d else ImageRef.from_dict(_get(d, "image", "manifest")),
            app=None if app is None else AppBundle.from_dict(app),
            metadata=Metadata.from_dict(d.get("metadata", {})),
            created=_get(d, "created", "manifest"), expires=d.get("expires"), extra=_extra(d, known),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "_type": "release", "spec": SPEC, "version": self.version, "build_id": self.build_id,
            "security_version": self.security_version, "target_hardware": list(self.target_hardware),
            "chip": self.chip, "min_bootloader_version": self.min_bootloader_version,
        }
        if self.image is not None:
            out["image"] = self.image.to_dict()
        if self.app is not None:
            out["app"] = self.app.to_dict()
        out.update({"metadata": self.metadata.to_dict(), "created": self.created, "expires": self.expires,
                    **self.extra})
        return out

    def to_payload(self) -> bytes:
        """The exact bytes that get signed (compact JSON, UTF-8)."""
        return payload_bytes(self.to_dict())

    @classmethod
    def from_payload(cls, payload: bytes) -> FirmwareManifest:
        return cls.from_dict(parse_payload(payload, "release manifest"))

    # Signed file form (DSSE envelope bytes).
    def sign(self, keys: Any) -> bytes:
        from host_tools.dsse import RELEASE_PAYLOAD_TYPE

        return signed_bytes(RELEASE_PAYLOAD_TYPE, self.to_payload(), keys, MAX_MANIFEST_BYTES, "manifest",
                            "shorten the release notes")

    @classmethod
    def from_envelope_bytes(cls, data: bytes, public_keys: Sequence[Any], source: str = "manifest",
                            threshold: int = 1) -> FirmwareManifest:
        from host_tools.dsse import RELEASE_PAYLOAD_TYPE, parse_envelope, verify_envelope

        env = parse_envelope(data, source)
        return cls.from_payload(verify_envelope(env, RELEASE_PAYLOAD_TYPE, public_keys, threshold, source))


def check_document(d: Any, doc_type: str, what: str, error: type[ManifestError] = ManifestError) -> None:
    """What every signed document is before its own fields: a JSON object of ``doc_type`` and this
    tool's spec."""
    if not isinstance(d, dict):
        raise error(f"{what} must be a JSON object")
    if d.get("_type") != doc_type:
        raise error(f"_type is {d.get('_type')!r}, expected {doc_type!r}")
    if d.get("spec") != SPEC:
        raise error(f"spec {d.get('spec')!r} is not supported (this tool reads spec {SPEC})")


def signed_bytes(payload_type: str, payload: bytes, keys: Any, cap: int, what: str, hint: str,
                 error: type[ManifestError] = ManifestError) -> bytes:
    """The DSSE envelope of ``payload`` signed by ``keys``; refused when over the device's ``cap``
    (``hint``: how to shorten it)."""
    from host_tools.dsse import envelope_bytes, sign_envelope

    data = envelope_bytes(sign_envelope(payload_type, payload, keys))
    if len(data) > cap:
        raise error(f"signed {what} is {len(data)} bytes, over the device's {cap}-byte cap ({hint})")
    return data


def payload_bytes(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def parse_payload(payload: bytes, what: str) -> Any:
    try:
        return json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ManifestError(f"{what} payload is not JSON") from None


def create_manifest(
    firmware_path: str | os.PathLike[str],
    version: str,
    *,
    target_hardware: Sequence[str] | str = ("esp32-generic-4mb",),
    chip: str = "esp32",
    security_version: int = 0,
    build_id: str | None = None,
    min_bootloader_version: str | None = None,
    release_notes: str = "",
    required: bool = False,
    url: str | None = None,
    encoding: str = "none",
    window_bits: int | None = None,
    transfer_path: str | os.PathLike[str] | None = None,
    created: str | None = None,
    expires: str | None = None,
) -> FirmwareManifest:
    """A manifest for the raw image at firmware_path; the bytes on the wire are
    transfer_path when given (e.g. the zlib stream), else the image itself."""
    now = utc_now()
    try:
        size, digest = sha256_file(firmware_path)
        t_size, t_digest = sha256_file(transfer_path) if transfer_path is not None else (size, digest)
    except OSError as exc:
        raise ManifestError(f"cannot read {exc.filename}: {exc.strerror}") from None
    boards = [target_hardware] if isinstance(target_hardware, str) else list(target_hardware)
    return FirmwareManifest(
        version=version,
        build_id=build_id or now.strftime("%Y%m%d-%H%M%S"),
        security_version=security_version,
        target_hardware=boards,
        chip=chip,
        min_bootloader_version=min_bootloader_version,
        image=ImageRef(
            url=url or Path(transfer_path if transfer_path is not None else firmware_path).name,
            size=size, hash=digest, encoding=encoding,
            window_bits=window_bits if encoding == "zlib" else None,
            transfer_size=t_size, transfer_hash=t_digest,
        ),
        metadata=Metadata(release_notes, required),
        created=created or format_time(now),
        expires=expires,
    )


def save_manifest(manifest: FirmwareManifest, path: str | os.PathLike[str], keys: Any) -> bytes:
    """Sign and write atomically; returns the file bytes."""
    from host_tools.fsutil import atomic_write

    data = manifest.sign(keys)
    atomic_write(path, data)
    return data


def load_manifest(path: str | os.PathLike[str], public_keys: Sequence[Any]) -> FirmwareManifest:
    """Read a signed manifest file, verify it with the release keys and validate it."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest {path} is {len(data)} bytes, over the {MAX_MANIFEST_BYTES}-byte cap")
    return FirmwareManifest.from_envelope_bytes(data, public_keys, str(path))
