"""Channel publishing for the orchestrator: the one place that signs and writes channel documents.

``FeedPublisher`` re-signs channels/<board>/<channel>.json with the rollout key through
host_tools.feed.write_channel (seq = previous + 1, atomic replace), each with an expiry
(``expires_s``, default DEFAULT_EXPIRES_S), and ``keep_fresh()`` (called on the server's timer)
re-signs every channel of the feed with the same content and seq + 1 once less than half of that
validity is left, so devices never see a served channel expire while a stale copy elsewhere does.
``RecordingPublisher`` is the in-memory stand-in the orchestrator tests use to see every call.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from host_tools.errors import MpotaError

if TYPE_CHECKING:
    from host_tools.feed import SeqClaim
    from host_tools.keys import PrivateKey, PublicKey


class PublishError(MpotaError):
    pass


class ChannelLedger(Protocol):
    def note_channel(self, board: str, channel: str, seq: int, body: bytes) -> bool: ...


DEFAULT_EXPIRES_S = 7 * 86400.0


class FeedPublisher:
    def __init__(self, feed_dir: str | os.PathLike[str], key_path: str | os.PathLike[str],
                 expires_s: float | None = DEFAULT_EXPIRES_S, any_role: bool = False,
                 clock: Callable[[], float] = time.time) -> None:
        from host_tools.keys import load_private_key

        self.feed_dir = Path(feed_dir)
        self.key_path = Path(key_path)
        self.key = load_private_key(key_path, expect_role=None if any_role else "rollout")
        self._key_stamp = self._stamp()
        self.previous: list[PublicKey] = []  # keys this publisher signed with before a rotation
        self._wrote: set[str] = set()  # SHA-256 of the channel documents this publisher wrote
        self._keys_version = -1
        self.expires_s = expires_s
        self.any_role = any_role
        self.clock = clock
        self._next_check = 0.0
        # the server's store: documents re-signed here are recorded there, so every replica's
        # feed gets them and the next seq is above them (set by MpotaServer)
        self.ledger: ChannelLedger | None = None

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.key_path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def current_key(self) -> tuple[PrivateKey, str | None]:
        """The rollout key, read again when its file changed (a rotation without a restart: replace
        the file, e.g. by mv); a file that does not load keeps the key in use. Returns the key and
        a line to log when it changed or could not be read."""
        from host_tools.keys import load_private_key

        stamp = self._stamp()
        if stamp == self._key_stamp:
            return self.key, None
        try:
            new = load_private_key(self.key_path, expect_role=None if self.any_role else "rollout")
        except MpotaError as exc:
            return self.key, f"rollout key not reloaded, still signing with {self.key.keyid[:16]}: {exc}"
        self._key_stamp = stamp
        if new.keyid == self.key.keyid:
            return self.key, None
        if self.key.public.keyid not in {p.keyid for p in self.previous}:
            self.previous.append(self.key.public)
        old, self.key = self.key, new
        self._next_check = 0.0  # re-sign the channels with it now
        return new, f"rollout key changed: {old.keyid[:16]} -> {new.keyid[:16]} ({self.key_path})"

    def keep_fresh(self) -> list[str]:
        """Re-sign channels with less than half their validity left (at most every 1/8 of it, and
        at most once a minute), and at once every channel when the rollout key file or the feed's
        keys version changed: returns one line per document re-signed (and key changes)."""
        from host_tools import keyring

        _, note = self.current_key()
        lines = [note] if note else []
        version = keyring.current_version(self.feed_dir)
        if version != self._keys_version:
            self._keys_version = version
            self._next_check = 0.0
        if self.expires_s is None and not self.previous and not version:
            return lines
        now = self.clock()
        if now < self._next_check:
            return lines
        valid = self.expires_s if self.expires_s is not None else DEFAULT_EXPIRES_S
        self._next_check = now + min(60.0, valid / 8)
        from datetime import datetime, timezone

        from host_tools import feed

        refused: list[str] = []
        done = feed.refresh_channels(self.feed_dir, self.key, valid, any_role=self.any_role,
                                     now=datetime.fromtimestamp(now, timezone.utc),
                                     previous=self.previous, vouch=self._vouch, refused=refused)
        lines += refused
        for r in done:
            path = Path(r.path)
            data = self._note(path)
            if self.ledger is not None:
                self.ledger.note_channel(path.parent.name, path.stem, r.seq, data)
        return lines + [f"re-signed {r.path}: seq {r.seq}, expires {r.expires or 'never'}" for r in done]

    def _note(self, rel: Path) -> bytes:
        data = (self.feed_dir / rel).read_bytes()
        self._wrote.add(hashlib.sha256(data).hexdigest())
        return data

    def _vouch(self, data: bytes) -> bool:
        return hashlib.sha256(data).hexdigest() in self._wrote

    def _expires(self) -> str | None:
        if self.expires_s is None:
            return None
        from datetime import datetime, timedelta, timezone

        when = datetime.now(timezone.utc) + timedelta(seconds=self.expires_s)
        return when.strftime("%Y-%m-%dT%H:%M:%SZ")

    def publish(self, board: str, channel: str, version: str, rollout: dict[str, Any],
                claim: SeqClaim | None = None) -> int | None:
        from host_tools import feed

        key, _ = self.current_key()
        try:
            doc = feed.write_channel(self.feed_dir, board, channel, version, dict(rollout), key,
                                     expires=self._expires(), any_role=self.any_role, claim=claim)
        except feed.Superseded:
            return None
        self._note(Path(doc.path))
        return int(doc.seq)

    def current(self, board: str, channel: str) -> dict[str, Any] | None:
        from host_tools import feed

        doc = feed.read_channel(self.feed_dir, board, channel)
        if doc is None:
            return None
        return {"seq": doc.seq, "version": doc.release.version, "rollout": doc.rollout.to_dict()}

    def release_exists(self, board: str, version: str) -> bool:
        return (self.feed_dir / "releases" / board / version / "manifest.json").is_file()


class RecordingPublisher:
    """Stand-in: keeps the latest document per channel in memory and records every publish."""

    def __init__(self, releases: set[tuple[str, str]] | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.docs: dict[tuple[str, str], dict[str, Any]] = {}
        self.releases = releases
        self.fail_next = False

    def publish(self, board: str, channel: str, version: str, rollout: dict[str, Any],
                claim: SeqClaim | None = None) -> int | None:
        if self.fail_next:
            self.fail_next = False
            raise PublishError("publish failed (injected)")
        prev = self.docs.get((board, channel))
        seq = (prev["seq"] if prev else 0) + 1
        doc = {"seq": seq, "version": version, "rollout": dict(rollout)}
        if claim is not None:  # the store allocates the seq, as for the real feed
            claimed = claim(seq - 1, lambda s: json.dumps({**doc, "seq": s}, sort_keys=True).encode())
            if claimed is None:
                return None
            seq = doc["seq"] = claimed[0]
        self.docs[(board, channel)] = doc
        self.calls.append({"board": board, "channel": channel, **doc})
        return seq

    def current(self, board: str, channel: str) -> dict[str, Any] | None:
        return self.docs.get((board, channel))

    def release_exists(self, board: str, version: str) -> bool:
        return self.releases is None or (board, version) in self.releases
