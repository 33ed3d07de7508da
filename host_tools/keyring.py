"""A fleet's keys documents in its feed (``keys/<version>.json``, docs/FORMATS.md "Keys document"):
read the current version, and sign and add the next one.

Every version is written only after it passes the rule the boards apply (host_tools.trust
check_keys against the version before it; version 1 against its own root keys and, when given,
the legacy trust of boards configured with bare key lists), so a document a board would refuse
never reaches the feed. Writes hold the feed lock and replace files atomically.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from host_tools.dsse import envelope_bytes, parse_envelope, sign_envelope, verify_envelope
from host_tools.errors import MpotaError
from host_tools.keydoc import KEYS_PAYLOAD_TYPE, MAX_KEYS_BYTES, KeysDoc, RoleKeys, keys_path
from host_tools.keys import PrivateKey

_VERSION_FILE = re.compile(r"^([1-9][0-9]{0,9})\.json\Z")


class KeyringError(MpotaError):
    """The feed's keys documents cannot be read, or the next one would be refused by the boards."""


@dataclass
class Signed:
    doc: KeysDoc
    data: bytes  # the envelope file's bytes


def versions(feed_dir: str | os.PathLike[str]) -> list[int]:
    """The keys versions present in the feed, ascending."""
    folder = Path(feed_dir) / "keys"
    if not folder.is_dir():
        return []
    out = []
    for p in folder.iterdir():
        m = _VERSION_FILE.match(p.name)
        if m and p.is_file():
            out.append(int(m.group(1)))
    return sorted(out)


def read_version(feed_dir: str | os.PathLike[str], version: int) -> Signed:
    path = Path(feed_dir) / keys_path(version)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise KeyringError(f"cannot read {path}: {exc.strerror or exc}") from None
    doc = KeysDoc.from_envelope_unverified(data, str(path))
    if doc.version != version:
        raise KeyringError(f"{path} holds keys version {doc.version}")
    return Signed(doc, data)


def current(feed_dir: str | os.PathLike[str]) -> Signed | None:
    """The newest keys document of the feed (None: the feed has none), checked along the whole
    chain from version 1 as a board walks it: a feed whose chain a board would refuse is an error."""
    vs = versions(feed_dir)
    if not vs:
        return None
    if vs != list(range(1, len(vs) + 1)):
        raise KeyringError(f"{Path(feed_dir) / 'keys'} holds versions {vs}: every version from 1 is needed")
    first = read_version(feed_dir, 1)
    self_signed(first.data, first.doc)
    trusted = first
    from host_tools.trust import check_keys

    for v in vs[1:]:
        nxt = read_version(feed_dir, v)
        try:
            check_keys(nxt.data, trusted.doc)
        except MpotaError as exc:
            raise KeyringError(f"keys/{v}.json would be refused by boards trusting v{v - 1}: {exc}") from None
        trusted = nxt
    return trusted


def current_version(feed_dir: str | os.PathLike[str]) -> int:
    """The highest keys version in the feed (0: none), without checking signatures (the channel
    documents name it; boards check the chain themselves)."""
    vs = versions(feed_dir)
    return vs[-1] if vs else 0


def self_signed(data: bytes, doc: KeysDoc) -> None:
    root = doc.role("root")
    try:
        verify_envelope(parse_envelope(data, "keys document"), KEYS_PAYLOAD_TYPE, root.public_keys(),
                        root.threshold, "keys document")
    except MpotaError as exc:
        raise KeyringError(f"keys version {doc.version} is not signed by {root.threshold} of its own root "
                           f"keys: {exc}") from None


def sign(doc: KeysDoc, keys: Sequence[PrivateKey]) -> bytes:
    data = envelope_bytes(sign_envelope(KEYS_PAYLOAD_TYPE, doc.to_payload(), keys))
    if len(data) > MAX_KEYS_BYTES:
        raise KeyringError(f"signed keys document is {len(data)} bytes, over the device's "
                           f"{MAX_KEYS_BYTES}-byte cap")
    return data


def add(feed_dir: str | os.PathLike[str], doc: KeysDoc, keys: Sequence[PrivateKey],
        legacy: KeysDoc | None = None) -> Signed:
    """Sign `doc` with `keys` and write it as the feed's next keys version (publish)."""
    return publish(feed_dir, sign(doc, keys), legacy)


def publish(feed_dir: str | os.PathLike[str], data: bytes, legacy: KeysDoc | None = None) -> Signed:
    """Write signed keys document bytes as the feed's next keys version, once the boards would take
    them: version 1 signed by a threshold of its own root keys (and, with `legacy`, acceptable to
    boards still on bare key lists); any later version by check_keys after the current one."""
    from host_tools.feed import feed_lock
    from host_tools.fsutil import atomic_write, make_dirs
    from host_tools.trust import check_keys

    feed = Path(feed_dir)
    if len(data) > MAX_KEYS_BYTES:
        raise KeyringError(f"signed keys document is {len(data)} bytes, over the device's "
                           f"{MAX_KEYS_BYTES}-byte cap")
    doc = KeysDoc.from_envelope_unverified(data)
    with feed_lock(feed):
        cur = current(feed)
        want = 1 if cur is None else cur.doc.version + 1
        if doc.version != want:
            raise KeyringError(f"the feed's next keys version is {want}, not {doc.version}")
        why = refusal(data, doc, None if cur is None else cur.doc)
        if why is not None:
            raise KeyringError(f"boards would refuse keys v{doc.version}: {why}")
        if legacy is not None:
            try:
                check_keys(data, legacy)
            except MpotaError as exc:
                raise KeyringError(f"boards deployed with bare key lists would refuse keys v{doc.version} "
                                   f"(sign it with one of their release keys too): {exc}") from None
        target = feed / keys_path(doc.version)
        make_dirs(target.parent)
        atomic_write(target, data)
    return Signed(doc, data)


