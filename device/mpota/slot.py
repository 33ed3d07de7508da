# Streams an image into a flash slot, block by block, hashing as it writes:
#
#   w = Writer(part, size, buf, first, feed)
#   w.start(pos)              # resume: `pos` bytes (whole blocks) are in the slot; re-hashed
#   while w.put(reader): ...  # reader: anything with readinto(buf) -> n (0 at its end)
#   w.end(reader)             # the reader must have nothing more
#   w.hex()                   # SHA-256 of the image written (hex)
#   w.verify(hexhash)         # read the slot back: True when it hashes to hexhash
#
# part is an esp32.Partition (or its stand-in): readblocks/writeblocks of 4 KiB blocks, a
# whole-block writeblocks erasing its sector first. buf is the caller's 4 KiB buffer, reused
# for every block; a whole block is read and written without allocating. first(block) checks
# the image's first block before anything is written (it raises to refuse the image); feed()
# runs after every block (watchdogs). Errors: a reader raising OSError or EOFError (a
# corrupt zlib stream, one that stops early: DeflateIO's errors) is HashMismatch, a stream
# ending early or going on past `size` SizeMismatch; the partition's own errors pass through.
import binascii
import hashlib

from micropython import const

import mpota.errors as errors

_BLOCK = const(4096)


# Fill mv[:want] from reader; the bytes read (short only at the end of the stream).
def _fill(reader, mv, want):
    got = 0
    if want == len(mv):
        got = reader.readinto(mv)  # the whole view: no slice
        if not got:
            return 0
    while got < want:
        n = reader.readinto(mv[got:want])
        if not n:
            break
        got += n
    return got


def _read(reader, mv, want):
    try:
        return _fill(reader, mv, want)
    except (OSError, EOFError) as e:  # only a decompressor raises them (http raises DownloadError)
        raise errors.IntegrityError("hash_mismatch", "corrupt compressed stream (%s)" % e)


class Writer:
    def __init__(self, part, size, buf, first, feed):
        self.part = part
        self.size = size
        self.buf = buf
        self.mv = mv = memoryview(buf)
        tail = size % _BLOCK
        self.last = mv[:tail] if tail else mv  # the view of the image's last block
        self.one = mv[:1]
        self.first = first
        self.feed = feed
        self.nblk = (size + _BLOCK - 1) // _BLOCK
        self.start(0)

    # Go on from byte `pos` of the image (rounded down to a block): the blocks before it are
    # in the slot already (an earlier, interrupted transfer) and are read back into the hash.
    def start(self, pos):
        n = min(pos, self.size - 1) // _BLOCK
        self.h = self._hash(n)
        self.blk = n
        self.pos = n * _BLOCK

    # SHA-256 of the slot's first n blocks (n = nblk: the image), feeding every block.
    def _hash(self, n):
        h = hashlib.sha256()
        mv = self.mv
        for b in range(n):
            self.part.readblocks(b, self.buf)
            if b == 0 and n < self.nblk:
                self.first(mv)
            h.update(self.last if b == self.nblk - 1 else mv)
            self.feed()
        return h

    # Read the next block from reader, hash it, write it; False once the image is complete.
    def put(self, reader):
        blk = self.blk
        if blk >= self.nblk:
            return False
        mv = self.last if blk == self.nblk - 1 else self.mv
        want = len(mv)
        got = _read(reader, mv, want)
        if got < want:
            raise errors.IntegrityError("size_mismatch",
                                        "image ends at %d of %d bytes" % (self.pos + got, self.size))
        if blk == 0:
            self.first(self.mv)  # early reject, before anything is written
        self.h.update(mv)
        if want < _BLOCK:
            buf = self.buf
            for i in range(want, _BLOCK):
                buf[i] = 0xFF
        self.part.writeblocks(blk, self.buf)
        self.blk = blk + 1
        self.pos += want
        self.feed()
        return True

    # After the last block: the reader must be at its end.
    def end(self, reader):
        if _read(reader, self.one, 1):
            raise errors.IntegrityError("size_mismatch", "image longer than the manifest declares")

    def hex(self):
        return str(binascii.hexlify(self.h.digest()), "ascii")

    # The image as the bootloader will read it: one pass over the slot.
    def verify(self, hexhash):
        return str(binascii.hexlify(self._hash(self.nblk).digest()), "ascii") == hexhash
