# The update flow (docs/FORMATS.md): channel -> eligibility -> manifest -> checks ->
# stream the image into the next OTA slot -> verify -> set_boot -> pending -> report -> reset.
#
#   u = Updater.from_config("/mpota.json")
#   offer = u.check()        # an Offer or None; downloads no image
#   u.update()               # the whole flow; machine.reset() at the end unless reset=False
#
# This module orchestrates; each phase's code is loaded for that phase only. The check
# (mpota.check: fetch the documents, verify their signatures, apply the trust rules of
# mpota.trust, which make the Offer) runs first; the transfer streams the image from
# mpota.http (through mpota.inflate or mpota.delta) into the next slot with mpota.slot.Writer,
# which also reads it back. Every failure raises an mpota.errors.OTAError and is reported
# (`failed`, detail.reason = error.code); the running slot and the boot slot are never
# touched before the new image is complete and verified.
#
# Resume: within one update() a dropped or stalled connection is resumed with Range from
# the byte where it broke (retries with exponential backoff and jitter). Across resets and
# power cuts, state["dl"] records the raw bytes written and verified (saved every
# _SAVE_EVERY blocks, or an eighth of the image when that is more: each save is an NVS commit,
# a flash write); the next update() re-hashes that prefix from the slot and asks for
# the rest with Range. A zlib transfer cannot resume across a reset (DeflateIO's state is
# not restorable), so it restarts from byte 0; within one run it resumes like a plain one,
# because the decompressor reads from the resuming stream and never sees the break.
# A server that ignores Range (200 instead of 206) restarts the transfer from byte 0 on
# that same response: fresh hashes, fresh decompressor, every block rewritten.
#
# The clock: expiry and the rollout window are enforced when it is set (year >= 2024); when
# it is not, the check first tries NTP (ntptime.settime(), unless the config says "ntp": false).
import hashlib

from micropython import const

import mpota.errors as errors

_BLOCK = const(4096)
_SAVE_EVERY = const(32)   # blocks between download-progress saves (each one a flash write)
_RATE_MS = const(10000)   # window of the slow-retrieval guard (Config.min_rate bytes/s)


def _hex(h):
    import binascii

    return str(binascii.hexlify(h.digest()), "ascii")


def _retryable(e):
    if e.status is not None:
        return e.status >= 500 or e.status in (408, 429)
    return True


class _Restart(Exception):
    pass


