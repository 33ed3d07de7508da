# The device's trust rules (docs/FORMATS.md): pure functions over parsed documents and what
# the device knows; no I/O, no module unloading. Each returns the checked document (or the
# decision) or raises the mpota.errors class whose `code` goes into the `failed` report.
# The host tools apply the same rules (host_tools/trust.py); tests/vectors/trust is the
# corpus both must pass, under CPython and the MicroPython unix port.
#
#   ch = channel(doc, board, name, seen, now)         # the channel document, checked
#   wanted(ch, group, device_id, running, now)        # True: fetch its manifest
#   m = manifest(doc, ch, board, chip, running, floor, slot_size, now)
#   o = offer(ch, m, manifest_url)                    # what the updater installs (an Offer)
#
# now: ("YYYY-MM-DDTHH:MM:SS", minute of the day) in UTC, or None when the clock is not set
# (then expiry and the rollout window are not enforced).
from micropython import const

import mpota.errors as errors

_SPEC = const(1)
_GROWTH = const(64)  # a zlib transfer may exceed the raw size by size/64 + 1 KiB
_U32 = const(0xFFFFFFFF)
_ZLIB_MAX_WBITS = const(15)
_NO_IMAGE = {"url": "", "size": 0, "hash": ""}  # type: dict
_MAX_DELTAS = const(8)
# The names of mpota.imagehdr.CHIPS, copied: importing imagehdr here costs the update ~2 KB of heap
# (bench_heap, zlib). tests/test_shared_definitions.py holds the two together.
_CHIPS = ("esp32", "esp32s2", "esp32s3", "esp32c2", "esp32c3", "esp32c5", "esp32c6", "esp32c61",
          "esp32h2", "esp32p4")
_STATES = ("active", "paused", "halted")


# `what` is the field's own name (already interned: no new qstr per message).
def _bad(what):
    raise errors.MetadataError("malformed", "bad " + what)


def _an(c):
    return "0" <= c <= "9" or "a" <= c <= "z" or "A" <= c <= "Z"


# 1-64 of [A-Za-z0-9._-], starting with a letter or digit (boards, channels, groups).
def _name(v, what):
    if not isinstance(v, str) or not 0 < len(v) <= 64 or not _an(v[0]):
        _bad(what)
    for c in v:
        if not (_an(c) or c in "._-"):
            _bad(what)
    return v


def _int(v, what, lo=0, hi=_U32):
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        _bad(what)
    return v


def _hex(v, n):
    return isinstance(v, str) and len(v) == n and all("0" <= c <= "9" or "a" <= c <= "f" for c in v)


def _hash(v, what):
    if not (isinstance(v, str) and v[:7] == "sha256:" and _hex(v[7:], 64)):
        _bad(what)
    return v


def _digits(s):
    return all("0" <= c <= "9" for c in s)


# A release version: MAJOR.MINOR.PATCH[-PRERELEASE], no leading zeros, at most 31 characters.
def version(v):
    if not isinstance(v, str) or not 0 < len(v) <= 31:
        _bad("version")
    i = v.find("-")
    nums = (v if i < 0 else v[:i]).split(".")
    if len(nums) != 3:
        _bad("version")
    for f in nums + (v[i + 1:].split(".") if i >= 0 else []):
        if not f or not all(_an(c) or c == "-" for c in f) or (
                _digits(f) and len(f) > 1 and f[0] == "0"):
            _bad("version")
    for f in nums:
        if not _digits(f):
            _bad("version")
    return v


# "YYYY-MM-DDTHH:MM:SSZ" -> "YYYY-MM-DDTHH:MM:SS" (compares as text), or None for None.
def _time(v, what):
    if v is None:
        return None
    if not isinstance(v, str) or len(v) != 20:
        _bad(what)
    for i, t in enumerate("0000-00-00T00:00:00Z"):
        if not ("0" <= v[i] <= "9" if t == "0" else v[i] == t):
            _bad(what)
    y, mo, d = int(v[:4]), int(v[5:7]), int(v[8:10])
    dim = (31, 29 if y % 4 == 0 and (y % 100 or y % 400 == 0) else 28, 31, 30, 31, 30, 31, 31, 30, 31,
           30, 31)[mo - 1] if 0 < mo < 13 else 0
    if y < 1 or not 0 < d <= dim or int(v[11:13]) > 23 or int(v[14:16]) > 59 or int(v[17:19]) > 59:
        _bad(what)
    return v[:19]


