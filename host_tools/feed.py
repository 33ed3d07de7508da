"""The static update feed (docs/FORMATS.md "Feed layout"): plain files any web server or CDN can host.

    channels/<board>/<channel>.json            channel document (DSSE, rollout role): devices poll it
    releases/<board>/<version>/manifest.json   release manifest (DSSE, release role)
    releases/<board>/<version>/<image file>    firmware.bin or firmware.bin.z
    releases/<board>/<version>/delta-from-<v>.patch[.z]   patches listed in the manifest (image.deltas)

Publishing order: image file(s), then the manifest, then the channel document, each written to a
temp file and renamed; so a server never serves a channel that points at a missing or partial
release. The channel's ``seq`` is the previous one + 1 (strictly growing; devices refuse replays).
One publisher at a time per feed (an flock on ``<feed>/.mpota-feed.lock``).

Freeze protection: channel documents expire (DEFAULT_CHANNEL_EXPIRES from publishing unless told
otherwise), so a mirror or a man in the middle cannot serve an old, validly signed channel forever
to a board whose clock is set. ``refresh_channels`` re-signs the same content with seq + 1 and a new
expiry before that (`mpota serve` does it on its own; `mpota feed refresh` is the cron job for a
feed on a plain static host).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from host_tools.channel import (
    ChannelDoc,
    ChannelError,
    ChannelRelease,
    Rollout,
    channel_path,
    release_dir_path,
)
from host_tools.errors import MpotaError
from host_tools.fsutil import atomic_write, make_dirs
from host_tools.keys import PrivateKey, PublicKey, role_allows
from host_tools.manifest import (
    DEFAULT_WINDOW_BITS,
    MAX_CHANNEL_BYTES,
    MAX_DELTAS,
    MAX_MANIFEST_BYTES,
    FirmwareManifest,
    check_name,
    check_version,
    format_time,
    parse_time,
    utc_now,
)
from host_tools.release import MANIFEST_NAME, load_release
from host_tools.versions import parse_version

LOCK_NAME = ".mpota-feed.lock"
DEFAULT_CHANNEL_EXPIRES = "7d"  # `--expires` default of every command that signs a channel document
Warn = Callable[[str], None]


class FeedError(MpotaError):
    """Publishing refused, or the feed does not verify."""


@dataclass
class FeedReport:
    channels: list[ChannelDoc] = field(default_factory=list)
    releases: list[tuple[str, str]] = field(default_factory=list)  # (board, version)
    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def default_rollout(board: str, version: str) -> dict[str, Any]:
    """A full release: every device on the channel, no stages."""
    stamp = utc_now().strftime("%Y%m%dT%H%M%SZ")
    return {"id": f"{board}-{version}-{stamp}", "state": "active", "groups": [], "percentage": 100.0,
            "window": None}


@contextlib.contextmanager
def feed_lock(feed_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Serialise publishers of one feed (CLI and server) so seq numbers never collide."""
    import fcntl

    root = Path(feed_dir)
    try:
        make_dirs(root)
        fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise FeedError(f"cannot use feed folder {root}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _check_key(key: PrivateKey, any_role: bool) -> None:
    if not isinstance(key, PrivateKey):
        raise FeedError("the rollout key must be a host_tools.keys.PrivateKey")
    if not any_role and not role_allows(key.role, "rollout"):
        what = f"a {key.role} key" if key.role else "a key without an mpota role"
        raise FeedError(f"{key.path or 'key'} is {what}; channel documents are signed by a rollout key "
                        "(for the demo's single-key mode use a 'both' key or --any-role)")


def read_channel(feed_dir: str | os.PathLike[str], board: str, channel: str,
                 public_keys: Sequence[PublicKey] | None = None) -> ChannelDoc | None:
    """The current channel document, or None. With public_keys its signature is verified."""
    path = Path(feed_dir) / channel_path(board, channel)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CHANNEL_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise FeedError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_CHANNEL_BYTES:
        raise FeedError(f"{path} is over the {MAX_CHANNEL_BYTES}-byte cap")
    try:
        if public_keys is None:
            return ChannelDoc.from_envelope_unverified(data, str(path))
        return ChannelDoc.from_envelope_bytes(data, public_keys, str(path))
    except MpotaError as exc:
        raise FeedError(f"existing channel document {path} is unreadable: {exc}") from None


def _release_manifest_unverified(feed: Path, rel_path: str) -> FirmwareManifest | None:
    from host_tools.dsse import envelope_payload, parse_envelope

    try:
        data = (feed / rel_path).read_bytes()
        return FirmwareManifest.from_payload(envelope_payload(parse_envelope(data)))
    except (OSError, MpotaError):
        return None


class Superseded(FeedError):
    """write_channel's claim declined: the document is no longer the one to publish."""


# (previous seq, sign(seq) -> bytes) -> (seq, bytes) recorded, or None: see write_channel
SeqClaim = Callable[[int, Callable[[int], bytes]], "tuple[int, bytes] | None"]


def _stamp_keys(feed: Path, doc: ChannelDoc, key: PrivateKey) -> None:
    """Name the feed's newest keys version in the document (boards walk up to it), refusing a
    key that version does not list as a rollout key: every board would refuse the document."""
    from host_tools import keyring

    version = keyring.current_version(feed)
    if not version:
        return
    doc.keys_version = version
    listed = keyring.read_version(feed, version).doc.role("rollout").keys
    if key.public_hex not in listed:
        raise FeedError(f"{key.path or 'the rollout key'} ({key.keyid[:16]}) is not a rollout key of keys "
                        f"v{version}: boards would refuse what it signs (mpota keys rotate --role rollout "
                        "--add its .pub first)")


def _sign_and_write_channel(feed: Path, doc: ChannelDoc, key: PrivateKey) -> None:
    _stamp_keys(feed, doc, key)
    atomic_write(feed / doc.path, doc.sign(key))


def write_channel(
    feed_dir: str | os.PathLike[str],
    board: str,
    channel: str,
    version: str,
    rollout: Mapping[str, Any],
    key: PrivateKey,
    expires: str | None = None,
    *,
    any_role: bool = False,
    claim: SeqClaim | None = None,
) -> ChannelDoc:
    """Sign and atomically write channels/<board>/<channel>.json pointing at an already-published
    release, with seq = previous + 1 and the given rollout {id, state, groups, percentage, window}.

    With ``claim`` (a server on a database) the seq is the database's: claim(previous seq, sign)
    signs under the seq it allocates, records the bytes and returns (seq, bytes), or None when
    there is nothing to publish any more: then nothing is written and Superseded is raised."""
    _check_key(key, any_role)
    feed = Path(feed_dir)
    check_name(board, "board")
    check_name(channel, "channel")
    check_version(version)
    if expires is not None:
        if parse_time(expires, "expires") <= utc_now():
            raise FeedError(f"expires {expires} is in the past")
    try:
        ro = Rollout.from_dict(dict(rollout))
    except ChannelError as exc:
        raise FeedError(str(exc)) from None
    rel = f"{release_dir_path(board, version)}/{MANIFEST_NAME}"
    with feed_lock(feed):
        try:
            with open(feed / rel, "rb") as f:
                mbytes = f.read(MAX_MANIFEST_BYTES + 1)
        except OSError:
            raise FeedError(f"release {board} {version} is not in the feed ({rel} missing)") from None
        prev = read_channel(feed, board, channel)
        doc = ChannelDoc(
            board=board, channel=channel, seq=(prev.seq + 1) if prev else 1,
            release=ChannelRelease(version, rel, hashlib.sha256(mbytes).hexdigest()),
            rollout=ro, expires=expires,
        )
        if claim is None:
            _sign_and_write_channel(feed, doc, key)
            return doc
        _stamp_keys(feed, doc, key)

        def sign(seq: int) -> bytes:
            doc.seq = seq
            return doc.sign(key)
        claimed = claim(prev.seq if prev else 0, sign)
        if claimed is None:
            raise Superseded(f"{board}/{channel}: a newer decision is published instead")
        doc.seq = claimed[0]
        atomic_write(feed / doc.path, claimed[1])
    return doc


def install_channels(feed_dir: str | os.PathLike[str],
                     docs: Sequence[tuple[str, str, int, bytes]]) -> list[str]:
    """Write each (board, channel, seq, signed bytes) whose seq is above the file's (a server
    replica catching up with what another one published); returns the paths written."""
    feed = Path(feed_dir)
    written: list[str] = []
    if not docs:
        return written
    with feed_lock(feed):
        for board, channel, seq, data in docs:
            try:
                prev = read_channel(feed, board, channel)
            except FeedError:
                prev = None  # unreadable: the recorded document replaces it
            if prev is None or prev.seq < seq:
                atomic_write(feed / channel_path(board, channel), data)
                written.append(channel_path(board, channel))
    return written


def _same_file(path: Path, data: bytes) -> bool | None:
    """True/False when path exists with/without exactly data; None when it does not exist."""
    try:
        return path.read_bytes() == data
    except FileNotFoundError:
        return None


def _same_release(a: bytes, b: bytes) -> bool:
    """Two manifests of one release that differ at most in image.deltas (`feed add --deltas` re-signs
    a release with patches added)."""
    from host_tools.dsse import envelope_payload, parse_envelope

    try:
        da, db = (FirmwareManifest.from_payload(envelope_payload(parse_envelope(x))).to_dict()
                  for x in (a, b))
    except MpotaError:
        return False
    for d in (da, db):
        d["image"].pop("deltas", None)
    return da == db


def _check_existing(feed: Path, board: str, version: str, image_name: str | None, mbytes: bytes,
                    wire: bytes) -> bytes | None:
    """The feed's manifest bytes when it already holds this release (perhaps with patches added by
    `feed add --deltas`), None when it has none; raise when it holds another release."""
    rel_dir = release_dir_path(board, version)
    dest = feed / rel_dir
    try:
        have: bytes | None = (dest / MANIFEST_NAME).read_bytes()
    except FileNotFoundError:
        have = None
    except OSError as exc:
        raise FeedError(f"cannot read {dest / MANIFEST_NAME}: {exc.strerror or exc}") from None
    if have is None:
        return None
    if have != mbytes and not _same_release(have, mbytes):
        raise FeedError(f"the feed already has a different release {board} {version} "
                        f"({dest / MANIFEST_NAME}); publish it under a new version")
    if image_name is not None and _same_file(dest / image_name, wire) is not True:
        raise FeedError(f"the feed's {rel_dir}/{image_name} does not match this release; "
                        "remove the broken release folder or publish a new version")
    return have


def _write_release(dest: Path, image_name: str | None, mbytes: bytes, wire: bytes,
                   patches: Sequence[tuple[str, bytes]] = ()) -> None:
    # Image and patches first, manifest last: a manifest in the feed always has its files next to it.
    if image_name is not None:  # None: an app-only release
        atomic_write(dest / image_name, wire)
    for name, data in patches:
        atomic_write(dest / name, data)
    atomic_write(dest / MANIFEST_NAME, mbytes)


def feed_releases(feed: Path, board: str) -> list[FirmwareManifest]:
    """The releases of a board in the feed (manifests read, signatures not checked), newest first."""
    out = []
    for mpath in sorted((feed / "releases" / board).glob(f"*/{MANIFEST_NAME}")):
        m = _release_manifest_unverified(feed, str(mpath.relative_to(feed)))
        if m is not None and mpath.parent.name == m.version:
            out.append(m)
    return sorted(out, key=lambda m: parse_version(m.version), reverse=True)


def _add_deltas(feed: Path, board: str, m: FirmwareManifest, wire: bytes, n: int, key: PrivateKey,
                window_bits: int) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Patches from the last n earlier releases of the board in the feed; the manifest re-signed
    with them listed. Returns (manifest bytes, [(file name, patch bytes)])."""
    import copy

    from host_tools.release import decode_stream, make_deltas

    img = m.firmware
    have = {d.base_hash for d in img.deltas}
    bases = [b for b in feed_releases(feed, board)
             if parse_version(b.version) < parse_version(m.version) and b.chip == m.chip
             and b.image is not None and b.image.hash != img.hash and b.image.hash not in have][:n]
    if not bases:
        raise FeedError(f"the feed has no earlier {board} release to make a patch from")
    if img.encoding == "zlib":
        assert img.window_bits is not None
        raw = decode_stream(wire, img.window_bits, img.size)
    else:
        raw = wire
    patches = make_deltas([feed / release_dir_path(board, b.version) for b in bases], raw, m.version, m.chip,
                          window_bits)
    m2 = copy.deepcopy(m)
    m2.firmware.deltas += [p.ref(name) for name, p in patches]
    try:
        m2.validate()
        mbytes = m2.sign([key])
    except MpotaError as exc:
        raise FeedError(f"cannot list the patches: {exc}") from None
    return mbytes, [(name, p.wire) for name, p in patches]


def _release_board(targets: Sequence[str], board: str | None) -> str:
    """The board a release is published for: the given one (which it must target) or its only one."""
    if board is None:
        if len(targets) != 1:
            raise FeedError(f"the release targets several boards ({', '.join(targets)}); "
                            "choose one with --board")
        return targets[0]
    if board not in targets:
        raise FeedError(f"board {board} is not in the release's target_hardware ({', '.join(targets)})")
    return board


def add_release(
    release_dir: str | os.PathLike[str],
    feed_dir: str | os.PathLike[str],
    *,
    board: str | None = None,
    release_keys: Sequence[PublicKey] | None = None,
    deltas: int = 0,
    release_key: PrivateKey | None = None,
    window_bits: int = DEFAULT_WINDOW_BITS,
    any_role: bool = False,
) -> str:
    """Copy a checked release into releases/<board>/<version>/ without touching any channel
    (e.g. to stage it before a rollout). Returns the manifest path relative to the feed root.

    deltas=N: also make patches from the last N earlier releases of the board in the feed and list
    them in the manifest, re-signed with release_key (the release folder itself is not changed)."""
    feed = Path(feed_dir)
    if deltas < 0 or deltas > MAX_DELTAS:
        raise FeedError(f"--deltas {deltas} must be in 0..{MAX_DELTAS}")
    if deltas and release_key is None:
        raise FeedError("patches change the signed manifest: give the release key to re-sign it")
    if deltas and release_key is not None and not any_role and not role_allows(release_key.role, "release"):
        raise FeedError(f"{release_key.path or 'key'} is not a release key; the manifest is signed by one")
    result, mbytes, wire = load_release(release_dir, release_keys)
    m = result.manifest
    board = _release_board(m.target_hardware, board)
    rel_dir = release_dir_path(board, m.version)
    with feed_lock(feed):
        if _check_existing(feed, board, m.version, result.image_name, mbytes, wire) is None:
            patches = result.extra_files
            if deltas:
                assert release_key is not None
                mbytes, more = _add_deltas(feed, board, m, wire, deltas, release_key, window_bits)
                patches += more
            _write_release(feed / rel_dir, result.image_name, mbytes, wire, patches)
        elif deltas:
            raise FeedError(f"the feed already holds {board} {m.version}; patches are made when it is added")
    return f"{rel_dir}/{MANIFEST_NAME}"


def publish_release(
    release_dir: str | os.PathLike[str],
    feed_dir: str | os.PathLike[str],
    channel: str,
    rollout_key: PrivateKey,
    rollout: Mapping[str, Any] | None = None,
    expires: str | None = None,
    allow_downgrade: bool = False,
    *,
    board: str | None = None,
    release_keys: Sequence[PublicKey] | None = None,
    any_role: bool = False,
    warn: Warn | None = None,
) -> ChannelDoc:
    """Copy a signed release into the feed and point the channel at it (the channel doc last).

    Refuses: a release that does not check out (hashes, image, and the signature when release_keys
    are given), a different release already published under the same board/version, and a lower
    security_version than the channel's current release unless allow_downgrade (then warns).
    """
    _check_key(rollout_key, any_role)
    say = warn or (lambda _msg: None)
    feed = Path(feed_dir)
    check_name(channel, "channel")
    if expires is not None and parse_time(expires, "expires") <= utc_now():
        raise FeedError(f"expires {expires} is in the past")
    result, mbytes, wire = load_release(release_dir, release_keys, allow_expired=False)
    m = result.manifest
    board = _release_board(m.target_hardware, board)
    ro_dict = dict(rollout) if rollout is not None else default_rollout(board, m.version)
    try:
        ro = Rollout.from_dict(ro_dict)
    except ChannelError as exc:
        raise FeedError(str(exc)) from None

    rel_dir = release_dir_path(board, m.version)
    with feed_lock(feed):
        existing = _check_existing(feed, board, m.version, result.image_name, mbytes, wire)
        prev = read_channel(feed, board, channel)
        if prev is not None:
            cur = _release_manifest_unverified(feed, prev.release.manifest)
            if cur is not None and m.security_version < cur.security_version:
                msg = (f"security_version {m.security_version} is lower than the channel's current release "
                       f"{cur.version} (security_version {cur.security_version}); devices that installed it "
                       "will refuse this one")
                if not allow_downgrade:
                    raise FeedError(msg + " (use --allow-downgrade to publish anyway)")
                say("warning: " + msg)
            if (parse_version(m.version) <= parse_version(prev.release.version)
                    and not m.metadata.allow_downgrade):
                say(f"warning: {m.version} is not newer than the channel's current {prev.release.version}; "
                    "devices already on it will not install it (publish a new version to roll back)")
        if existing is None:
            _write_release(feed / rel_dir, result.image_name, mbytes, wire, result.extra_files)
        doc = ChannelDoc(
            board=board, channel=channel, seq=(prev.seq + 1) if prev else 1,
            release=ChannelRelease(m.version, f"{rel_dir}/{MANIFEST_NAME}",
                                   hashlib.sha256(existing or mbytes).hexdigest()),
            rollout=ro, expires=expires,
        )
        _sign_and_write_channel(feed, doc, rollout_key)
    return doc


@dataclass
class Refreshed:
    path: str
    seq: int
    expires: str | None
    was: str | None  # the expiry it had (None: none)


def refresh_channels(
    feed_dir: str | os.PathLike[str],
    key: PrivateKey,
    valid_s: float,
    *,
    within_s: float | None = None,
    add_expiry: bool = False,
    any_role: bool = False,
    now: datetime | None = None,
    previous: Sequence[PublicKey] = (),
    vouch: Callable[[bytes], bool] | None = None,
    refused: list[str] | None = None,
) -> list[Refreshed]:
    """Re-sign every channel document of the feed that expires within ``within_s`` (default: half
    of ``valid_s``): the same content, seq + 1, expires = now + valid_s. A document without expiry
    was published so on purpose (--expires never) and is left alone unless ``add_expiry``.

    A document is re-signed only when its signature verifies with ``key``'s own public key, or
    with one of the ``previous`` keys this signer used before a rotation: the refresher must never
    lend its signature to a file someone else put in the feed. A document signed by a previous key
    or naming an older keys version than the feed's newest is re-signed at once, whatever its
    expiry (boards that took the new keys refuse it); with ``vouch``, a document signed by a
    previous key only when vouch(its bytes) says the signer wrote it (a leaked previous key must
    not get its documents re-signed with the new one). Raises FeedError naming the first document
    it refuses (after refreshing the others), or with ``refused`` appends one line per refusal to it.
    """
    from host_tools import keyring

    _check_key(key, any_role)
    if valid_s <= 0:
        raise FeedError("the validity of a refreshed channel document must be positive")
    feed = Path(feed_dir)
    if not (feed / "channels").is_dir():
        raise FeedError(f"{feed} holds no channels/ folder (is it a feed?)")
    margin = timedelta(seconds=valid_s / 2 if within_s is None else within_s)
    done: list[Refreshed] = []
    raise_refused = refused is None
    refused = [] if refused is None else refused
    with feed_lock(feed):
        t = (now or utc_now()).replace(microsecond=0)
        keys_version = keyring.current_version(feed)
        for path in sorted((feed / "channels").glob("*/*.json")):
            board, channel = path.parent.name, path.stem
            rotated = False
            try:
                doc = read_channel(feed, board, channel, [key.public])
            except FeedError as exc:
                try:
                    doc = read_channel(feed, board, channel, previous) if previous else None
                    rotated = doc is not None and (vouch is None or vouch(path.read_bytes()))
                except (FeedError, OSError):
                    doc = None
                if not rotated:
                    refused.append(f"{exc} (not re-signed)")
                    continue
            if doc is None:
                continue
            if (doc.board, doc.channel) != (board, channel):
                refused.append(f"{path}: says {doc.board}/{doc.channel} (not re-signed)")
                continue
            stale = rotated or (keys_version > 0 and doc.keys_version != keys_version)
            if doc.expires is None and not add_expiry and not stale:
                continue
            if not stale and doc.expires is not None and parse_time(doc.expires) - t > margin:
                continue
            was = doc.expires
            doc.seq += 1
            if doc.expires is not None or add_expiry:
                doc.expires = format_time(t + timedelta(seconds=valid_s))
            _sign_and_write_channel(feed, doc, key)
            done.append(Refreshed(doc.path, doc.seq, doc.expires, was))
    if refused and raise_refused:
        raise FeedError(refused[0] + (f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""))
    return done


def expires_seconds(text: str) -> float:
    """--expires for re-signing: a duration (7d, 12h, 90m, 45s, 2w)."""
    import re

    m = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text or "")
    if not m or int(m.group(1)) <= 0:
        raise FeedError(f"{text!r} must be a positive duration such as 7d, 12h or 30m")
    return float(int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)])


def verify_feed(
    feed_dir: str | os.PathLike[str],
    pubkeys: Sequence[PublicKey] = (),
    *,
    release_keys: Sequence[PublicKey] | None = None,
    rollout_keys: Sequence[PublicKey] | None = None,
) -> FeedReport:
    """Check every channel document and every release in a feed; problems are listed, not raised.

    ``pubkeys`` verify both roles unless release_keys / rollout_keys are given for a role.
    """
    feed = Path(feed_dir)
    rel_keys = list(release_keys) if release_keys is not None else list(pubkeys)
    ch_keys = list(rollout_keys) if rollout_keys is not None else list(pubkeys)
    if not rel_keys or not ch_keys:
        raise FeedError("no public keys given for the release and rollout roles")
    if not feed.is_dir():
        raise FeedError(f"feed folder {feed} does not exist")
    rep = FeedReport()
    now = utc_now()
    referenced: set[str] = set()
    for path in sorted((feed / "channels").glob("*/*.json")):
        doc = _check_channel(feed, path, ch_keys, now, rep)
        if doc is not None:
            referenced.add(doc.release.manifest)
    for mpath in sorted((feed / "releases").glob(f"*/*/{MANIFEST_NAME}")):
        # A release a channel points at must be in date; an old one only earns a warning.
        strict = mpath.relative_to(feed).as_posix() in referenced
        _check_release(feed, mpath, rel_keys, strict, now, rep)
    _check_channel_releases(rep)
    for stray in sorted(feed.rglob(".*.tmp")):
        rep.warnings.append(f"{stray.relative_to(feed).as_posix()}: leftover temp file "
                            "from an interrupted write")
    if not rep.channels and not rep.releases and not rep.problems:
        rep.problems.append("the feed holds no channel documents and no releases")
    return rep


def _add_problem(rep: FeedReport, feed: Path, rel: str, exc: object) -> None:
    """exc's words, prefixed with the file's path in the feed unless they name it already."""
    text = str(exc)
    known = text.startswith(rel) or text.startswith(str(feed / rel))
    rep.problems.append(text if known else f"{rel}: {text}")


def _check_channel(feed: Path, path: Path, keys: Sequence[PublicKey], now: datetime,
                   rep: FeedReport) -> ChannelDoc | None:
    """One channel document: signed, where its path says, in date, its manifest present with the
    pinned hash (then it joins rep.channels). Returns the document once it is known to be this
    channel's (its manifest counts as referenced), else None."""
    rel = path.relative_to(feed).as_posix()
    board, channel = path.parent.name, path.stem
    try:
        data = path.read_bytes()
        if len(data) > MAX_CHANNEL_BYTES:
            raise FeedError(f"over the {MAX_CHANNEL_BYTES}-byte cap")
        doc = ChannelDoc.from_envelope_bytes(data, keys, rel)
    except (OSError, MpotaError) as exc:
        _add_problem(rep, feed, rel, exc)
        return None
    if (doc.board, doc.channel) != (board, channel):
        rep.problems.append(f"{rel}: says board {doc.board} channel {doc.channel}, "
                            "not what its path says")
        return None
    if doc.expires is None:
        rep.warnings.append(f"{rel}: no expiry (a stale copy stays valid forever; "
                            "publish with --expires, then keep it fresh with `mpota feed refresh`)")
    elif parse_time(doc.expires) <= now:
        rep.problems.append(f"{rel}: expired at {doc.expires}")
    try:
        mbytes = (feed / doc.release.manifest).read_bytes()
    except OSError:
        rep.problems.append(f"{rel}: points at {doc.release.manifest}, which is missing")
        return doc
    if hashlib.sha256(mbytes).hexdigest() != doc.release.manifest_sha256:
        rep.problems.append(f"{rel}: manifest_sha256 does not match {doc.release.manifest}")
        return doc
    rep.channels.append(doc)
    rep.checked.append(f"{rel}: seq {doc.seq}, release {doc.release.version}, rollout {doc.rollout.id} "
                       f"{doc.rollout.state} {doc.rollout.percentage:g}%")
    return doc


def _check_release(feed: Path, mpath: Path, keys: Sequence[PublicKey], strict: bool, now: datetime,
                   rep: FeedReport) -> None:
    """One release folder: verifies (expired only when not strict) for its folder's board and
    version (then it joins rep.releases)."""
    rel = mpath.relative_to(feed).as_posix()
    board, version = mpath.parent.parent.name, mpath.parent.name
    try:
        result = load_release(mpath, keys, board=board, allow_expired=not strict)[0]
    except MpotaError as exc:
        _add_problem(rep, feed, rel, exc)
        return
    m = result.manifest
    if m.version != version:
        rep.problems.append(f"{rel}: manifest version {m.version} is not the folder's {version}")
        return
    if m.expires is not None and parse_time(m.expires) <= now:
        rep.warnings.append(f"{rel}: expired at {m.expires} (no channel points at it)")
    rep.releases.append((board, version))
    rep.checked.append(f"{rel}: {m.chip} {m.version}, security_version {m.security_version}, "
                       + (f"{m.image.encoding} {m.image.transfer_size} bytes" if m.image
                          else "no firmware")
                       + (f", app {len(m.app.files)} file(s) {m.app.size} bytes" if m.app else ""))


def _check_channel_releases(rep: FeedReport) -> None:
    """Each good channel's release verified, at the usual path (elsewhere: a warning)."""
    for doc in rep.channels:
        rel_ver = doc.release.version
        if doc.release.manifest != f"{release_dir_path(doc.board, rel_ver)}/{MANIFEST_NAME}":
            rep.warnings.append(f"{doc.path}: release {rel_ver} lives at an unusual path "
                                f"{doc.release.manifest}")
        elif (doc.board, rel_ver) not in rep.releases:
            rep.problems.append(f"{doc.path}: release {doc.board} {rel_ver} did not verify")
