# Delta updates: rebuild the new image from the running one plus a detools *sequential*
# patch (compression none; host_tools/delta.py makes it), streaming.
#
#   r = Patched(src, part, base_size, size)   # src.readinto(buf) -> n: the patch bytes
#   n = r.readinto(buf)                       # the new image, in order (0 at the end)
#   r.finish()                                # BadPatch unless the patch ended exactly there
#   install(updater, offer, run, part)        # the updater's delta path (below)
#
# Patch: a header byte (0x00: sequential, none), to_size, then (after a 0 data-format size)
# chunks of [diff size, diff bytes added byte-wise to the base from the current base offset,
# extra size, extra bytes copied, signed base offset adjustment] until to_size bytes are made.
# Sizes are detools' varints: 6 bits + a sign bit in the first byte, 7 bits in the next.
#
# The base (the running slot, `part`) is only ever read, through readblocks with a byte
# offset into a small cache. Every length is checked before it is used: output past
# `size`, a base read outside [0, base_size), a varint longer than 35 bits, a truncated
# patch, or bytes after its end raise mpota.errors.BadPatch; nothing is ever written.
from micropython import const

import mpota.errors as errors

_IN = const(512)  # patch bytes buffered from src
_CACHE = const(1024)  # base bytes cached from the running slot
_BLOCK = const(4096)
_DIFFLEN = const(0)
_DIFF = const(1)
_EXTRALEN = const(2)
_EXTRA = const(3)
_ADJ = const(4)
_END = const(5)

# The byte-wise add: dst[i] = src[i] + base[i] (mod 256). Compiled at run time with the
# viper emitter where the port has one (the ESP32 and the unix port do; .mpy files made
# without -march cannot hold viper code), else plain Python (CPython: tests, simulator).
_VIPER = """
@micropython.viper
def add(d: ptr8, s: ptr8, b: ptr8, n: int):
    i = 0
    while i < n:
        d[i] = s[i] + b[i]
        i += 1
"""


def _add_py(d, s, b, n):
    for i in range(n):
        d[i] = (s[i] + b[i]) & 0xFF


def _adder():
    import sys

    if sys.implementation.name != "micropython":
        return _add_py
    g: dict = {}
    try:
        exec(_VIPER, g)
        return g["add"]
    except Exception:  # a port built without the native emitter
        return _add_py


def _bad(why):
    raise errors.IntegrityError("bad_patch", "bad patch: " + why)