def _expired(exp, now, what):
    if exp is not None and now is not None and exp <= now[0]:
        raise errors.MetadataError("expired", what + " expired " + exp)


def _hhmm(s):
    if not isinstance(s, str) or len(s) != 5 or s[2] != ":" or not _digits(s[:2] + s[3:]):
        _bad("window")
    h, m = int(s[:2]), int(s[3:])
    if h > 23 or m > 59:
        _bad("window")
    return h * 60 + m


def _spec(doc, type_):
    if not isinstance(doc, dict) or doc.get("_type") != type_ or doc.get("spec") != _SPEC:
        _bad(type_)


# The channel document `doc` (the verified payload, parsed) for this board and channel
# (`name`), whose seq must not be below `seen`. Returns doc.
def channel(doc, board, name, seen, now):
    _spec(doc, "channel")
    _name(doc.get("board"), "board")
    _name(doc.get("channel"), "channel")
    seq = _int(doc.get("seq"), "seq", 1, 1 << 53)
    exp = _time(doc.get("expires"), "expires")
    kv = doc.get("keys_version")  # the feed's keys document version (mpota.keydoc)
    if kv is not None:
        _int(kv, "keys_version", 0, 0x7FFFFFFF)
    rel = doc.get("release")
    if not isinstance(rel, dict):
        _bad("release")
    version(rel.get("version"))
    m = rel.get("manifest")
    if not isinstance(m, str) or not m or m[0] == "/" or ".." in m.split("/"):
        _bad("manifest")
    for p in m.split("/"):
        if not p or not all(_an(c) or c in "._-" for c in p):
            _bad("manifest")
    if not _hex(rel.get("manifest_sha256"), 64):
        _bad("manifest_sha256")
    ro = doc.get("rollout")
    if not isinstance(ro, dict):
        _bad("rollout")
    rid = ro.get("id")
    if not isinstance(rid, str) or not 0 < len(rid) <= 128:
        _bad("id")
    if ro.get("state", "active") not in _STATES:
        _bad("state")
    gs = ro.get("groups", [])
    if not isinstance(gs, list):
        _bad("groups")
    for g in gs:
        _name(g, "groups")
    pct = ro.get("percentage", 100)
    if isinstance(pct, bool) or not isinstance(pct, (int, float)) or not 0 <= pct <= 100:
        _bad("percentage")
    w = ro.get("window")
    if w is not None:
        if not isinstance(w, dict) or len(w) != 2:
            _bad("window")
        _hhmm(w.get("start"))
        _hhmm(w.get("end"))
    if doc["board"] != board or doc["channel"] != name:
        raise errors.MetadataError("wrong_target", "channel is for %s/%s" % (doc["board"], doc["channel"]))
    if seq < seen:
        raise errors.MetadataError("replayed", "channel seq %d < %d already seen" % (seq, seen))
    _expired(exp, now, "channel")
    return doc


# Sticky rollout bucket in [0, 100): first 4 bytes of SHA-256(rollout_id:device_id) as a
# big-endian integer, mod 10000, / 100 (the server computes the same function).
def bucket(rollout_id, device_id):
    import hashlib

    d = hashlib.sha256((rollout_id + ":" + device_id).encode()).digest()
    return ((d[0] << 24 | d[1] << 16 | d[2] << 8 | d[3]) % 10000) / 100


