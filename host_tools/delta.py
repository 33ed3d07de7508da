"""Delta patches: a board rebuilds a new image from the image it runs plus a small patch.

The patch format is detools' *sequential* patch (the format ESP-IDF's esp_delta_ota applies), made
by detools' bsdiff with compression ``none``; the device (device/mpota/delta.py) applies it
streaming. On the wire it travels as is (encoding ``detools``) or inside the same bounded-window
zlib stream as full images (``detools-zlib``), whichever is smaller. The manifest lists each patch
under ``image.deltas`` with its base image's size and SHA-256 (host_tools/manifest.py DeltaRef).

detools' own compressions (heatshrink, as esp_delta_ota ships) are made here too, for comparison
only (bench/bench_delta.py): the device decodes zlib, which it already carries for full images.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from host_tools.errors import MpotaError
from host_tools.manifest import DEFAULT_WINDOW_BITS, DELTA_ENCODINGS, DeltaRef

ENC_RAW, ENC_ZLIB = DELTA_ENCODINGS


class DeltaError(MpotaError):
    """A patch cannot be made or does not rebuild the image it claims to."""


@dataclass
class Patch:
    """One patch on the wire: ``wire`` is what the board downloads."""

    base_size: int
    base_hash: str  # sha256:<hex> of the base image
    encoding: str  # ENC_RAW or ENC_ZLIB
    window_bits: int | None
    wire: bytes
    raw_size: int  # the detools patch before any zlib wrapping

    @property
    def hash(self) -> str:
        return "sha256:" + hashlib.sha256(self.wire).hexdigest()

    def ref(self, url: str) -> DeltaRef:
        return DeltaRef(self.base_size, self.base_hash, url, len(self.wire), self.hash, self.encoding,
                        self.window_bits)


def detools_patch(base: bytes, new: bytes, compression: str = "none") -> bytes:
    """A detools sequential bsdiff patch from base to new (compression: none, heatshrink, ...)."""
    import detools

    if not new:
        raise DeltaError("the new image is empty")
    out = io.BytesIO()
    try:
        detools.create_patch(io.BytesIO(base), io.BytesIO(new), out, compression=compression,
                             patch_type="sequential", algorithm="bsdiff", use_mmap=False)
    except detools.Error as exc:
        raise DeltaError(f"detools cannot make a patch: {exc}") from None
    return out.getvalue()


def apply_detools(base: bytes, patch: bytes) -> bytes:
    """detools' own applier (the reference the device applier is tested against)."""
    import detools

    out = io.BytesIO()
    try:
        detools.apply_patch(io.BytesIO(base), io.BytesIO(patch), out)
    except detools.Error as exc:
        raise DeltaError(f"the patch does not apply: {exc}") from None
    return out.getvalue()


def make_patch(base: bytes, new: bytes, window_bits: int = DEFAULT_WINDOW_BITS) -> Patch:
    """The smallest wire form of base -> new, checked: it decodes and rebuilds new byte for byte."""
    from host_tools.release import compress_image, decode_stream

    raw = detools_patch(base, new)
    z = compress_image(raw, window_bits)
    if len(z) < len(raw):
        wire, enc, wb = z, ENC_ZLIB, window_bits
    else:
        wire, enc, wb = raw, ENC_RAW, None
    # never publish a patch we cannot read back
    got = decode_stream(wire, window_bits, len(raw)) if enc == ENC_ZLIB else wire
    if apply_detools(base, got) != new:
        raise DeltaError("internal error: the patch does not rebuild the new image")
    return Patch(len(base), "sha256:" + hashlib.sha256(base).hexdigest(), enc, wb, wire, len(raw))


def patch_name(base_version: str, encoding: str) -> str:
    """The patch's file name in a release folder (image.deltas[].url is relative to the manifest)."""
    return f"delta-from-{base_version}.patch" + (".z" if encoding == ENC_ZLIB else "")
