# Fake of MicroPython's deflate module for device code under CPython (the unix port and the
# boards have the real one built in): DeflateIO(stream, ZLIB, wbits) decompresses with CPython's
# zlib behind readinto(buf) -> n; a corrupt stream raises OSError(EINVAL) and one that stops
# early EOFError, as DeflateIO does. Only the zlib format is modelled (the one mpota transfers use).
import zlib

AUTO = 0
RAW = 1
ZLIB = 2
GZIP = 3

_CHUNK = 4096


class DeflateIO:
    def __init__(self, stream, format=AUTO, wbits=0, close=False):
        if format != ZLIB:
            raise ValueError("the deflate fake models the zlib format only")
        self._src = stream
        self._z = zlib.decompressobj(wbits or 15)
        self._in = b""
        self._raw = bytearray(_CHUNK)

    def readinto(self, buf):
        want = len(buf)
        while True:
            try:
                out = self._z.decompress(self._in, want)
            except zlib.error as e:
                raise OSError(22, "corrupt compressed stream (%s)" % e)
            self._in = self._z.unconsumed_tail
            if out:
                buf[: len(out)] = out
                return len(out)
            if self._z.eof:
                return 0
            n = self._src.readinto(self._raw)
            if not n:
                raise EOFError("compressed stream ends early")
            self._in = bytes(self._raw[:n])
