"""DSSE envelopes (Dead Simple Signing Envelope), exactly as DESIGN.md "Trust model" fixes them.

``{"payloadType": T, "payload": base64(bytes), "signatures": [{"keyid": hex, "sig": base64(r||s)}]}``
signed over ``PAE = b"DSSEv1 %d %s %d %s" % (len(T), T, len(payload), payload)``.
Verification returns the exact payload bytes; the caller parses them.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from host_tools.errors import MpotaError
from host_tools.keys import PrivateKey, PublicKey

RELEASE_PAYLOAD_TYPE = "application/vnd.mpota.release+json"
CHANNEL_PAYLOAD_TYPE = "application/vnd.mpota.channel+json"


class DsseError(MpotaError):
    """Root: the envelope is not acceptable."""


class EnvelopeFormatError(DsseError):
    """Not a DSSE envelope (bad JSON, missing fields, bad base64)."""


class PayloadTypeError(DsseError):
    """The envelope's payloadType is not the one expected."""


class SignatureError(DsseError):
    """Fewer valid signatures from the given keys than the threshold."""


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
    return {
        "payloadType": payload_type,
        "payload": base64.b64encode(payload).decode("ascii"),
        "signatures": sigs,
    }


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


def _b64(text: Any, what: str, source: str) -> bytes:
    if not isinstance(text, str):
        raise EnvelopeFormatError(f"{source}: {what} is not a base64 string")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise EnvelopeFormatError(f"{source}: {what} is not valid base64") from None


def check_envelope_shape(obj: Any, source: str = "envelope") -> None:
    if not isinstance(obj, dict):
        raise EnvelopeFormatError(f"{source} is not a DSSE envelope (expected a JSON object)")
    for field in ("payloadType", "payload", "signatures"):
        if field not in obj:
            raise EnvelopeFormatError(f"{source} is not a DSSE envelope (no {field!r})")
    if not isinstance(obj["payloadType"], str):
        raise EnvelopeFormatError(f"{source}: payloadType is not a string")
    _b64(obj["payload"], "payload", source)
    sigs = obj["signatures"]
    if not isinstance(sigs, list) or not sigs:
        raise EnvelopeFormatError(f"{source}: signatures must be a non-empty list")
    for i, s in enumerate(sigs):
        if not isinstance(s, dict) or not isinstance(s.get("keyid", ""), str) or "sig" not in s:
            raise EnvelopeFormatError(f"{source}: signature {i} must be an object with keyid and sig")


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

    Signatures by keys not given are ignored (as on the device); raises a DsseError subclass.
    """
    keys = [public_keys] if isinstance(public_keys, PublicKey) else list(public_keys)
    if not keys:
        raise SignatureError(f"{source}: no public key to verify with")
    if threshold < 1:
        raise DsseError("threshold must be at least 1")
    check_envelope_shape(envelope, source)
    if envelope["payloadType"] != payload_type:
        raise PayloadTypeError(
            f"{source}: payloadType is {envelope['payloadType']!r}, expected {payload_type!r}"
        )
    payload = _b64(envelope["payload"], "payload", source)
    message = pae(payload_type, payload)
    by_id = {k.keyid: k for k in keys}
    good: set[str] = set()
    bad = 0
    for entry in envelope["signatures"]:
        key = by_id.get(str(entry.get("keyid", "")))
        candidates = [key] if key is not None else ([] if entry.get("keyid") else keys)
        try:
            sig = _b64(entry["sig"], "sig", source)
        except EnvelopeFormatError:
            bad += 1
            continue
        for k in candidates:
            if k.keyid not in good and k.verify(message, sig):
                good.add(k.keyid)
                break
        else:
            if candidates:
                bad += 1
    if len(good) >= threshold:
        return payload
    if bad:
        raise SignatureError(
            f"{source}: bad signature ({len(good)} valid of {threshold} needed; {bad} did not verify)"
        )
    raise SignatureError(f"{source}: not signed by any of the given keys ({len(good)} of {threshold} needed)")
