"""DSSE envelopes (Dead Simple Signing Envelope v1), as docs/FORMATS.md describes them.

``{"payloadType": T, "payload": base64(bytes), "signatures": [{"keyid": hex, "sig": base64(DER)}]}``
signed over ``PAE = b"DSSEv1 %d %s %d %s" % (len(T), T, len(payload), payload)``.
Verification returns the exact payload bytes; the caller parses them.

The acceptance rules are the device's (device/mpota/dsse.py), proven equal by the shared corpus
tests/vectors/trust: the envelope's shape is checked before its payloadType; base64 is standard
or URL-safe, padded; a signature is DER or raw r||s; a signature without keyid (or with an empty
one) may be by any of the given keys, one whose keyid names no given key is ignored.
Every error carries ``code``, the device's report reason for the same verdict.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from host_tools.errors import MpotaError
from host_tools.keys import PrivateKey, PublicKey

RELEASE_PAYLOAD_TYPE = "application/vnd.mpota.release+json"
CHANNEL_PAYLOAD_TYPE = "application/vnd.mpota.channel+json"
MAX_SIGNATURES = 8  # the device refuses envelopes with more (each may cost it a P-256 verify)
_STD = re.compile(r"[A-Za-z0-9+/]*={0,2}")
_URL = re.compile(r"[A-Za-z0-9_-]*={0,2}")


class DsseError(MpotaError):
    """Root: the envelope is not acceptable."""

    code = "malformed"


class EnvelopeFormatError(DsseError):
    """Not a DSSE envelope (bad JSON, missing fields, bad base64)."""

    code = "malformed"


class PayloadTypeError(DsseError):
    """The envelope's payloadType is not the one expected."""

    code = "payload_type"


class SignatureError(DsseError):
    """Fewer valid signatures from the given keys than the threshold."""

    code = "bad_signature"


class UnknownKeyError(SignatureError):
    """No signature may be by a given key (keyids name other keys): e.g. the other role's key."""

    code = "unknown_key"