# The transfer as a stream: readinto() returns the next bytes of [pos, total), resuming
# with Range after a drop, a stall or a slow retrieval (each byte in time, but too few of
# them: fewer than cfg.min_rate bytes/s over _RATE_MS), hashing every byte when `h` is given.
class _Source:
    def __init__(self, upd, url, total, pos, h):
        self.u = upd
        self.url = url
        self.total = total
        self.pos = pos
        self.h = h
        self.r = None
        self.restarts = 0
        self.t0 = None  # start of the rate window (ticks_ms) and pos then
        self.p0 = 0
        self.opened = None  # ticks_ms when the current connection was requested
        self.slow = 0   # slow windows in a row (each one reconnects; more than cfg.retries fail)

    def close(self):
        if self.r is not None:
            self.r.close()
            self.r = None

    # A timeout when the connection brought fewer than min_rate bytes/s over the last
    # _RATE_MS, counted from the request (called before the `n` bytes just read are counted).
    # It runs between reads: on MicroPython a socket readinto() returns only once the buffer
    # is full, so a drip just under the read timeout delays the cut by up to one block.
    def _pace(self, n):
        rate = self.u.cfg.min_rate
        if not rate:
            return
        import time

        now = time.ticks_ms()
        if self.t0 is None:  # first read of this connection
            self.t0, self.p0 = self.opened, self.pos
        ms = time.ticks_diff(now, self.t0)
        if ms >= _RATE_MS:
            got = self.pos + n - self.p0
            self.t0, self.p0 = now, self.pos
            if got * 1000 < rate * ms:
                self.slow += 1
                raise errors.DownloadError("timeout", "slow retrieval: %d bytes in %d ms" % (got, ms))
            self.slow = 0

    def _open(self):
        import time

        import mpota.http as http

        pos = orig = self.pos
        self.opened = time.ticks_ms()
        r = http.open(self.url, headers={"Range": "bytes=%d-" % pos} if pos else None,
                      timeout_ms=self.u.cfg.timeout_ms)
        st = r.status
        if st == 206 and pos:
            cr = r.headers.get("content-range", "")
            want = "bytes %d-%d/" % (pos, self.total - 1)
            if not cr.startswith(want) or cr[len(want) :] not in (str(self.total), "*"):
                r.close()
                raise errors.IntegrityError("size_mismatch",
                                            "Content-Range %s, expected %s%d" % (cr[:40], want, self.total))
        elif st == 200:
            if pos:
                # Range ignored: this response is the whole file; start over on it
                self.restarts += 1
                if self.restarts > self.u.cfg.retries + 1:
                    r.close()
                    raise errors.http_status(200, "again: the server ignores Range")
                pos = self.pos = 0
        else:
            r.expect(200, 206)
        if r.length is not None and r.length != self.total - pos:
            r.close()
            raise errors.IntegrityError("size_mismatch",
                                        "server sends %d bytes, expected %d" % (r.length, self.total - pos))
        r.headers.clear()  # checked: the body needs none of them (room for the download)
        self.r = r
        self.t0 = None  # the rate window starts with the connection
        if st == 200 and self.restarts and not pos and self.h is not None:
            self.h = hashlib.sha256()
        if st == 200 and pos != orig:
            raise _Restart()

    def readinto(self, buf):
        left = self.total - self.pos
        if left <= 0:
            return 0
        if len(buf) > left:
            buf = memoryview(buf)[:left]
        fails = 0
        while True:
            try:
                if self.r is None:
                    self._open()
                r = self.r
                n = r.readinto(buf) if r is not None else 0
                if n:
                    self._pace(n)
                    break
                raise errors.DownloadError("download", "connection closed early")
            except errors.DownloadError as e:
                self.close()
                self.t0 = None  # each connection is paced over its own windows
                if not _retryable(e):
                    raise
                fails += 1
                if fails > self.u.cfg.retries or self.slow > self.u.cfg.retries:
                    raise
                self.u._backoff(fails)
        if self.h is not None:
            self.h.update(buf if n == len(buf) else memoryview(buf)[:n])
        self.pos += n
        return n

    # After `total` bytes: the server must have nothing more (longer than declared).
    def finish(self, one):
        r = self.r
        if r is not None and r.length is None:
            try:
                extra = r.readinto(one)
            except errors.DownloadError:
                extra = 0
            if extra:
                self.close()
                raise errors.IntegrityError("size_mismatch", "transfer longer than the manifest declares")
        self.close()


# MicroPython keeps an imported module's code in RAM until it is dropped from sys.modules
# (and from the package): modules needed by one phase only are unloaded after it.
def _unload(*names):
    import sys

    if sys.implementation.name != "micropython":
        return
    import gc

    import mpota

    for n in names:
        if "mpota." + n in sys.modules:
            del sys.modules["mpota." + n]
        try:
            delattr(mpota, n)
        except Exception:  # AttributeError; KeyError on MicroPython
            pass
    gc.collect()


# Stateless modules of the transfer, unloaded when update() returns (or check() fails):
# the heap goes back to the application. (mpota.outbox stays once the transfer is over: it
# holds the process's shared report queue.)
_TRANSFER = ("http", "tls", "inflate", "imagehdr", "deltabase", "delta", "slot")
# The check's modules (mpota.check and what it loads), unloaded when a check is over.
_CHECK = ("check", "dsse", "p256", "trust", "version", "imagehdr", "firmware")


# The delta path, when the manifest offers patches: mpota.deltabase picks the patch whose base is
# the running image (slot `run`) and sets o.how; the transfer rebuilds the image from it
# (mpota.delta). True when it made the image; else the full image follows in the same update,
# without the patch code in RAM (o.how["delta"]: "fallback: <reason>"). Flash errors are not
# the patch's fault: they propagate.
def _delta_install(u, o, run, part):
    u._evict_reporter(o)  # the outbox's code leaves RAM before the running slot is hashed
    import mpota.deltabase as deltabase

    d = deltabase.patch(u, o, run)
    del deltabase
    _unload("deltabase")
    if d is not None:
        try:
            u._transfer(o, part, d, run)
            o.how["delta"] = "applied"
            o.how["bytes"] = d["size"]
            return True
        except (errors.IntegrityError, errors.DownloadError) as e:
            print("mpota: patch failed (%s), full image" % e.code)
            o.how["delta"] = "fallback: " + e.code
        _unload("delta")
    return False


