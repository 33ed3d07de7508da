# The device side of the delta tests: runs under MicroPython (unix port) and CPython.
#   micropython delta_runner.py CASES_DIR NAME...   (device/ and sim/fakes on MICROPYPATH or PYTHONPATH)
# Each case CASES_DIR/NAME.base (the running image), NAME.patch and NAME.size (the size the
# manifest declares): applies the patch with mpota.delta, the base in a read-only partition,
# the patch served in uneven pieces, and prints "RESULT " + {name: sha256 hex of the output or
# the error class name}.
import binascii
import hashlib
import json
import sys


class ReadOnly:
    # The running slot: readblocks(block, buf, offset) like esp32.Partition; no writes exist.
    def __init__(self, data):
        self.data = data
        self.reads = 0

    def readblocks(self, block, buf, offset=0):
        off = block * 4096 + offset
        n = len(buf)
        if off < 0 or off + n > len(self.data):
            raise OSError(5, "read outside the partition")
        buf[:] = self.data[off:off + n]
        self.reads += 1


class Pieces:
    # The patch stream in uneven pieces (1, 7, 300, 4096, 13 bytes, ...): every boundary case.
    SIZES = (1, 7, 300, 4096, 13, 2, 511, 64)

    def __init__(self, data):
        self.data = data
        self.pos = 0
        self.k = 0

    def readinto(self, buf):
        n = min(len(buf), self.SIZES[self.k % len(self.SIZES)], len(self.data) - self.pos)
        self.k += 1
        buf[:n] = self.data[self.pos:self.pos + n]
        self.pos += n
        return n


def read(path):
    with open(path, "rb") as f:
        return f.read()


def run(d, name):
    import mpota.delta as delta
    import mpota.errors as errors

    base = ReadOnly(read(d + "/" + name + ".base"))
    size = int(read(d + "/" + name + ".size"))
    try:
        r = delta.Patched(Pieces(read(d + "/" + name + ".patch")), base, len(base.data), size)
        h = hashlib.sha256()
        buf = bytearray(4096)
        mv = memoryview(buf)
        total = 0
        while True:
            n = r.readinto(buf)
            if not n:
                break
            h.update(mv[:n])
            total += n
        r.finish()
        if total != size:
            return "short"
        return str(binascii.hexlify(h.digest()), "ascii")
    except errors.IntegrityError as e:
        if e.code != "bad_patch":
            raise
        return "BadPatch"


if __name__ == "__main__":
    out = {}
    for name in sys.argv[2:]:
        out[name] = run(sys.argv[1], name)
    print("RESULT " + json.dumps(out))