def pae(payload_type: str, payload: bytes) -> bytes:
    """Pre-Authentication Encoding: what the signature covers."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def sign_envelope(
    payload_type: str, payload: bytes, keys: PrivateKey | Iterable[PrivateKey]
) -> dict[str, Any]:
    """An envelope over payload signed by each key (one signature per distinct keyid)."""
    key_list = [keys] if isinstance(keys, PrivateKey) else list(keys)
    if not key_list:
        raise DsseError("no signing key given")
    message = pae(payload_type, payload)
    sigs: list[dict[str, str]] = []
    seen: set[str] = set()
    for key in key_list:
        if key.keyid in seen:
            continue
        seen.add(key.keyid)
        sigs.append({"keyid": key.keyid, "sig": base64.b64encode(key.sign(message)).decode("ascii")})
    if len(sigs) > MAX_SIGNATURES:
        raise DsseError(f"{len(sigs)} signatures: a device reads at most {MAX_SIGNATURES}")
    return {
        "payloadType": payload_type,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": sigs,
    }


def add_signatures(envelope: Mapping[str, Any], keys: Iterable[PrivateKey],
                   source: str = "envelope") -> dict[str, Any]:
    """The envelope with one more signature per key over the same payload (a second signer on
    another machine: thresholds). A key that already signed it is an error, as is a 9th signature."""
    check_envelope_shape(envelope, source)
    payload = _b64(envelope["payload"], "payload", source)
    message = pae(envelope["payloadType"], payload)
    sigs = [dict(s) for s in envelope["signatures"]]
    have = {s.get("keyid") for s in sigs}
    for key in keys:
        if key.keyid in have:
            raise DsseError(f"{source} is already signed by {key.path or 'key'} ({key.keyid[:16]})")
        have.add(key.keyid)
        sigs.append({"keyid": key.keyid, "sig": base64.b64encode(key.sign(message)).decode("ascii")})
    if len(sigs) > MAX_SIGNATURES:
        raise DsseError(f"{source}: {len(sigs)} signatures: a device reads at most {MAX_SIGNATURES}")
    return {**envelope, "signatures": sigs}


def envelope_bytes(envelope: Mapping[str, Any]) -> bytes:
    """The file form of an envelope: indented JSON, one trailing newline."""
    return (json.dumps(envelope, indent=2) + "\n").encode("utf-8")


def parse_envelope(data: bytes, source: str = "envelope") -> dict[str, Any]:
    """Parse envelope file bytes and check its shape (not its signatures)."""
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise EnvelopeFormatError(f"{source} is not JSON") from None
    check_envelope_shape(obj, source)
    assert isinstance(obj, dict)
    return obj


def b64decode(text: Any) -> bytes:
    """DSSE base64: standard or URL-safe alphabet (not both), padded; ValueError otherwise."""
    if not isinstance(text, str) or len(text) % 4:
        raise ValueError("not base64")
    if _STD.fullmatch(text):
        return base64.b64decode(text, validate=True)
    if _URL.fullmatch(text):
        return base64.urlsafe_b64decode(text)
    raise ValueError("not base64")


def _b64(text: Any, what: str, source: str) -> bytes:
    try:
        return b64decode(text)
    except (binascii.Error, ValueError):
        raise EnvelopeFormatError(f"{source}: {what} is not valid base64") from None


def check_envelope_shape(obj: Any, source: str = "envelope") -> None:
    if not isinstance(obj, dict):
        raise EnvelopeFormatError(f"{source} is not a DSSE envelope (expected a JSON object)")
    if not isinstance(obj.get("payloadType"), str) or not isinstance(obj.get("signatures"), list):
        raise EnvelopeFormatError(f"{source} is not a DSSE envelope (needs payloadType and signatures)")
    _b64(obj.get("payload"), "payload", source)
    sigs = obj["signatures"]
    if not 1 <= len(sigs) <= MAX_SIGNATURES:
        raise EnvelopeFormatError(f"{source}: {len(sigs)} signatures (1..{MAX_SIGNATURES} allowed)")
    for i, s in enumerate(sigs):
        if (not isinstance(s, dict) or not isinstance(s.get("sig"), str)
                or not isinstance(s.get("keyid", ""), str)):
            raise EnvelopeFormatError(f"{source}: signature {i} must be an object with a string sig "
                                      "(and keyid, when present)")


def envelope_payload(envelope: Mapping[str, Any], source: str = "envelope") -> bytes:
    """The payload bytes, unverified (for inspection only)."""
    check_envelope_shape(envelope, source)
    return _b64(envelope["payload"], "payload", source)


def verify_envelope(
    envelope: Mapping[str, Any],
    payload_type: str,
    public_keys: Sequence[PublicKey] | PublicKey,
    threshold: int = 1,
    source: str = "envelope",
) -> bytes:
    """Return the payload bytes once at least ``threshold`` distinct given keys signed it.

    Signatures whose keyid names no given key are ignored (as on the device); a signature without
    keyid is tried with every given key. Raises a DsseError subclass.
    """
    keys = [public_keys] if isinstance(public_keys, PublicKey) else list(public_keys)
    if not keys:
        raise SignatureError(f"{source}: no public key to verify with")
    if threshold < 1:
        raise DsseError("threshold must be at least 1")
    check_envelope_shape(envelope, source)
    if envelope["payloadType"] != payload_type:
        raise PayloadTypeError(
            f"{source}: payloadType is {envelope['payloadType'][:60]!r}, expected {payload_type!r}"
        )
    payload = _b64(envelope["payload"], "payload", source)
    message = pae(payload_type, payload)
    good: set[str] = set()
    tried = 0
    for entry in envelope["signatures"]:
        kid = entry.get("keyid") or None
        candidates = [k for k in keys if kid is None or k.keyid == kid]
        if not candidates:
            continue
        tried += 1
        try:
            sig = b64decode(entry["sig"])
        except (binascii.Error, ValueError):
            continue
        for k in candidates:
            if k.keyid not in good and k.verify(message, sig):
                good.add(k.keyid)
                break
    if len(good) >= threshold:
        return payload
    if tried:
        raise SignatureError(
            f"{source}: bad signature ({len(good)} valid of {threshold} needed)"
        )
    raise UnknownKeyError(f"{source}: not signed by any of the given keys (keyids name other keys)")