def _running_part():
    import esp32

    # the stub types the id as a label (str); BOOT/RUNNING are ints (esp32.rst)
    return esp32.Partition(esp32.Partition.RUNNING)  # type: ignore[arg-type]


# Early reject of a first block that is not an app image for this chip (imagehdr is
# loaded for that block only).
def _check_header(block, chip):
    import mpota.imagehdr as imagehdr

    imagehdr.check(block, chip)
    del imagehdr
    _unload("imagehdr")


# Updater(cfg, state=None, reporter=None, wdt=None), its collaborators passed in: cfg the
# config (mpota.config.Config); state the boot's State (default: mpota.state.shared for the
# config's folder); reporter anything with event(name, target=, rollout=, **detail)
# (default: a mpota.outbox.Outbox on the config's folder, made on first use); wdt anything
# with feed() the application wants fed while long work runs (a machine.WDT). The watchdog
# a trial boot armed is fed as well: boot() leaves its BootResult on the shared state.
class Updater:
    def __init__(self, cfg, state=None, reporter=None, wdt=None):
        from mpota.state import shared

        self.cfg = cfg
        # the boot's one state (mpota.state.shared): boot(), HealthReporter and reporters hold it too
        self.state = state if state is not None else shared(cfg.root)
        self._reporter = reporter
        self._evict = False
        self._beacon = None
        self._wdt = wdt
        self._buf = None  # the 4 KiB block buffer, while a check or an install runs (_block)
        self._pct = None
        self._version = -1  # the running version once check() has read it
        self.offer = None

    @classmethod
    def from_config(cls, path="/mpota.json", **kw):
        import mpota.config as config

        cfg = config.load(path)
        del config
        _unload("config")
        return cls(cfg, **kw)

    # --- reporting: never raises -------------------------------------------------------
    def _rep(self):
        if self._reporter is None:
            try:
                import sys

                # the outbox may leave RAM during a transfer only if it came in for this update
                # (re-checked then: an application Reporter may have come since)
                self._evict = "mpota.outbox" not in sys.modules
                from mpota.outbox import Outbox  # the report core; no heartbeat code in RAM

                self._reporter = Outbox(self.cfg, self.state, self.cfg.root)
                if self._version != -1:
                    self._reporter._version = self._version  # known: no second look
            except Exception as e:
                print("mpota: no reporter: %r" % (e,))
        return self._reporter

    # Before a transfer: take the outbox's code (~6 KB) out of RAM, where the download and
    # the decompressor need the room, keeping what a progress report needs (_beacon).
    def _evict_reporter(self, o):
        import sys

        rep = self._reporter
        # _evict: rep is the Outbox _rep() made. A loaded mpota.report means a Reporter (the
        # application's, the trial's) may still run the outbox's code: it stays.
        if rep is None or not self._evict or "mpota.report" in sys.modules:
            return
        try:
            self._beacon = rep.template("downloading", o.version, o.rollout)
        except Exception:
            return
        self._reporter = rep = None
        import mpota.state as st

        st.queues.clear()  # no Reporter holds a queue: its file holds all of it
        _unload("outbox")

    # A progress report while the outbox is out of RAM: POSTed at once with mpota.http (in
    # RAM for the transfer), best effort and never queued (a full queue drops progress
    # reports first too). Its seq is saved before it is sent, as a queued report's seq is by
    # its queue line, so no seq is sent twice.
    def _send_progress(self, pct):
        import json
        import time

        import mpota.http as http

        b = self._beacon
        if b is None or not b[0]:
            return
        url, headers, doc, post_ms = b
        try:
            now = time.ticks_ms()
            if "time" in doc:
                doc["time"] += time.ticks_diff(now, doc["uptime_ms"]) // 1000
            doc["uptime_ms"] = now
            doc["seq"] = self.state.next_report_seq()
            doc["detail"] = {"progress": pct}
            # no state.save() for it: next_report_seq() stored the high-water mark above this seq
            r = http.open(url, "POST", headers, json.dumps(doc), min(self.cfg.timeout_ms, post_ms))
            r.close()
        except Exception as e:
            print("mpota: report downloading: %r" % (e,))

    # The block buffer, made when a check or an install needs it; update() lets it go before
    # its closing reports (the outbox comes back into RAM then).
    def _block(self):
        if self._buf is None:
            self._buf = bytearray(_BLOCK)
        return self._buf

    # later=True: an outbox only queues the report; it goes with the next one (one connection)
    def _report(self, name, offer=None, later=False, **detail):
        try:
            rep = self._rep()
            if rep is None:
                return
            if later and hasattr(rep, "flush"):
                detail["flush_ms"] = 0
            if offer is not None:
                rep.event(name, target=offer.version, rollout=offer.rollout, **detail)
            else:
                rep.event(name, **detail)
        except Exception as e:
            print("mpota: report %s: %r" % (name, e))

    def _fail(self, e, offer):
        if not isinstance(e, errors.OTAError):
            import sys

            pe = getattr(sys, "print_exception", None)
            if pe is not None:
                pe(e)  # unexpected (MemoryError, a bug): keep the traceback in the log
            e = errors.OTAError("error", "%s: %s" % (type(e).__name__, e))
        self._report("failed", offer, reason=e.code, error=str(e))
        return e

    # Feed the watchdogs that may be armed while the update runs: the application's (wdt=)
    # and the one this boot's trial armed (its BootResult, which the shared state holds).
    # Called every block, so a long download after a trial boot is not cut by a 60 s
    # watchdog; allocates nothing.
    def _feed(self):
        w = self._wdt
        if w is not None:
            w.feed()
        b = self.state.booted
        if b is not None and b.wdt is not None and b.wdt is not w:
            b.wdt.feed()

    def _backoff(self, attempt):
        import random
        import time

        ms = min(self.cfg.max_backoff_ms, self.cfg.backoff_ms << min(attempt - 1, 16))
        ms = ms // 2 + random.getrandbits(16) % (ms // 2 + 1)  # jitter: [ms/2, ms]
        while True:  # in slices of at most a second, feeding the watchdog
            self._feed()
            n = min(ms, 1000)
            if hasattr(time, "sleep_ms"):
                time.sleep_ms(n)
            else:
                time.sleep(n / 1000)
            ms -= n
            if ms <= 0:
                break

    # --- the board -------------------------------------------------------------------
    def _running_label(self):
        return _running_part().info()[4]

    # The running firmware's version (mpota.firmware), None when unknown.
    def running_version(self):
        import mpota.firmware as firmware

        v = firmware.version(self.state, self.cfg)
        del firmware
        _unload("firmware")
        return v

    # The offer this board should install now, or None (up to date, not eligible, outside
    # the window, paused). Verifies everything but downloads no image.
    def check(self):
        try:
            import mpota.check as check

            self.offer = check.offer(self)
        except Exception as e:
            _unload(*_CHECK)
            e = self._fail(e, None)
            _unload(*_TRANSFER)
            raise e
        del check
        _unload(*_CHECK)
        return self.offer

    # --- install ---------------------------------------------------------------------
    # Check, then download, verify, switch the boot slot, record the pending update and
    # reset (reset=False returns the Offer instead, for tests and apps that reset later).
    def update(self, offer=None, reset=True):
        p = self.state["pending"]
        if p and p.get("phase") == "installing" and self._running_label() != p.get("slot"):
            # an install cut before set_boot() finished (trial.boot() clears these too)
            self.state["pending"] = None
            self.state.save()
        elif p:
            e = errors.OTAError("pending", "an installed update awaits its trial boot")
            raise self._fail(e, None)
        try:
            self._block()  # first: the one large buffer, made before the documents fragment the heap
            offer = self.check() if offer is None else self._recheck(offer)
            if offer is None:
                return None
            self._report("checking", offer)
            try:
                self._install(offer)
            except Exception as e:
                raise self._fail(e, offer)
            self._buf = None  # room for the outbox, which comes back for the closing reports
            self._report("downloaded", offer, later=True, **offer.how)  # in one POST with "installed"
            self._report("installed", offer, slot=offer.slot, **offer.how)
        finally:
            self._buf = None  # the heap goes back to the application
            _unload(*_TRANSFER)
        if reset:
            import machine

            machine.reset()
        return offer

    # An Offer from an earlier check() is installed only while the channel still offers that
    # very manifest to this board (the operator may have paused or halted the rollout since).
    def _recheck(self, o):
        try:
            import mpota.check as check

            ch = check.channel_offer(self)
        except Exception as e:
            _unload(*_CHECK)
            raise self._fail(e, None)
        del check
        _unload(*_CHECK)
        if ch is None:
            return None
        ro = ch.get("rollout") or {}
        if ch["release"]["manifest_sha256"] != o.manifest_sha256 or ro.get("id") != o.rollout:
            return None
        return o

    def _install(self, o):
        st = self.state
        run = _running_part()
        part = run.get_next_update()
        o.how = {}
        app = self._install_app(o) if o.app is not None else None
        if not o.size:  # app files only: recorded for the trial boot, no firmware to flash
            st["pending"] = self._pending(o, app)
            st["pending"]["fw"] = False
            st.save()
            return
        if part.info()[4] != o.slot:
            raise errors.FlashError("flash", "next slot changed")
        try:
            if not o.deltas or not _delta_install(self, o, run, part):
                self._transfer(o, part, None, run)
        finally:
            self._beacon = None
        # the read-back needs neither the decompressor nor http ("downloaded" is reported with
        # "installed", by update())
        _unload("inflate", "http", "delta")
        import mpota.slot as slot

        ok = slot.Writer(part, o.size, self._block(), None, self._feed).verify(o.hash)
        del slot
        _unload("slot")
        st["dl"] = None
        if not ok:
            st.save()
            raise errors.FlashError("flash", "slot read-back does not match the image hash")
        # phase "installing" until set_boot() returned (see trial.py): a board cut before
        # that never left the old slot and must not count the install as a failed update
        st["pending"] = self._pending(o, app)
        st["pending"]["phase"] = "installing"
        st.save()
        self._feed()
        try:
            part.set_boot()
        except OSError as e:
            st["pending"] = None
            st.save()
            raise errors.FlashError("flash", "set_boot refused the image (%s)" % e)
        del st["pending"]["phase"]
        st.save()

    # The pending record of an installed update (mpota.trial); `app`: the new app folder's record.
    def _pending(self, o, app):
        p = {"version": o.version, "slot": o.slot, "prev_slot": o.prev_slot,
             "security_version": o.security_version, "rollout": o.rollout,
             "manifest_sha256": o.manifest_sha256, "attempts": 0}
        if app is not None:
            p["app"] = app
        return p

    # The release's application files into the inactive app folder (mpota.appfiles, in RAM for
    # this only); returns the new folder's record.
    def _install_app(self, o):
        import mpota.appfiles as appfiles
        import mpota.http as http

        src = _Source(self, http.join(o.manifest_url, o.app["url"]), o.app["size"], 0, hashlib.sha256())
        del http
        try:
            return appfiles.install(self, o, src)
        except OSError as e:  # the filesystem refused (full, worn): the confirmed app is untouched
            raise errors.FlashError("flash", "app files: %s" % (e,))
        finally:
            del appfiles
            _unload("appfiles")

    # The image bytes a plain download of offer o recorded as written (state["dl"]), 0 if none.
    def _resumes(self, o):
        dl = self.state["dl"]
        if (o.encoding == "none" and dl and dl.get("version") == o.version and dl.get("hash") == o.hash
                and dl.get("slot") == o.slot and 0 < dl.get("offset", 0) < o.size):
            return dl["offset"]
        return 0

    # Stream the image into `part` (mpota.slot.Writer): the image itself (d None) or the
    # patch d rebuilt against the running slot `run`; raises unless the image hash matches.
    def _transfer(self, o, part, d, run):
        import mpota.http as http
        import mpota.slot as slot

        st = self.state
        size = o.size
        self._evict_reporter(o)  # out of RAM before the transfer's objects are made
        w = slot.Writer(part, size, self._block(), lambda b: _check_header(b, o.chip), self._feed)
        del slot
        # the bytes on the wire: the image (plain or zlib), or a patch d from the running image
        plain = d is None and o.encoding == "none"
        if d is None:
            url, tsize, thash, wb = o.url, o.transfer_size, o.transfer_hash, 0 if plain else o.window_bits
        else:
            url, tsize, thash = d["url"], d["size"], d["hash"][7:]
            wb = d.get("window_bits") or 0 if d["encoding"] == "detools-zlib" else 0
        url = http.join(o.manifest_url, url)
        del http
        # resume a plain transfer recorded by an earlier run
        dl = st["dl"]
        if plain and self._resumes(o):
            w.start(dl["offset"])
        if not w.pos:
            dl = {"version": o.version, "slot": o.slot, "hash": o.hash,
                  "transfer_hash": o.transfer_hash, "offset": 0, "transfer_offset": 0}
        dl["offset"] = dl["transfer_offset"] = w.pos
        st["dl"] = dl if plain else None
        # plain: the transfer is the image, hashed once (by the writer); zlib: hashed as well
        src = _Source(self, url, tsize, w.pos, None if plain else hashlib.sha256())
        self._pct = None
        try:
            while True:
                try:
                    self._stream(o, w, src, dl, plain, wb, None if d is None else (d["base_size"], run))
                    break
                except _Restart:
                    w.start(0)
                    dl["offset"] = dl["transfer_offset"] = 0
            src.finish(w.one)
            if not plain and src.pos != tsize:
                raise errors.IntegrityError("size_mismatch",
                                            "compressed stream ends before the transfer does")
            if not plain and _hex(src.h) != thash:
                raise errors.IntegrityError("hash_mismatch", "transfer hash mismatch")
            if w.hex() != o.hash:
                raise errors.IntegrityError("hash_mismatch", "image hash mismatch")
        except errors.DownloadError:
            if plain:
                dl["offset"] = dl["transfer_offset"] = w.pos  # the blocks written before the break
                st.save()  # keep the progress: the next update() resumes
            raise
        except Exception:
            if st["dl"] is not None:
                st["dl"] = None
                st.save()
            raise
        finally:
            src.close()

    # The block loop (w: the mpota.slot.Writer) reports progress and saves how far a plain
    # transfer got; it allocates nothing per block when the reader fills whole blocks.
    def _stream(self, o, w, src, dl, plain, wb=0, dp=None):
        reader = src
        if wb:
            import mpota.inflate as inflate

            reader = inflate.reader(src, wb)
        if dp is not None:  # (base size, running partition): the patch rebuilds the image
            import mpota.delta as delta

            reader = delta.Patched(reader, dp[1], dp[0], o.size)  # reads nothing yet
        nblk = w.nblk
        step = (nblk + 3) // 4  # progress reports at 0/25/50/75 %
        every = max(_SAVE_EVERY, nblk // 8)  # progress saves: each a flash write, at most ~8
        # in runs of blocks that end after each progress block and at each save
        blk = w.blk
        while blk < nblk:
            upto = ((blk - 1) // step + 1) * step + 1  # the block after the next progress block
            if plain:
                upto = min(upto, (blk // every + 1) * every)
            pos = w.put(reader, upto)
            blk = w.blk
            if (blk - 1) % step == 0:
                self._progress(o, (blk - 1) * _BLOCK, o.size)
            if plain:
                dl["offset"] = dl["transfer_offset"] = pos
                if blk % every == 0 and blk < nblk:
                    self.state.save()
        w.end(reader, None if dp is None else reader.finish)  # the patch must end there too

    # Download progress at 0/25/50/75 %, each step reported once per update.
    def _progress(self, o, pos, size):
        pct = pos * 100 // size
        pct -= pct % 25
        if pct != self._pct:
            self._pct = pct
            if self._beacon is not None:
                self._send_progress(pct)
            else:
                self._report("downloading", o, progress=pct)