# Whether this device should go on to the manifest of a checked channel document: its rollout
# is active, the device is in it (group or bucket) and inside its window, and the release is
# not the running version (`running`: a version string, or None when unknown).
def wanted(ch, group, device_id, running, now):
    ro = ch["rollout"]
    if ro.get("state", "active") != "active":
        return False
    if group not in ro.get("groups", []) and not bucket(ro["id"], device_id) < ro.get("percentage", 100):
        return False
    w = ro.get("window")
    if w is not None and now is not None:
        a, b, t = _hhmm(w["start"]), _hhmm(w["end"]), now[1]
        if not (a <= t < b if a <= b else (t >= a or t < b)):
            return False
    return running is None or _compare(ch["release"]["version"], running) != 0


# compare(a, b) of mpota.version; a running version that is no version is malformed.
def _compare(a, b):
    import mpota.version as v

    try:
        return v.compare(a, b)
    except ValueError:
        _bad("version")


# One image.deltas[] entry (host_tools/manifest.py DeltaRef); `bases` holds the image's own
# hash and the bases seen so far: one patch per base, none from the image itself.
def _delta(d, bases):
    if not isinstance(d, dict):
        _bad("deltas")
    _int(d.get("base_size"), "base_size", 1)
    b = _hash(d.get("base_hash"), "base_hash")
    _url(d.get("url"))
    _int(d.get("size"), "size", 1)
    _hash(d.get("hash"), "hash")
    enc = d.get("encoding")
    if enc == "detools-zlib":
        _int(d.get("window_bits"), "window_bits", 9, 15)
    elif enc != "detools" or d.get("window_bits") is not None:
        _bad("encoding")
    if b in bases:
        _bad("base_hash")
    bases.append(b)


def _url(u):
    if not isinstance(u, str) or not 0 < len(u) <= 512 or any(c in u for c in " \\\n\r\t"):
        _bad("url")


# The firmware image entry (image{}): (size, transfer size, deltas).
def _image(img):
    if not isinstance(img, dict):
        _bad("image")
    _url(img.get("url"))
    size = _int(img.get("size"), "size", 1)
    _hash(img.get("hash"), "hash")
    enc = img.get("encoding", "none")
    zl = enc == "zlib"
    if not zl and enc != "none":
        _bad("encoding")
    ts = img.get("transfer_size")
    th = img.get("transfer_hash")
    ts = _int(size if ts is None and not zl else ts, "transfer_size", 1)
    th = _hash(img["hash"] if th is None and not zl else th, "transfer_hash")
    wb = img.get("window_bits")
    if zl:
        _int(wb, "window_bits", 9, 15)
    elif wb is not None or ts != size or th != img["hash"]:
        _bad("encoding")
    ds = img.get("deltas", [])
    if not isinstance(ds, list) or len(ds) > _MAX_DELTAS:
        _bad("deltas")
    bases = [img["hash"]]
    for d in ds:
        _delta(d, bases)
    return size, ts, ds


