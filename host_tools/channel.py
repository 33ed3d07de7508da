"""The channel document (docs/FORMATS.md "Channel document"): the only file devices poll, signed
by the rollout role.

``{"_type": "channel", "spec": 1, "board", "channel", "seq", "expires",
   "release": {"version", "manifest", "manifest_sha256"},
   "rollout": {"id", "state", "groups", "percentage", "window"}, "keys_version"}``

``keys_version`` (optional) names the feed's newest keys document (keys/<N>.json): a board that
trusts an older one walks the versions up to it before it trusts this document's signature.

``rollout.state`` is one of active, paused, halted (paused/halted: devices start nothing new).
``rollout.window`` is null or {"start": "HH:MM", "end": "HH:MM"} in UTC (a maintenance window).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from host_tools.manifest import (
    MAX_CHANNEL_BYTES,
    SPEC,
    ManifestError,
    _extra,
    _get,
    _int,
    check_document,
    check_hex64,
    check_name,
    check_version,
    parse_payload,
    parse_time,
    payload_bytes,
    signed_bytes,
)

ROLLOUT_STATES = ("active", "paused", "halted")
MAX_KEYS_VERSION = 2**31 - 1
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]\Z")
_REL_PATH = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*\Z")


class ChannelError(ManifestError):
    pass


def check_window(w: Any) -> dict[str, str] | None:
    if w is None:
        return None
    if (not isinstance(w, dict) or set(w) != {"start", "end"}
            or not all(isinstance(w[k], str) and _HHMM.match(w[k]) for k in ("start", "end"))):
        raise ChannelError('rollout.window must be null or {"start": "HH:MM", "end": "HH:MM"} (UTC)')
    return {"start": w["start"], "end": w["end"]}


@dataclass
class ChannelRelease:
    version: str
    manifest: str
    manifest_sha256: str

    def __post_init__(self) -> None:
        check_version(self.version, "release.version")
        if (not isinstance(self.manifest, str) or not _REL_PATH.match(self.manifest)
                or ".." in self.manifest.split("/")):
            raise ChannelError(f"release.manifest {self.manifest!r} must be a path relative to the feed root")
        check_hex64(self.manifest_sha256, "release.manifest_sha256")

    @classmethod
    def from_dict(cls, d: Any) -> ChannelRelease:
        if not isinstance(d, dict):
            raise ChannelError("release must be an object")
        return cls(_get(d, "version", "release"), _get(d, "manifest", "release"),
                   _get(d, "manifest_sha256", "release"))

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version, "manifest": self.manifest, "manifest_sha256": self.manifest_sha256}


@dataclass
class Rollout:
    id: str
    state: str = "active"
    groups: list[str] = field(default_factory=list)
    percentage: float = 100.0
    window: dict[str, str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not 1 <= len(self.id) <= 128:
            raise ChannelError("rollout.id must be a string of 1-128 characters")
        if self.state not in ROLLOUT_STATES:
            raise ChannelError(f"rollout.state {self.state!r} must be one of {', '.join(ROLLOUT_STATES)}")
        if not isinstance(self.groups, list):
            raise ChannelError("rollout.groups must be a list of group names")
        for g in self.groups:
            check_name(g, "rollout group")
        p = self.percentage
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p <= 100.0:
            raise ChannelError(f"rollout.percentage {p!r} must be a number in 0..100")
        self.percentage = float(p)
        self.window = check_window(self.window)

    @classmethod
    def from_dict(cls, d: Any) -> Rollout:
        if not isinstance(d, dict):
            raise ChannelError("rollout must be an object")
        groups = d.get("groups", [])
        if not isinstance(groups, list):  # list() would take a string's characters as groups
            raise ChannelError("rollout.groups must be a list of group names")
        return cls(_get(d, "id", "rollout"), d.get("state", "active"), list(groups),
                   d.get("percentage", 100.0), d.get("window"))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "state": self.state, "groups": list(self.groups),
                "percentage": self.percentage, "window": self.window}


@dataclass
class ChannelDoc:
    board: str
    channel: str
    seq: int
    release: ChannelRelease
    rollout: Rollout
    expires: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    keys_version: int | None = None  # the feed's keys document version (None: the feed has none)

    def __post_init__(self) -> None:
        if isinstance(self.release, dict):
            self.release = ChannelRelease.from_dict(self.release)
        if isinstance(self.rollout, dict):
            self.rollout = Rollout.from_dict(self.rollout)
        check_name(self.board, "board")
        check_name(self.channel, "channel")
        _int(self.seq, "seq", 1, 2**53)
        if self.expires is not None:
            parse_time(self.expires, "expires")
        if self.keys_version is not None:
            _int(self.keys_version, "keys_version", 0, MAX_KEYS_VERSION)

    @property
    def path(self) -> str:
        """Where the document lives, relative to the feed root."""
        return channel_path(self.board, self.channel)

    @classmethod
    def from_dict(cls, d: Any) -> ChannelDoc:
        check_document(d, "channel", "channel document", ChannelError)
        known = ("_type", "spec", "board", "channel", "seq", "expires", "release", "rollout", "keys_version")
        return cls(
            board=_get(d, "board", "channel document"), channel=_get(d, "channel", "channel document"),
            seq=_get(d, "seq", "channel document"),
            release=ChannelRelease.from_dict(_get(d, "release", "channel document")),
            rollout=Rollout.from_dict(_get(d, "rollout", "channel document")),
            expires=d.get("expires"), extra=_extra(d, known), keys_version=d.get("keys_version"),
        )

    def to_dict(self) -> dict[str, Any]:
        d = {"_type": "channel", "spec": SPEC, "board": self.board, "channel": self.channel,
             "seq": self.seq, "expires": self.expires, "release": self.release.to_dict(),
             "rollout": self.rollout.to_dict(), **self.extra}
        if self.keys_version is not None:
            d["keys_version"] = self.keys_version
        return d

    def to_payload(self) -> bytes:
        return payload_bytes(self.to_dict())

    @classmethod
    def from_payload(cls, payload: bytes) -> ChannelDoc:
        return cls.from_dict(parse_payload(payload, "channel document"))

    def sign(self, keys: Any) -> bytes:
        from host_tools.dsse import CHANNEL_PAYLOAD_TYPE

        return signed_bytes(CHANNEL_PAYLOAD_TYPE, self.to_payload(), keys, MAX_CHANNEL_BYTES,
                            "channel document", "fewer groups?", ChannelError)

    @classmethod
    def from_envelope_bytes(cls, data: bytes, public_keys: Sequence[Any], source: str = "channel document",
                            threshold: int = 1) -> ChannelDoc:
        from host_tools.dsse import CHANNEL_PAYLOAD_TYPE, parse_envelope, verify_envelope

        env = parse_envelope(data, source)
        return cls.from_payload(verify_envelope(env, CHANNEL_PAYLOAD_TYPE, public_keys, threshold, source))

    @classmethod
    def from_envelope_unverified(cls, data: bytes, source: str = "channel document") -> ChannelDoc:
        """Parse without checking signatures: only for the publisher's own bookkeeping (seq)."""
        from host_tools.dsse import envelope_payload, parse_envelope

        return cls.from_payload(envelope_payload(parse_envelope(data, source), source))


def channel_path(board: str, channel: str) -> str:
    return f"channels/{check_name(board, 'board')}/{check_name(channel, 'channel')}.json"


def release_dir_path(board: str, version: str) -> str:
    return f"releases/{check_name(board, 'board')}/{check_version(version)}"
