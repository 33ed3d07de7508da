# Streams an image into a flash slot, block by block, hashing as it writes:
#
#   w = Writer(part, size, buf, first, feed)
#   w.start(pos)              # resume: `pos` bytes (whole blocks) are in the slot; re-hashed
#   while w.put(reader): ...  # reader: anything with readinto(buf) -> n (0 at its end)
#   w.put(reader, upto)       # ... or blocks up to block `upto` in one call (the updater's runs)
#   w.end(reader, fin)        # the reader must have nothing more (then fin(), if given)
#   w.hex()                   # SHA-256 of the image written (hex)
#   w.verify(hexhash)         # read the slot back: True when it hashes to hexhash
#   hashes(part, buf, sizes, feed)  # SHA-256s of a slot's first sizes[i] bytes, one pass
#
# part is an esp32.Partition (or its stand-in): readblocks/writeblocks of 4 KiB blocks, a
# whole-block writeblocks erasing its sector first. buf is the caller's 4 KiB buffer, reused
# for every block; a whole block is read and written without allocating. first(block) checks
# the image's first block before anything is written (it raises to refuse the image); feed()
# runs after every block (watchdogs). Errors: a reader raising OSError or EOFError (a
# corrupt zlib stream, one that stops early: DeflateIO's errors) is an IntegrityError
# hash_mismatch, a stream ending early or going on past `size` size_mismatch; the
# partition's own errors pass through.
import binascii
import hashlib

from micropython import const

import mpota.errors as errors

_BLOCK = const(4096)

# What a decompressor raises on a corrupt stream (DeflateIO: OSError, or EOFError when it
# stops early; http raises DownloadError): the image's bytes are not the signed ones.
_CORRUPT = (OSError, EOFError)


def _corrupt(e):
    raise errors.IntegrityError("hash_mismatch", "corrupt compressed stream (%s)" % e)


# Fill mv from reader: the bytes read (short only at the end of the stream).
def _read(reader, mv):
    want = len(mv)
    got = 0
    try:
        while got < want:
            n = reader.readinto(mv[got:] if got else mv)
            if not n:
                break
            got += n
    except _CORRUPT as e:
        _corrupt(e)
    return got


def hexdigest(h):
    return str(binascii.hexlify(h.digest()), "ascii")


# SHA-256s of the slot's first sizes[i] bytes, all in one pass over the slot (the running
# image's hash for each patch base size; a written prefix or the whole image for a Writer).
# buf: 4 KiB, reused; first(block) sees block 0 before it is hashed; feed() after every block.
def hashes(part, buf, sizes, feed, first=None):
    hs = [hashlib.sha256() for _ in sizes]
    mv = memoryview(buf)
    end = max(sizes) if sizes else 0
    b = off = 0
    while off < end:
        part.readblocks(b, buf)
        if first is not None and not b:
            first(mv)
        for i in range(len(sizes)):
            n = sizes[i] - off
            if n >= _BLOCK:
                hs[i].update(mv)
            elif n > 0:
                hs[i].update(mv[:n])
        feed()
        b += 1
        off += _BLOCK
    return hs


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
        self.h = hashes(self.part, self.buf, (n * _BLOCK,), self.feed, self.first)[0]
        self.blk = n
        self.pos = n * _BLOCK

    # Read blocks from reader up to block `upto` (one block by default; at most the image's
    # end), hashing and writing each: the image bytes written so far, False once the image is
    # complete. The loop keeps its state in locals (it runs once per block) and allocates
    # nothing when the reader fills whole blocks.
    def put(self, reader, upto=0):
        blk = self.blk
        nblk = self.nblk
        if blk >= nblk:
            return False
        if upto <= blk:
            upto = blk + 1
        elif upto > nblk:
            upto = nblk
        buf = self.buf
        mv = self.mv
        h = self.h
        part = self.part
        feed = self.feed
        pos = self.pos
        try:
            while blk < upto:
                if blk == nblk - 1:
                    mv = self.last
                want = len(mv)
                try:
                    got = reader.readinto(mv)  # whole blocks: one call, no slice
                except _CORRUPT as e:
                    _corrupt(e)
                if got and got < want:
                    got += _read(reader, mv[got:])
                if got < want:
                    raise errors.IntegrityError("size_mismatch",
                                                "image ends at %d of %d bytes" % (pos + got, self.size))
                if not blk:
                    self.first(self.mv)  # early reject, before anything is written
                h.update(mv)
                if want < _BLOCK:
                    for i in range(want, _BLOCK):
                        buf[i] = 0xFF
                part.writeblocks(blk, buf)
                blk += 1
                pos += want
                feed()
        finally:  # what is in the slot, also when the reader or the flash raised
            self.blk = blk
            self.pos = pos
        return pos

    # After the last block: the reader must be at its end; then fin(), the reader's own end
    # check when it has one (a delta applier's: the patch must end there too).
    def end(self, reader, fin=None):
        if _read(reader, self.one):
            raise errors.IntegrityError("size_mismatch", "image longer than the manifest declares")
        if fin is not None:
            try:
                fin()
            except _CORRUPT as e:
                _corrupt(e)

    def hex(self):
        return hexdigest(self.h)

    # The image as the bootloader will read it: one pass over the slot.
    def verify(self, hexhash):
        return hexdigest(hashes(self.part, self.buf, (self.size,), self.feed)[0]) == hexhash