# The release manifest `doc` (verified payload, parsed) that channel `ch` pins, for this
# board and chip (None: unknown), running version `running` (None: unknown), security floor,
# and an OTA slot of slot_size bytes. Returns doc.
def manifest(doc, ch, board, chip, running, floor, slot_size, now):
    _spec(doc, "release")
    v = version(doc.get("version"))
    b = doc.get("build_id")
    if not isinstance(b, str) or not 0 < len(b) <= 64 or not all("!" <= c <= "~" for c in b):
        _bad("build_id")
    sv = _int(doc.get("security_version"), "security_version")
    hw = doc.get("target_hardware")
    if not isinstance(hw, list) or not hw:
        _bad("target_hardware")
    for h in hw:
        _name(h, "target_hardware")
    if doc.get("chip") not in _CHIPS:
        _bad("chip")
    mb = doc.get("min_bootloader_version")
    if mb is not None and (not isinstance(mb, str) or len(mb) > 32):
        _bad("min_bootloader_version")
    img = doc.get("image")
    app = doc.get("app")
    if img is None and app is None:
        _bad("image")  # a release carries a firmware image, an app bundle or both
    if img is not None:
        size, ts, ds = _image(img)
    if app is not None:
        import mpota.appspec as appspec  # only for a release with application files

        appspec.check(app)
    md = doc.get("metadata", {})
    if not isinstance(md, dict):
        _bad("metadata")
    n = md.get("release_notes", "")
    if (not isinstance(n, str) or len(n) > 4096 or not isinstance(md.get("required", False), bool)
            or not isinstance(md.get("allow_downgrade", False), bool)):
        _bad("metadata")
    c = _time(doc.get("created"), "created")
    if c is None:
        _bad("created")
    exp = _time(doc.get("expires"), "expires")
    if exp is not None and exp <= c:
        _bad("expires")
    # the decisions
    if v != ch["release"]["version"]:
        raise errors.MetadataError("manifest_mismatch",
                                   "manifest %s, channel says %s" % (v, ch["release"]["version"]))
    if board not in hw:
        raise errors.MetadataError("wrong_target", "release is not for board %s" % board)
    if chip is not None and doc["chip"] != chip:
        raise errors.MetadataError("wrong_target", "release is for chip %s, this is %s" % (doc["chip"], chip))
    if sv < floor:
        raise errors.MetadataError("security_version", "security_version %d below the floor %d" % (sv, floor))
    if running is not None and _compare(v, running) <= 0 and md.get("allow_downgrade") is not True:
        raise errors.MetadataError("not_newer", "%s is not newer than the running %s" % (v, running))
    if img is not None:
        if size > slot_size:
            raise errors.MetadataError("too_big", "image of %d bytes, slot holds %d" % (size, slot_size))
        if ts > size + size // _GROWTH + 1024:
            raise errors.MetadataError("too_big", "transfer of %d bytes for an image of %d" % (ts, size))
        for d in ds:
            if d["size"] > size + size // _GROWTH + 1024:
                raise errors.MetadataError("too_big",
                                           "patch of %d bytes for an image of %d" % (d["size"], size))
    _expired(exp, now, "release")
    return doc


# The release to install, as the updater uses it. No methods: an Offer outlives this module,
# which the updater takes out of RAM after the check (a method would keep all its code).
# (The annotations are for the type checker; MicroPython ignores them.)
class Offer:
    version: str
    seq: int
    rollout: str
    manifest_sha256: str
    manifest_url: str
    security_version: int
    url: str
    size: int
    hash: str
    encoding: str
    window_bits: int
    transfer_size: int
    transfer_hash: str
    deltas: list
    how: dict
    app: dict | None  # the release's application files (mpota.appfiles), or None
    slot: str | None
    prev_slot: str | None
    chip: int | None


# The Offer of manifest `m` (checked by manifest()) that channel `ch` pins, fetched from
# manifest_url: what to fetch (url: the image, relative to manifest_url), how it is encoded
# and what it must hash to. The updater adds where it goes (slot, prev_slot, chip id).
def offer(ch, m, manifest_url):
    o = Offer()
    img = m.get("image") or _NO_IMAGE  # an app-only release: no firmware, size 0
    o.app = m.get("app")
    ro = ch["rollout"]
    o.version = m["version"]
    o.seq = ch["seq"]
    o.rollout = ro.get("id")
    o.manifest_sha256 = ch["release"]["manifest_sha256"]
    o.manifest_url = manifest_url
    o.security_version = m["security_version"]
    o.url = img["url"]
    o.size = img["size"]
    o.hash = img["hash"][7:]
    o.encoding = img.get("encoding") or "none"
    o.window_bits = img.get("window_bits") or _ZLIB_MAX_WBITS
    o.transfer_size = img.get("transfer_size") or o.size  # null/absent: the image itself
    th = img.get("transfer_hash")
    o.transfer_hash = th[7:] if th else o.hash
    o.deltas = img.get("deltas") or []  # patches from earlier images (mpota.delta)
    o.how = {}  # report detail of a delta install (the updater's delta path), {} for a full one
    o.slot = o.prev_slot = o.chip = None
    return o
