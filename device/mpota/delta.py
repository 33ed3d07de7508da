# Delta updates: rebuild the new image from the running one plus a detools *sequential*
# patch (compression none; host_tools/delta.py makes it), streaming.
#
#   r = Patched(src, part, base_size, size)   # src.readinto(buf) -> n: the patch bytes
#   n = r.readinto(buf)                       # the new image, in order (0 at the end)
#   r.finish()                                # bad_patch unless the patch ended exactly there
#                                             # (the updater has mpota.slot.Writer.end call it)
#
# Patch: a header byte (0x00: sequential, none), to_size, then (after a 0 data-format size)
# chunks of [diff size, diff bytes added byte-wise to the base from the current base offset,
# extra size, extra bytes copied, signed base offset adjustment] until to_size bytes are made.
# Sizes are detools' varints: 6 bits + a sign bit in the first byte, 7 bits in the next.
#
# The base (the running slot, `part`) is only ever read, through readblocks with a byte
# offset. Every length is checked before it is used: output past `size`, a base read outside
# [0, base_size), a varint longer than 35 bits, a truncated patch, or bytes after its end
# raise mpota.errors.IntegrityError bad_patch; nothing is ever written.
#
# No buffer of its own: the patch's bytes are read straight into the caller's buffer and the
# base bytes a diff run adds into the room after them (the caller's buffer is the slot
# writer's 4 KiB block, half of what is left of it at most per run), then added in place.
from micropython import const

import mpota.errors as errors

_BLOCK = const(4096)
_HEAD = const(0)
_DIFFLEN = const(1)
_DIFF = const(2)
_EXTRA = const(3)
_END = const(4)

# The byte-wise add, in place: d[i] += d[i + k] (mod 256) for i in [j, j + k). Compiled once,
# at import, with the viper emitter where the port has one (the ESP32 and the unix port do;
# .mpy files made without -march cannot hold viper code), else plain Python (CPython).
def _add_py(d, j, k):
    for i in range(j, j + k):
        d[i] = (d[i] + d[i + k]) & 0xFF


_add = _add_py
try:
    import sys

    if sys.implementation.name == "micropython":
        _g: dict = {}
        exec("@micropython.viper\ndef add(d: ptr8, j: int, k: int):\n e = j + k\n while j < e:\n"
             "  d[j] = d[j] + d[j + k]\n  j += 1\n", _g)
        _add = _g["add"]
        del _g
    del sys
except Exception:  # a port built without the native emitter
    pass


def _bad(why):
    raise errors.IntegrityError("bad_patch", "bad patch: " + why)


class Patched:
    def __init__(self, src, part, base_size, size):
        self._src = src
        self._part = part
        self._bsize = base_size
        self._size = size
        self._one = bytearray(1)  # a varint byte; a base byte when one byte of room is left
        self._add = _add
        self._to = 0  # bytes of the new image made
        self._from = 0  # base offset of the next diff byte
        self._left = 0  # bytes left in the current diff or extra run
        self._st = _HEAD  # the header is read with the first bytes asked for

    # detools' size: first byte 0x80 more, 0x40 negative, 6 bits; then 7 bits per byte. A run
    # length (run=True) must fit in what is left of the image.
    def _varint(self, run=False):
        one = self._one
        v = shift = 0
        while True:
            if not self._src.readinto(one):
                _bad("truncated")
            b = one[0]
            if shift:
                v |= (b & 0x7F) << shift
            else:
                neg = b & 0x40
                v = b & 0x3F
                shift = -1  # the first byte holds 6 bits
            if not b & 0x80:
                break
            shift += 7
            if shift > 30:
                _bad("a length overflows")
        if neg:
            v = -v
        if run and (v < 0 or v > self._size - self._to):
            _bad("a run ends past the image")
        return v

    # The next chunk header fields; False once the image is complete.
    def _next(self):
        while True:
            st = self._st
            if st == _HEAD:
                if not self._src.readinto(self._one) or self._one[0]:
                    _bad("not sequential, not uncompressed")
                if self._varint() != self._size:
                    _bad("another image size")
                if self._varint():
                    _bad("data format")
                self._st = _DIFFLEN
            elif st == _DIFFLEN:
                if self._to == self._size:
                    self._st = _END
                    return False
                n = self._varint(True)
                if n and (self._from < 0 or n > self._bsize - self._from):
                    _bad("a read outside the running image")
                self._left = n
                self._st = _DIFF
            elif st == _DIFF:
                if self._left:
                    return True
                self._left = self._varint(True)
                self._st = _EXTRA
            elif st == _EXTRA:
                if self._left:
                    return True
                self._from += self._varint()
                self._st = _DIFFLEN
            else:
                return False

    def readinto(self, buf):
        out = buf if isinstance(buf, memoryview) else memoryview(buf)
        want = len(out)
        done = 0
        src = self._src
        while done < want:
            if not self._left and not self._next():
                break
            room = want - done
            k = self._left if self._left < room else room
            diff = self._st == _DIFF
            if diff and room > 1:  # the diff bytes, then as many base bytes after them
                k = k if k <= room // 2 else room // 2
            elif diff:  # one byte of room: its base byte through _one
                k = 1
            k = src.readinto(out[done:done + k])  # patch bytes
            if not k:
                _bad("truncated")
            if diff:
                f = self._from
                if room > 1:
                    self._part.readblocks(f // _BLOCK, out[done + k:done + 2 * k], f % _BLOCK)
                    self._add(out, done, k)
                else:
                    one = self._one
                    self._part.readblocks(f // _BLOCK, one, f % _BLOCK)
                    out[done] = (out[done] + one[0]) & 0xFF
                self._from = f + k
            self._left -= k
            self._to += k
            done += k
        return done

    # After the last image byte: the patch must end there (and must have made the image).
    def finish(self):
        if self._to != self._size or self._left:
            _bad("it ends before the image")
        if self._st != _END:
            self._next()
            if self._st != _END:
                _bad("it ends before the image")
        if self._src.readinto(self._one):
            _bad("bytes after its end")
