# Streaming zlib decompression of the transfer: `reader(src, window_bits)` returns an
# object with readinto(buf) -> n (0 at the end). On MicroPython that is deflate.DeflateIO
# itself (a window of 2**window_bits bytes); CPython (tests, simulator) has no `deflate`, so
# zlib stands in. A corrupt stream raises OSError (as DeflateIO does: EINVAL); the updater
# reports it as HashMismatch. Errors of `src` (DownloadError) pass through unchanged.
import io

from micropython import const

_CHUNK = const(256)

try:
    import deflate
except ImportError:  # CPython
    deflate = None  # type: ignore[assignment]


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
    if deflate is not None:
        return deflate.DeflateIO(_Bytes(src), deflate.ZLIB, wbits)
    return _Zlib(src, wbits)


if deflate is None:  # defined on CPython only: MicroPython frees this code after the import

    class _Zlib:
        def __init__(self, src, wbits):
            import zlib  # type: ignore[import-not-found]  # CPython only

            self._src = src
            self._z = zlib.decompressobj(wbits)
            self._err = zlib.error
            self._in = b""
            self._raw = bytearray(_CHUNK * 16)

        def readinto(self, buf):
            want = len(buf)
            while True:
                try:
                    out = self._z.decompress(self._in, want)
                except self._err as e:
                    raise OSError(22, "corrupt compressed stream (%s)" % e)
                self._in = self._z.unconsumed_tail
                if out:
                    buf[: len(out)] = out
                    return len(out)
                if self._z.eof:
                    return 0
                n = self._src.readinto(self._raw)
                if not n:
                    raise OSError(22, "compressed stream ends early")
                self._in = bytes(self._raw[:n])
