# CPython stand-in for deflate.DeflateIO (mpota.inflate.reader on CPython: tests, simulator):
# zlib.decompressobj behind readinto(buf) -> n, a corrupt stream raising OSError(EINVAL) as
# DeflateIO does. Never imported on MicroPython (it has `deflate`).
from micropython import const

_CHUNK = const(4096)


class Zlib:
    def __init__(self, src, wbits):
        import zlib  # type: ignore[import-not-found]  # CPython only

        self._src = src
        self._z = zlib.decompressobj(wbits)
        self._err = zlib.error
        self._in = b""
        self._raw = bytearray(_CHUNK)

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
