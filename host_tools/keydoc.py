"""The keys document (docs/FORMATS.md "Keys document"): which keys a fleet's boards trust, per role,
and how many of them must sign. Signed by the root role (DSSE, payloadType KEYS_PAYLOAD_TYPE);
published in the feed as ``keys/<version>.json``.

``{"_type": "keys", "spec": 1, "fleet": "acme-prod", "version": 2,
   "roles": {"root":    {"threshold": 2, "keys": ["04...", "04...", "04..."]},
             "release": {"threshold": 1, "keys": ["04..."]},
             "rollout": {"threshold": 1, "keys": ["04..."]}}}``

A key is the 65-byte uncompressed P-256 point as 130 lower-case hex digits; its keyid is the hex
SHA-256 of the point (docs/FORMATS.md "Keys and signatures"), so a document cannot name a key by
the wrong keyid. Version 0 is no document: it is the trust of a board configured with bare key
lists (``KeysDoc.legacy``), whose release keys act as its root keys.

Which next version a board accepts is host_tools.trust.check_keys (the device's rule, proven equal
by the corpus tests/vectors/trust).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from host_tools.errors import MpotaError
from host_tools.keys import KeyFileError, PublicKey, keyid_of
from host_tools.manifest import (
    SPEC,
    ManifestError,
    _extra,
    _get,
    _int,
    check_document,
    check_name,
    parse_payload,
    payload_bytes,
)

KEYS_PAYLOAD_TYPE = "application/vnd.mpota.keys+json"
MAX_KEYS_BYTES = 8 * 1024   # the device reads the envelope whole, like a channel document
MAX_ROLE_KEYS = 8           # a role lists at most 8 keys (an envelope carries at most 8 signatures)
MAX_VERSION = 2**31 - 1
ROLES = ("root", "release", "rollout")
_POINT = re.compile(r"^04[0-9a-f]{128}\Z")


class KeysDocError(ManifestError):
    """A keys document field is missing or invalid."""

    code = "malformed"


@dataclass
class RoleKeys:
    threshold: int
    keys: list[str]  # 130-digit lower-case hex points, distinct

    def __post_init__(self) -> None:
        if not isinstance(self.keys, list) or not 1 <= len(self.keys) <= MAX_ROLE_KEYS:
            raise KeysDocError(f"a role lists 1..{MAX_ROLE_KEYS} keys")
        for k in self.keys:
            if not isinstance(k, str) or not _POINT.match(k):
                raise KeysDocError("a key must be 130 lower-case hex digits of an uncompressed point (04...)")
        if len(set(self.keys)) != len(self.keys):
            raise KeysDocError("a role lists the same key twice")
        _int(self.threshold, "threshold", 1, len(self.keys))

    @classmethod
    def from_dict(cls, d: Any, role: str) -> RoleKeys:
        if not isinstance(d, dict):
            raise KeysDocError(f"roles.{role} must be an object")
        try:
            return cls(_get(d, "threshold", f"roles.{role}"), _get(d, "keys", f"roles.{role}"))
        except ManifestError as exc:
            raise KeysDocError(f"roles.{role}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "keys": list(self.keys)}

    def keyids(self) -> list[str]:
        return [keyid_of(bytes.fromhex(k)) for k in self.keys]

    def public_keys(self) -> list[PublicKey]:
        """The keys as PublicKey; a point off the curve verifies nothing, as on the device."""
        out = []
        for k in self.keys:
            try:
                out.append(PublicKey(bytes.fromhex(k)))
            except KeyFileError:
                continue
        return out


@dataclass
class KeysDoc:
    fleet: str | None  # None only for the legacy trust (version 0)
    version: int
    roles: dict[str, RoleKeys]
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.fleet is not None:
            check_name(self.fleet, "fleet")
        _int(self.version, "version", 0 if self.fleet is None else 1, MAX_VERSION)
        if set(self.roles) != set(ROLES):
            raise KeysDocError(f"roles must be exactly {', '.join(ROLES)}")

    @classmethod
    def legacy(cls, release: Sequence[str], rollout: Sequence[str]) -> KeysDoc:
        """Version 0: a board configured with bare key lists trusts each key of a role alone, and
        takes keys version 1 when one of its release keys signed it (they are its root keys)."""
        rel = sorted({k.lower() for k in release})
        return cls(None, 0, {"root": RoleKeys(1, rel), "release": RoleKeys(1, rel),
                             "rollout": RoleKeys(1, sorted({k.lower() for k in rollout}))})

    def role(self, name: str) -> RoleKeys:
        return self.roles[name]

    @classmethod
    def from_dict(cls, d: Any) -> KeysDoc:
        check_document(d, "keys", "keys document", KeysDocError)
        roles = _get(d, "roles", "keys document")
        if not isinstance(roles, dict):
            raise KeysDocError("roles must be an object")
        try:
            fleet = check_name(_get(d, "fleet", "keys document"), "fleet")
            version = _int(_get(d, "version", "keys document"), "version", 1, MAX_VERSION)
        except ManifestError as exc:
            raise KeysDocError(str(exc)) from None
        parsed = {r: RoleKeys.from_dict(_get(roles, r, "roles"), r) for r in ROLES}
        return cls(fleet, version, parsed, _extra(d, ("_type", "spec", "fleet", "version", "roles")))

    def to_dict(self) -> dict[str, Any]:
        if self.fleet is None:
            raise KeysDocError("the legacy trust (version 0) is no document")
        return {"_type": "keys", "spec": SPEC, "fleet": self.fleet, "version": self.version,
                "roles": {r: self.roles[r].to_dict() for r in ROLES}, **self.extra}

    def to_payload(self) -> bytes:
        return payload_bytes(self.to_dict())

    @classmethod
    def from_payload(cls, payload: bytes) -> KeysDoc:
        return cls.from_dict(parse_payload(payload, "keys document"))

    @classmethod
    def from_envelope_unverified(cls, data: bytes, source: str = "keys document") -> KeysDoc:
        """Parse without checking signatures (for `mpota keys show` and the feed's bookkeeping)."""
        from host_tools.dsse import envelope_payload, parse_envelope

        return cls.from_payload(envelope_payload(parse_envelope(data, source), source))

    def next(self, changes: Mapping[str, RoleKeys]) -> KeysDoc:
        """The next version with some roles replaced."""
        if self.fleet is None:
            raise MpotaError("the legacy trust has no fleet: start with `mpota keys init`")
        roles = {r: changes.get(r, self.roles[r]) for r in ROLES}
        return KeysDoc(self.fleet, self.version + 1, roles, dict(self.extra))


def keys_path(version: int) -> str:
    """Where a keys document lives, relative to the feed root."""
    return f"keys/{_int(version, 'keys version', 1, MAX_VERSION)}.json"