def refusal(data: bytes, doc: KeysDoc, before: KeysDoc | None) -> str | None:
    """Why boards trusting `before` (None: version 1, its own root keys only) would refuse keys
    document bytes `data`, or None when they would take it."""
    from host_tools.trust import check_keys

    try:
        if before is None:
            self_signed(data, doc)
        else:
            check_keys(data, before)
    except MpotaError as exc:
        return str(exc)
    return None


def before_of(feed_dir: str | os.PathLike[str] | None, doc: KeysDoc,
              legacy: KeysDoc | None = None) -> KeysDoc | None:
    """The version a board trusts before `doc`: the feed's version N-1 (unverified: it only says
    whose signatures belong on `doc`), or for version 1 the legacy trust (None: none given)."""
    if doc.version == 1 or feed_dir is None:
        return legacy if doc.version == 1 else None
    return read_version(feed_dir, doc.version - 1).doc


def check_signers(doc: KeysDoc, before: KeysDoc | None, keys: Sequence[PrivateKey]) -> None:
    """Every key is a root key of `doc` or of `before` (whose threshold must sign it too): any
    other signature counts for nothing on a board."""
    allowed = set(doc.role("root").keyids()) | (set(before.role("root").keyids()) if before else set())
    for k in keys:
        if k.keyid not in allowed:
            whose = f"keys v{doc.version}" + (f" or of v{before.version}" if before is not None else "")
            hint = "" if before is not None or doc.version == 1 else " (--feed: the version before it)"
            raise KeyringError(f"{k.path or 'key'} ({k.keyid[:16]}) is not a root key of {whose}{hint}")


def write_file(path: str | os.PathLike[str], doc: KeysDoc, keys: Sequence[PrivateKey],
               before: KeysDoc | None) -> Signed:
    """Sign `doc` with `keys` (maybe below a threshold) into a file outside the feed, for root
    holders on other machines to add their signatures (cosign) before it is published."""
    from host_tools.fsutil import atomic_write

    check_signers(doc, before, keys)
    data = sign(doc, keys)
    atomic_write(path, data)
    return Signed(doc, data)


def cosign(path: str | os.PathLike[str], keys: Sequence[PrivateKey], before: KeysDoc | None) -> Signed:
    """Add the signatures of `keys` (root keys of the document or of `before`, the version boards
    trust before it) to the keys document file at `path`, in place."""
    from host_tools.dsse import add_signatures, envelope_bytes, envelope_payload, parse_envelope
    from host_tools.fsutil import atomic_write

    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise KeyringError(f"cannot read {path}: {exc.strerror or exc}") from None
    env = parse_envelope(raw, str(path))
    if env["payloadType"] != KEYS_PAYLOAD_TYPE:
        raise KeyringError(f"{path} is not a keys document (payloadType {env['payloadType']})")
    doc = KeysDoc.from_payload(envelope_payload(env, str(path)))
    if before is not None and (before.version != doc.version - 1 or
                               (before.fleet is not None and before.fleet != doc.fleet)):
        raise KeyringError(f"{path} is keys v{doc.version} of fleet {doc.fleet}, not the version after "
                           f"v{before.version} of {before.fleet}")
    check_signers(doc, before, keys)
    try:
        data = envelope_bytes(add_signatures(env, keys, str(path)))
    except MpotaError as exc:
        raise KeyringError(str(exc)) from None
    if len(data) > MAX_KEYS_BYTES:
        raise KeyringError(f"{path} would be {len(data)} bytes, over the device's {MAX_KEYS_BYTES}-byte cap")
    atomic_write(path, data)
    return Signed(doc, data)


def edit_role(role: RoleKeys, add: Sequence[str] = (), remove: Sequence[str] = (),
              threshold: int | None = None) -> RoleKeys:
    """A role with keys added and removed (a key to remove named by its hex point or keyid)."""
    from host_tools.keys import keyid_of

    keys = list(role.keys)
    for k in add:
        if k in keys:
            raise KeyringError(f"key {keyid_of(bytes.fromhex(k))[:16]} is already listed")
        keys.append(k)
    for r in remove:
        r = r.lower()
        hit = [k for k in keys if k == r or keyid_of(bytes.fromhex(k)) == r]
        if not hit:
            raise KeyringError(f"no key {r[:16]}... in this role")
        keys.remove(hit[0])
    if not keys:
        raise KeyringError("a role needs at least one key")
    t = role.threshold if threshold is None else threshold
    if t > len(keys):
        raise KeyringError(f"threshold {t} over the role's {len(keys)} keys (lower it with --threshold)")
    return RoleKeys(t, keys)
