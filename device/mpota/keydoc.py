# The keys document (docs/FORMATS.md "Keys document"): which release, rollout and root keys
# a board trusts and how many of each must sign. Loaded only when the channel names a keys
# version newer than the trusted one; a normal poll never imports this module.
#
#   new = step(data, trusted)   # the next version, checked against the trusted one (TUF's rule)
#   walk(updater, target)       # fetch, check, store and use versions up to target, one at a time
#   rekey(updater, url, target) # walk when the channel (at url, or its target) names newer keys
#   hint(channel_bytes)         # the keys version a channel names, read without its signature
#
# trusted / new: the document as a dict ({"fleet", "version", "roles": {role: {"threshold",
# "keys": [hex point, ...]}}}); legacy(release, rollout) is the version-0 trust of a board
# configured with bare key lists (its release keys act as root keys). The host applies the
# same rule (host_tools/trust.py check_keys); tests/vectors/trust holds both to one verdict.
from micropython import const

import mpota.errors as errors

KEYS = "application/vnd.mpota.keys+json"
MAX = const(8192)  # envelope bytes, read whole like a channel document
_MAX_KEYS = const(8)
_MAX_VERSION = const(0x7FFFFFFF)
_ROLES = ("root", "release", "rollout")
# The walk's one buffer: each keys envelope is read into it (when it fits) and, once parsed,
# P-256 works in it (at least mpota.p256.SCRATCH: tests hold it; without loading p256 for it).
_BUF = const(2048)


def _bad(what):
    raise errors.MetadataError("malformed", "bad keys " + what)


# 1-64 of [A-Za-z0-9._-] starting with a letter or digit (mpota.trust's name rule; kept here so
# the walk does not need that module in RAM)
def _name(v):
    if not isinstance(v, str) or not 0 < len(v) <= 64 or not v[0].isalpha() and not v[0].isdigit():
        _bad("fleet")
    for c in v:
        if not ("0" <= c <= "9" or "a" <= c <= "z" or "A" <= c <= "Z" or c in "._-"):
            _bad("fleet")


def _int(v, lo, hi, what):
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        _bad(what)
    return v


def _hexpoint(k):
    return (isinstance(k, str) and len(k) == 130 and k[:2] == "04"
            and all("0" <= c <= "9" or "a" <= c <= "f" for c in k))


# [(keyid hex, 65-byte point), ...] of one role, as mpota.dsse.open pairs them
def points(role):
    import binascii
    import hashlib

    out = []
    for h in role["keys"]:
        pt = binascii.unhexlify(h)
        out.append((str(binascii.hexlify(hashlib.sha256(pt).digest()), "ascii"), pt))
    return out


def legacy(release, rollout):
    rel = {"threshold": 1, "keys": [k.lower() for k in release]}
    ro = {"threshold": 1, "keys": [k.lower() for k in rollout]}
    return {"fleet": None, "version": 0, "roles": {"root": rel, "release": rel, "rollout": ro}}


# Every field of a parsed keys document valid, else MetadataError "malformed". Returns what a
# board keeps of it (fleet, version, each role's threshold and keys): no other field is held.
def check(doc):
    if not isinstance(doc, dict) or doc.get("_type") != "keys" or doc.get("spec") != 1:
        _bad("document")
    _name(doc.get("fleet"))
    _int(doc.get("version"), 1, _MAX_VERSION, "version")
    roles = doc.get("roles")
    if not isinstance(roles, dict):
        _bad("roles")
    for r in _ROLES:
        role = roles.get(r)
        if not isinstance(role, dict):
            _bad(r)
        ks = role.get("keys")
        if not isinstance(ks, list) or not 0 < len(ks) <= _MAX_KEYS:
            _bad(r)
        for i, k in enumerate(ks):
            if not _hexpoint(k) or k in ks[:i]:
                _bad(r)
        _int(role.get("threshold"), 1, len(ks), "threshold")
    return {"fleet": doc["fleet"], "version": doc["version"],
            "roles": {r: {"threshold": roles[r]["threshold"], "keys": roles[r]["keys"]} for r in _ROLES}}


