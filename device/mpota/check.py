# The check: from the signed documents to an Offer. Fetches the channel document and the
# manifest it pins (mpota.http), verifies their signatures (mpota.dsse, then mpota.p256, never
# in RAM together), applies the trust rules (mpota.trust, which makes the Offer) and tells
# whether the running build is that release already. Updater.check() loads this module and
# unloads it before the transfer, which does not need its code.
#
#   o = offer(u)              # the Offer for Updater u (None: nothing to install now)
#   ch = channel_offer(u)     # the checked channel document when it offers u's board a release
#
# u gives the config (u.cfg), the state (u.state), the block buffer (u._block()), the watchdog
# (u._feed) and the retry pause (u._backoff).
import hashlib

import mpota.errors as errors
from mpota.updater import _hex, _retryable, _running_part, _unload


def _now():
    # UTC "YYYY-MM-DDTHH:MM:SS" and minutes of the day, or None when the clock is not set
    import time

    try:
        t = time.gmtime()
    except Exception:
        return None
    if t[0] < 2024:
        return None
    return "%04d-%02d-%02dT%02d:%02d:%02d" % t[:6], t[3] * 60 + t[4]


# The clock as mpota.trust takes it, after setting it by NTP when it is not set and the
# config allows (freeze protection needs a clock to refuse an expired document).
def _clock(cfg):
    now = _now()
    if now is None and cfg.ntp:
        try:
            import ntptime

            ntptime.settime()
        except Exception as e:  # no network, no ntptime module: the check goes on without
            print("mpota: ntp: %r" % (e,))
        import sys

        sys.modules.pop("ntptime", None)
        now = _now()
    return now


# A document (at most `cap` bytes), with retries; with `pin`, its SHA-256 must be that
# hex digest; `into`: a buffer to read it into when it fits (mpota.http.read_capped). http is
# unloaded before it returns: the verify that follows needs the room (and the caller passes
# the bytes straight on, holding no reference of its own).
def _fetch(u, url, cap, pin=None, into=None):
    import mpota.http as http

    fails = 0
    while True:
        h = hashlib.sha256() if pin else None
        try:
            r = http.open(url, timeout_ms=u.cfg.timeout_ms)
            try:
                r.expect(200)
                data = http.read_capped(r, cap, h, into)
            finally:
                r.close()
            break
        except errors.DownloadError as e:
            fails += 1
            if not _retryable(e) or fails > u.cfg.retries:
                raise
            u._backoff(fails)
    del http, r  # the response's class would keep the module alive
    _unload("http", "tls")
    if pin and _hex(h) != pin:
        raise errors.MetadataError("manifest_mismatch", "manifest is not the one the channel pins")
    return data


# Fetch, verify and parse a signed document (`role`: "channel" or "release"). dsse and
# p256 are never in RAM together: dsse checks the envelope and hashes it, is unloaded
# (with the envelope bytes), then p256 checks the signatures.
def _document(u, url, cap, role, pin=None):
    rollout = role == "channel"
    data = _fetch(u, url, cap, pin)  # dsse comes in once http has left
    import mpota.dsse as dsse

    ptype = dsse.CHANNEL if rollout else dsse.RELEASE
    kr = "rollout" if rollout else "release"
    payload, digest, pairs = dsse.open(data, ptype, u.cfg.keys[kr])
    data = None
    del dsse
    _unload("dsse")
    import mpota.p256 as p256

    ok = p256.verify_any(pairs, digest, u._block(), u.cfg.threshold[kr])
    del p256
    _unload("p256")
    if not ok:
        raise errors.MetadataError("bad_signature", "bad signature")
    import mpota.dsse as dsse

    doc = dsse.parse(payload, role)
    del dsse
    _unload("dsse")  # the next fetch needs the room
    return doc


# The channel document, verified and checked (mpota.trust.channel); a higher seq is saved.
def _channel(u, now):
    cfg = u.cfg
    url = "%schannels/%s/%s.json" % (cfg.feed_url, cfg.board, cfg.channel)
    try:
        doc = _document(u, url, cfg.channel_max, "channel")
    except errors.MetadataError as e:  # bad_signature or unknown_key: perhaps by a rollout key
        if e.code not in ("bad_signature", "unknown_key") or not _rekey(u, url):  # rotated in since
            raise
        doc = _document(u, url, cfg.channel_max, "channel")
    seen = u.state["seq"].get(cfg.channel, 0)
    import mpota.trust as trust

    ch = trust.channel(doc, cfg.board, cfg.channel, seen, now)
    if (ch.get("keys_version") or 0) > cfg.keys_version and _rekey(u, None, ch["keys_version"]):
        return _channel(u, now)  # checked again with the keys trusted now
    if ch["seq"] > seen:
        u.state["seq"][cfg.channel] = ch["seq"]
        u.state.save()
    return ch


