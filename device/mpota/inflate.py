# Streaming zlib decompression of the transfer: `reader(src, window_bits)` returns an
# object with readinto(buf) -> n (0 at the end): deflate.DeflateIO itself (a window of
# 2**window_bits bytes).
# A corrupt stream raises OSError (as DeflateIO does: EINVAL), one that stops early
# EOFError (DeflateIO's too); the updater reports either as hash_mismatch. Errors of `src`
# (DownloadError) pass through unchanged.
import io

import deflate
from micropython import const

_CHUNK = const(256)


# DeflateIO pulls its input one byte at a time: serve those bytes from a small buffer so
# each refill is one readinto on the transfer stream. Allocates nothing per byte.
class _Bytes(io.IOBase):
    def __init__(self, src):
        self._src = src
        self._buf = bytearray(_CHUNK)
        self._n = 0
        self._i = 0

    def readinto(self, buf):
        i = self._i
        if i >= self._n:
            n = self._src.readinto(self._buf)
            if not n:
                return 0
            self._n = n
            i = 0
        buf[0] = self._buf[i]
        self._i = i + 1
        return 1


def reader(src, wbits):
    return deflate.DeflateIO(_Bytes(src), deflate.ZLIB, wbits)