# Envelope bytes `data` of the next keys version after `trusted`: signed by a threshold of the
# trusted root keys, of the same fleet (any fleet after the legacy trust), exactly version + 1,
# and signed by a threshold of its own root keys. Returns the new document or raises.
# The envelope is parsed once: its decoded signatures are checked against both root key sets,
# one set decoded at a time, and the envelope bytes are not held past that parse. `data` may be
# a function that fetches the bytes: then no caller's frame holds them while they are verified.
def step(data, trusted, scratch=None):
    if callable(data):
        data = data()
    if len(data) > MAX:
        raise errors.MetadataError("too_large", "keys document of %d bytes" % len(data))
    import mpota.dsse as dsse

    payload, digest, sigs = dsse.open(data, KEYS, None)
    data = None
    del dsse
    _verify(sigs, digest, trusted["roles"]["root"], scratch, "keys: root of trusted v%d" % trusted["version"])
    import mpota.dsse as dsse

    doc = check(dsse.parse(payload, "keys"))
    payload = None
    del dsse
    fleet = trusted["fleet"]
    if fleet is not None and doc["fleet"] != fleet:
        raise errors.MetadataError("wrong_target", "keys for fleet %s, this is %s" % (doc["fleet"], fleet))
    v = trusted["version"]
    if doc["version"] <= v:
        raise errors.MetadataError("replayed", "keys version %d, %d already trusted" % (doc["version"], v))
    if doc["version"] != v + 1:
        raise errors.MetadataError("malformed", "keys version %d, expected %d" % (doc["version"], v + 1))
    _verify(sigs, digest, doc["roles"]["root"], scratch, "keys v%d: its own new root" % doc["version"])
    return doc


# A threshold of `role`'s keys signed `digest` (sigs: the envelope's decoded signatures), else
# MetadataError "unknown_key" (none by a key of the role) or "bad_signature" (fewer than its
# threshold), the error naming `which` root (the trusted one or the document's own). mpota.dsse
# and mpota.p256 take turns in RAM (as in the updater's checks): the walk fits the heap of a poll.
def _verify(sigs, digest, role, scratch, which):
    import mpota.dsse as dsse

    try:
        pairs = dsse.pair(sigs, points(role), KEYS)
    except errors.MetadataError:
        raise errors.MetadataError("unknown_key", which + ": no signature by its keys")
    del dsse
    _drop("dsse")
    import mpota.p256 as p256

    ok = p256.verify_any(pairs, digest, scratch, role["threshold"])
    pairs = None
    del p256
    _drop("p256")
    if not ok:
        raise errors.MetadataError("bad_signature", which + ": fewer than %d of its keys" % role["threshold"])


def _drop(name):
    import sys

    if sys.implementation.name == "micropython":
        from mpota.updater import _unload

        _unload(name)


# The keys_version a channel document names, read without checking its signature (the channel
# may be signed by a rollout key the board does not trust yet): it only says how far to walk;
# every version is checked by step(). 0 when there is none.
def hint(data):
    import binascii
    import json

    try:
        p = json.loads(data)["payload"].replace("-", "+").replace("_", "/")  # either DSSE alphabet
        v = json.loads(binascii.a2b_base64(p)).get("keys_version")
    except Exception:  # not an envelope, not base64, not JSON: nothing to walk to
        return 0
    return v if isinstance(v, int) and not isinstance(v, bool) and 0 < v <= _MAX_VERSION else 0


# Walk the trusted keys up to version `target`, or with `url` up to the keys_version the channel
# there names, read without its signature (u: the Updater). True when newer keys are trusted now.
def rekey(u, url, target):
    if url is not None:
        from mpota.check import _fetch

        target = hint(_fetch(u, url, u.cfg.channel_max))
    if target <= u.cfg.keys_version:
        return False
    walk(u, target)
    return True


# Walk the feed's keys/<N>.json from the trusted version up to `target`, one version at a time
# (u: the Updater: its fetch with retries, its config). Each version taken is stored and put to
# use before the next is fetched; a refused one raises its error, the versions before it kept.
def walk(u, target):
    import mpota.keystore as keystore
    from mpota.check import _fetch

    cfg = u.cfg
    t = keystore.trusted_of(cfg)
    del keystore
    _drop("keystore")  # back for each save: out of RAM while the walk fetches and verifies
    if t is None:
        t = legacy(cfg["keys"]["release"], cfg["keys"]["rollout"])
    # Not the 4 KiB block buffer across the fetches but one 2 KiB buffer, made here before the
    # fetches and the module loads fragment the heap, for each envelope and then P-256 (a buffer
    # per document and a scratch per verify, or one made after loading p256 to read its size,
    # cost up to 4 KB more in bench_keys); the channel check after the walk makes the block
    # buffer again.
    u._buf = None
    buf = bytearray(_BUF)
    while True:
        # what the next step needs of the trusted version; its release and rollout keys are in
        # cfg (decoded) and in the stored file
        t = {"fleet": t["fleet"], "version": t["version"], "roles": {"root": t["roles"]["root"]}}
        if t["version"] >= target:
            return
        url = "%skeys/%d.json" % (cfg.feed_url, t["version"] + 1)
        t = step(lambda: _fetch(u, url, MAX, None, buf), t, buf)
        import mpota.keystore as keystore

        keystore.save(cfg, t)
        del keystore
        _drop("keystore")
        cfg.use(t)
        print("mpota: keys v%d of %s trusted" % (t["version"], t["fleet"]))
