"""mpota.slot.Writer on its own, on the simulated board's flash, under CPython and MicroPython.

The updater's plain, zlib and delta paths all write through it (tests/test_updater.py,
tests/test_delta_update.py, the power-cut torture); here each of its promises is checked
directly: any readinto() source, the short last block padded with 0xFF, the first block checked
before anything is written, resume from a written prefix (re-hashed from the slot, the rest
written from where it stopped), a stream ending early or going on past the image refused, a
corrupt stream (OSError from the reader) reported as a hash mismatch, and the read-back.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sim.feedkit import Board, Keys, device_config, image, serve

SIZE = 3 * 4096 + 1000

_SCRIPT = r'''
import json, simboot
import esp32
import mpota.slot as S
import mpota.errors as E
part = esp32.Partition(esp32.Partition.RUNNING).get_next_update()
data = open(simboot.ROOT + "/img.bin", "rb").read()

class Src:  # a readinto() source handing out at most `step` bytes a call, then `extra`
    def __init__(self, b, step, extra=b"", fail_at=None):
        self.b, self.i, self.step, self.extra, self.fail_at = b + extra, 0, step, extra, fail_at
    def readinto(self, buf):
        if self.fail_at is not None and self.i >= self.fail_at:
            raise OSError(22)
        n = min(len(buf), self.step, len(self.b) - self.i)
        buf[:n] = self.b[self.i:self.i + n]
        self.i += n
        return n

firsts = []
feeds = [0]
def first(block):
    firsts.append(bytes(block[:2]))
    if block[0] != data[0]:
        raise E.IntegrityError("bad_image", "magic")
def feed():
    feeds[0] += 1

def write(src, start=0):
    w = S.Writer(part, len(data), bytearray(4096), first, feed)
    w.start(start)
    at = w.pos
    while w.put(src):
        pass
    w.end(src)
    return w, at

def err(f):
    try:
        f()
    except Exception as e:
        return getattr(e, "code", type(e).__name__)
    return None

out = {}
w, _ = write(Src(data, 1000))
out["hash"] = w.hex()
out["verify"] = w.verify(HASH)
out["feeds"] = feeds[0]
slot = bytearray((len(data) + 4095) // 4096 * 4096)
part.readblocks(0, slot)
out["tail_ff"] = all(b == 0xFF for b in slot[len(data):])
# resume: two blocks in the slot already; the source starts there
w, at = write(Src(data[8192:], 4096), 8192 + 100)
out["resume_at"] = at
out["resume_hash"] = w.hex()
out["resume_firsts"] = len(firsts)
out["short"] = err(lambda: write(Src(data[:-1], 4096)))
out["long"] = err(lambda: write(Src(data, 4096, b"x")))
out["corrupt"] = err(lambda: write(Src(data, 4096, fail_at=4096)))
bad = bytearray(data)
bad[0] = 0
out["bad_first"] = err(lambda: write(Src(bytes(bad), 4096)))
blk = bytearray(4096)
part.readblocks(0, blk)
out["bad_first_wrote_nothing"] = bytes(blk[:16]) == data[:16]
part.writeblocks(2, bytearray(4096))  # damage the written image
out["verify_damaged"] = S.Writer(part, len(data), bytearray(4096), None, feed).verify(HASH)
print("RESULT " + json.dumps(out))
'''


@pytest.mark.parametrize("interp", ["cpython", "micropython"])
def test_writer(tmp_path: Path, interp: str) -> None:
    data = image("1.1.0", size=SIZE)
    digest = hashlib.sha256(data).hexdigest()
    (tmp_path / "feed").mkdir()
    with serve(tmp_path / "feed") as srv:
        b = Board(tmp_path / "sim", image("1.0.0"), device_config(srv, Keys(tmp_path / "keys")))
        (b.sim.fs / "img.bin").write_bytes(data)
        res = b.run(_SCRIPT.replace("HASH", repr(digest)), interp).result()
    assert res["hash"] == digest and res["verify"] is True
    nblk = (len(data) + 4095) // 4096
    assert len(data) % 4096  # a short last block
    assert res["feeds"] == 2 * nblk and res["tail_ff"]  # fed for each block written and read back
    # resumed at a block boundary (8292 rounds down to 8192), the prefix re-hashed from the slot
    # with its first block checked again, the rest written: the same image hash
    assert res["resume_at"] == 8192 and res["resume_hash"] == digest and res["resume_firsts"] == 2
    assert res["short"] == "size_mismatch" and res["long"] == "size_mismatch"
    assert res["corrupt"] == "hash_mismatch"
    assert res["bad_first"] == "bad_image" and res["bad_first_wrote_nothing"]
    assert res["verify_damaged"] is False
