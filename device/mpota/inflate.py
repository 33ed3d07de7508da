# Streaming zlib decompression of the transfer: `reader(src, window_bits)` returns an
# object with readinto(buf). On MicroPython that is deflate.DeflateIO (a window of
# 2**window_bits bytes); CPython (tests, simulator) has no `deflate`, so zlib stands in.
# Corrupt input raises mpota.errors.HashMismatch.
import io

from micropython import const

_CHUNK = const(256)


# DeflateIO pulls its input one byte at a time: serve those bytes from a small buffer so
# each refill is one readinto on the transfer stream.
class _Bytes(io.IOBase):
    def __init__(self, src):
        self._src = src
        self._buf = bytearray(_CHUNK)
        self._n = 0
        self._i = 0

    def readinto(self, buf):
        i = self._i
        if i >= self._n:
            self._n = self._src.readinto(self._buf)
            if not self._n:
                return 0
            i = 0
        n = min(len(buf), self._n - i)
        buf[:n] = self._buf[i : i + n]
        self._i = i + n
        return n


class _Deflate:
    def __init__(self, src, wbits):
        import deflate

        self._d = deflate.DeflateIO(_Bytes(src), deflate.ZLIB, wbits)

    def readinto(self, buf):
        try:
            return self._d.readinto(buf)
        except OSError as e:  # EINVAL: corrupt stream or bad adler32
            from mpota.errors import HashMismatch

            raise HashMismatch("corrupt compressed stream (%s)" % e)


class _Zlib:
    def __init__(self, src, wbits):
        import zlib  # type: ignore[import-not-found]  # CPython only; MicroPython has deflate

        self._src = src
        self._z = zlib.decompressobj(wbits)
        self._in = b""
        self._raw = bytearray(_CHUNK * 16)

    def readinto(self, buf):
        import zlib  # type: ignore[import-not-found]

        want = len(buf)
        while True:
            try:
                out = self._z.decompress(self._in, want)
            except zlib.error as e:
                from mpota.errors import HashMismatch

                raise HashMismatch("corrupt compressed stream (%s)" % e)
            self._in = self._z.unconsumed_tail
            if out:
                buf[: len(out)] = out
                return len(out)
            if self._z.eof:
                return 0
            n = self._src.readinto(self._raw)
            if not n:
                from mpota.errors import HashMismatch

                raise HashMismatch("compressed stream ends early")
            self._in = bytes(self._raw[:n])


def reader(src, wbits):
    try:
        import deflate  # noqa: F401
    except ImportError:
        return _Zlib(src, wbits)
    return _Deflate(src, wbits)
