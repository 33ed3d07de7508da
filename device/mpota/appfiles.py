# Application files with the firmware: writes a release's app bundle (app{}, checked by
# mpota.appspec) into the inactive folder of its root. The board keeps two folders, <root>.a
# and <root>.b; state["app"] names the confirmed one, and the updater's pending record names the
# new one, so one state save (atomic) is what switches. Loaded only for a release with an app.
#
# Nothing outside the inactive folder is ever written or removed; the bundle is streamed (one
# file on the wire, the files' bytes in list order) through a 4 KiB buffer, each file hashed as
# it is written and read back before the update is recorded. A power cut at any point leaves
# the confirmed folder untouched and active: the next update starts the inactive one afresh.
import hashlib
import os

from micropython import const

import mpota.errors as errors

_BLOCK = const(4096)
_DIR = const(0x4000)


# The folder of an app record on this board: `base` is the config's folder ("/" on a board).
def folder(base, rec):
    return ("" if base == "/" else base) + rec["root"] + "." + rec["slot"]


# The slot letter the new files go to: the one the confirmed app of this root does not use.
def inactive(state, root):
    cur = state["app"]
    return "b" if cur and cur.get("root") == root and cur.get("slot") == "a" else "a"


def _isdir(p):
    try:
        return os.stat(p)[0] & _DIR != 0
    except OSError:
        return False


# Empty `top` (a folder of the app root's) without following anything out of it.
def _wipe(top):
    for name in os.listdir(top):
        p = top + "/" + name
        if _isdir(p):
            _wipe(p)
            os.rmdir(p)
        else:
            os.remove(p)


def _mkdir(p):
    if not _isdir(p):
        os.mkdir(p)


# Bytes the bundle takes on the filesystem: whole blocks per file, a block per file and folder
# for metadata, two blocks to spare (littlefs copies a block on write).
def _need(files, bs):
    n = 2 * bs
    dirs = {}
    for f in files:
        n += (f["size"] + bs - 1) // bs * bs + bs
        p = f["path"]
        i = p.rfind("/")
        while i > 0:
            dirs[p[:i]] = 1
            i = p.rfind("/", 0, i)
    return n + len(dirs) * bs


def _free(top):
    st = os.statvfs(top)
    return st[0], st[0] * st[4]  # block size, bytes free (f_bsize, f_bavail)


def _hex(h):
    import binascii

    return str(binascii.hexlify(h.digest()), "ascii")


# Stream offer o's bundle into the inactive folder; returns the record the pending update keeps
# ({root, slot, version, hash}). Raises too_big when the filesystem cannot hold it, hash_mismatch
# or size_mismatch when the bytes are not the signed ones. u: the Updater (state, block buffer,
# watchdog); src: its resuming HTTP stream of the bundle file, hashing into src.h (opened at the
# first read).
def install(u, o, src):
    app = o.app
    root = app["root"]
    rec = {"root": root, "slot": inactive(u.state, root), "version": o.version, "hash": app["hash"]}
    top = folder(u.cfg.root, rec)
    _mkdir(top)
    _wipe(top)  # a partial or superseded bundle: never the confirmed one
    bs, free = _free(top)
    need = _need(app["files"], bs)
    if need > free:
        raise errors.MetadataError("too_big",
                                   "app bundle needs %d bytes, the filesystem has %d free" % (need, free))
    buf = u._block()
    mv = memoryview(buf)
    try:
        for f in app["files"]:
            _write(u, src, top, f, mv)
        src.finish(mv[:1])
    finally:
        src.close()
    if _hex(src.h) != app["hash"][7:]:
        raise errors.IntegrityError("hash_mismatch", "app bundle hash mismatch")
    for f in app["files"]:  # read back: what the next boot will import
        h = hashlib.sha256()
        with open(top + "/" + f["path"], "rb") as fh:
            while True:
                n = fh.readinto(mv)
                if not n:
                    break
                h.update(mv if n == _BLOCK else mv[:n])
                u._feed()
        if _hex(h) != f["hash"][7:]:
            raise errors.FlashError("flash", "app file %s reads back wrong" % f["path"])
    if hasattr(os, "sync"):
        os.sync()
    return rec


# Fill v (n bytes) from the stream; the bytes read (fewer only at its end).
def _fill(src, v, n):
    got = 0
    while got < n:
        k = src.readinto(v if got == 0 else v[got:])
        if not k:
            break
        got += k
    return got


def _write(u, src, top, f, mv):
    p = f["path"]
    i = p.find("/")
    while i > 0:
        _mkdir(top + "/" + p[:i])
        i = p.find("/", i + 1)
    h = hashlib.sha256()
    left = f["size"]
    with open(top + "/" + p, "wb") as out:
        while left:
            n = left if left < _BLOCK else _BLOCK
            v = mv if n == _BLOCK else mv[:n]
            got = _fill(src, v, n)
            if got < n:
                raise errors.IntegrityError("size_mismatch", "app bundle ends inside %s" % p)
            h.update(v)
            out.write(v)
            u._feed()
            left -= n
    if _hex(h) != f["hash"][7:]:
        raise errors.IntegrityError("hash_mismatch", "app file %s hash mismatch" % p)