# Newer keys the channel names, walked to (mpota.keydoc.rekey, in RAM for this only): True
# when the board trusts them now.
def _rekey(u, url, target=0):
    _unload("dsse", "p256")  # a refused channel leaves them; the walk loads each when it needs it
    import mpota.keydoc as keydoc

    try:
        return keydoc.rekey(u, url, target)
    finally:
        _unload("keydoc", "keystore", "dsse", "p256", "trust", "version")


# The manifest the channel pins, verified and checked (mpota.trust.manifest), and the
# offer it makes (mpota.trust.offer).
def _manifest(u, ch, running, chip_name, slot_size, now):
    import mpota.http as http

    cfg = u.cfg
    rel = ch["release"]
    url = http.join(cfg.feed_url, rel["manifest"])
    del http
    m = _document(u, url, cfg.manifest_max, "release", rel["manifest_sha256"])
    import mpota.trust as trust

    trust.manifest(m, ch, cfg.board, chip_name, running, u.state["floor"], slot_size, now)
    return m, trust.offer(ch, m, url)


# The verified channel document when it offers a release to this board now (rollout
# active, the board in it and in its window, not `running`, not failed here in this
# rollout), else None. Sets the clock by NTP first when it can (mpota.trust needs it).
def channel_offer(u, running=None):
    cfg = u.cfg
    now = _clock(cfg)
    ch = _channel(u, now)
    import mpota.trust as trust

    ok = trust.wanted(ch, cfg.group, cfg.device_id, running, now)
    del trust
    _unload("trust", "version")  # p256 needs the room next
    if not ok or u.state.is_failed(ch["release"]["version"], ch["rollout"]["id"]):
        return None
    return ch


# The running release's version: the firmware's, or the confirmed app bundle's when newer (an
# app-only release leaves the firmware and its version as they were).
def _with_app(st, running):
    a = st["app"]
    v = a.get("version") if a else None
    if not isinstance(v, str) or v == running:
        return running
    if running is None:
        return v
    import mpota.version as version

    try:
        return v if version.compare(v, running) > 0 else running
    except ValueError:
        return running


# The Offer this board should install now (its slot, the slot it leaves, its chip id filled
# in), or None: up to date, not eligible, outside the window, paused.
def offer(u):
    import mpota.firmware as firmware
    import mpota.imagehdr as imagehdr

    cfg = u.cfg
    st = u.state
    run = _running_part()
    fw = firmware.running_image()
    fwv = firmware.version(st, cfg, fw)
    running = _with_app(st, fwv)
    u._version = running
    chip = fw[2] if fw else None
    chip_name = imagehdr.CHIPS.get(chip) if chip is not None else cfg.get("chip")
    del imagehdr, firmware
    _unload("imagehdr", "firmware")
    ch = channel_offer(u, running)
    if ch is None:
        return None
    nxt = run.get_next_update()
    m, o = _manifest(u, ch, running, chip_name, nxt.info()[3], _now())
    _unload("dsse", "p256", "trust", "version")
    if running is None and m.get("image"):
        import mpota.firmware as firmware

        same = firmware.runs(run, m["image"], u._block(), u._feed)
        if same:  # a build without a version that is this release
            firmware.record(st, fw, m["version"])
        del firmware
        _unload("firmware", "slot")
        if same:
            st.save()
            u._version = m["version"]
            return None
    # every part of m runs already (a firmware-only release below an app-only one is not the
    # running version, the newer of the two, yet must not install again)
    v, a = m["version"], st["app"]
    if (not m.get("image") or fwv == v) and (not m.get("app") or (a and a.get("version") == v)):
        return None
    o.prev_slot = run.info()[4]
    o.slot = nxt.info()[4] if o.size else o.prev_slot  # app files only: the firmware stays
    o.chip = chip
    return o