class Patched:
    def __init__(self, src, part, base_size, size):
        self._src = src
        self._part = part
        self._bsize = base_size
        self._size = size
        self._in = bytearray(_IN)
        self._inmv = memoryview(self._in)
        self._n = 0  # bytes in _in
        self._i = 0  # next byte of _in
        self._cache = bytearray(_CACHE)
        self._cmv = memoryview(self._cache)
        self._coff = 0  # base offset of _cache[0]
        self._clen = 0  # valid bytes in _cache
        self._add = _adder()
        self._to = 0  # bytes of the new image made
        self._from = 0  # base offset of the next diff byte
        self._left = 0  # bytes left in the current diff or extra run
        self._st = _DIFFLEN
        if self._byte() != 0:
            _bad("not a detools sequential patch without compression")
        if self._varint() != size:
            _bad("it makes an image of another size")
        if self._varint() != 0:
            _bad("data-format patches are not supported")

    # The next patch byte (refilling the input buffer), BadPatch at the end of the patch.
    def _byte(self):
        if self._i >= self._n and not self._refill():
            _bad("truncated")
        b = self._in[self._i]
        self._i += 1
        return b

    def _refill(self):
        n = self._src.readinto(self._in)
        self._n = n
        self._i = 0
        return n

    # detools' size: first byte 0x80 more, 0x40 negative, 6 bits; then 7 bits per byte.
    def _varint(self):
        b = self._byte()
        neg = b & 0x40
        v = b & 0x3F
        shift = 6
        while b & 0x80:
            if shift > 29:
                _bad("a length overflows")
            b = self._byte()
            v |= (b & 0x7F) << shift
            shift += 7
        return -v if neg else v

    def _length(self):
        n = self._varint()
        if n < 0 or n > self._size - self._to:
            _bad("a run ends past the image")
        return n

    # Refill the cache so that it starts at base offset `off` (checked to be in the base).
    def _load(self, off):
        n = self._bsize - off
        if n > _CACHE:
            n = _CACHE
        mv = self._cmv if n == _CACHE else self._cmv[:n]
        self._part.readblocks(off // _BLOCK, mv, off % _BLOCK)
        self._coff = off
        self._clen = n

    # The next chunk header fields; False once the image is complete.
    def _next(self):
        while True:
            st = self._st
            if st == _DIFFLEN:
                if self._to == self._size:
                    self._st = _END
                    return False
                n = self._length()
                if n and (self._from < 0 or n > self._bsize - self._from):
                    _bad("it reads outside the running image")
                self._left = n
                self._st = _DIFF
            elif st == _DIFF:
                if self._left:
                    return True
                self._left = self._length()
                self._st = _EXTRA
            elif st == _EXTRA:
                if self._left:
                    return True
                self._from += self._varint()
                self._st = _DIFFLEN
            else:
                return False

    def readinto(self, buf):
        out = memoryview(buf)
        want = len(buf)
        done = 0
        while done < want:
            if not self._left and not self._next():
                break
            k = want - done
            if k > self._left:
                k = self._left
            if self._i >= self._n and not self._refill():
                _bad("truncated")
            avail = self._n - self._i
            if k > avail:
                k = avail
            i = self._i
            if self._st == _DIFF:
                f = self._from
                c = f - self._coff
                if c < 0 or c >= self._clen:
                    self._load(f)
                    c = 0
                if k > self._clen - c:
                    k = self._clen - c
                self._add(out[done:done + k], self._inmv[i:i + k], self._cmv[c:c + k], k)
                self._from = f + k
            else:
                out[done:done + k] = self._inmv[i:i + k]
            self._i = i + k
            self._left -= k
            self._to += k
            done += k
        return done

    # After the last image byte: the patch must end there (and must have made the image).
    def finish(self):
        if self._to != self._size or self._left:
            _bad("it ends before the image does")
        if self._st != _END:
            self._next()
            if self._st != _END:
                _bad("it ends before the image does")
        if self._i < self._n or self._refill():
            _bad("bytes follow its end")


# The first patch in `deltas` whose base is the running image (slot `run`), or None. One pass
# over the slot whatever the number of patches: a SHA-256 per distinct base size (at most
# trust's limit on patches), each fed the slot's first base_size bytes. buf: 4096 bytes.
def base_patch(run, deltas, buf, feed):
    import binascii
    import hashlib

    room = run.info()[3]
    sizes = []
    for c in deltas:
        n = c["base_size"]
        if n <= room and n not in sizes:
            sizes.append(n)
    hs = [hashlib.sha256() for _ in sizes]
    got = {}
    mv = memoryview(buf)
    end = max(sizes) if sizes else 0
    b = 0
    while b * _BLOCK < end:
        run.readblocks(b, buf)
        off = b * _BLOCK
        for i in range(len(sizes)):
            n = sizes[i] - off
            if n > 0:
                hs[i].update(mv if n >= _BLOCK else mv[:n])
                if n <= _BLOCK:
                    got[sizes[i]] = str(binascii.hexlify(hs[i].digest()), "ascii")
        feed()
        b += 1
    for c in deltas:
        if got.get(c["base_size"]) == c["base_hash"][7:]:
            return c
    return None


# The updater's delta path: the first patch of offer `o` whose base is the running image
# (slot `run`) is applied into `part` by u._transfer. True when it made the image; else
# False, with o.how["delta"] = "fallback: <reason>" (no patch for this base, a plain
# download recorded further than the patch is long: the rest of it is cheaper, or the patch
# failed: the caller streams the full image in the same update). Flash errors are not the
# patch's fault: they propagate. o.how becomes the reports' detail.
def install(u, o, run, part):
    d = base_patch(run, o.deltas, u._block(), u._feed)
    o.how = {"delta": "fallback: base", "full_bytes": o.transfer_size}
    if d is None:
        return False
    done = u._resumes(o)
    if done and o.size - done <= d["size"]:
        o.how["delta"] = "fallback: resume"
        return False
    if done:  # the patch rewrites the slot that record vouches for
        u.state["dl"] = None
        u.state.save()
    try:
        u._transfer(o, part, d, run)
    except (errors.IntegrityError, errors.DownloadError) as e:
        print("mpota: patch failed (%s), full image" % e.code)
        o.how["delta"] = "fallback: " + e.code
        return False
    o.how["delta"] = "applied"
    o.how["bytes"] = d["size"]
    return True
