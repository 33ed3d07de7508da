# The board's filesystem as a littlefs on the vfs partition behaves for device code:
# - a capacity: the vfs partition's size in 4 KiB blocks; a file takes its bytes rounded up to
#   blocks plus a metadata block, a folder one block; os.statvfs reports what is left and a
#   write that would pass it raises OSError(ENOSPC) before any byte lands;
# - rename and remove are atomic (the host's), rename replaces an existing file;
# - with run.json "fs_cuts" (a list of board paths, e.g. ["/app"]), every file operation under
#   those paths is a power-cut point like a flash operation (op kind "file"): opening a file for
#   writing, each write() call, closing it, remove, rename, mkdir, rmdir. A cut leaves the bytes
#   written so far (littlefs would keep the file as of its last close, FAT as far as it got):
#   device code must trust none of it.
# Reads are not wrapped: open() for reading returns the port's own file.
import sys

import simflash

BLOCK = 4096
ENOSPC = 28
_DIR = 0x4000

_fs = None


def _blocks(n):
    return (n + BLOCK - 1) // BLOCK


class _File:
    def __init__(self, fs, f, path, size, watched):
        self._f = f
        self._fs = fs
        self._path = path
        self._size = size
        self._watched = watched

    def write(self, data):
        n = len(data)
        fs = self._fs
        grow = _blocks(self._size + n) - _blocks(self._size)
        if grow and fs.used + grow > fs.capacity:
            raise OSError(ENOSPC)
        if self._watched:
            fs.op(n)
        r = self._f.write(data)
        fs.used += grow
        self._size += n
        if self._watched:
            simflash.RUN.op_done()
        return r

    def close(self):
        if self._f is None:
            return
        if self._watched:
            self._fs.op(0)
        self._f.close()
        self._f = None
        if self._watched:
            simflash.RUN.op_done()

    def flush(self):
        return self._f.flush()

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def __getattr__(self, name):
        return getattr(self._f, name)


class FS:
    def __init__(self, osmod, real_open, top, prefix, capacity, watch):
        self.os = osmod
        self.open_ = real_open
        self.prefix = prefix  # host path of the board's "/" as device code writes it ("" on MicroPython)
        self.capacity = capacity // BLOCK
        self.watch = watch
        self.real = {}
        for name in ("stat", "remove", "rename", "mkdir", "rmdir"):
            self.real[name] = getattr(osmod, name)
        self.used = self._walk(top)

    # A path on the board's filesystem (CPython: under its host folder; the harness's own files
    # are not the board's).
    def inside(self, path):
        return isinstance(path, str) and (not self.prefix or path.startswith(self.prefix + "/"))

    def _stat(self, path):
        try:
            return self.real["stat"](path)
        except OSError:
            return None

    def _walk(self, top):
        n = 0
        for name in self.os.listdir(top):
            p = top.rstrip("/") + "/" + name
            st = self._stat(p)
            if st is None:
                continue
            if st[0] & _DIR:
                n += 1 + self._walk(p)
            else:
                n += 1 + _blocks(st[6])
        return n

    def watched(self, path):
        if not self.watch or not isinstance(path, str):
            return False
        if self.prefix and path.startswith(self.prefix):
            path = path[len(self.prefix):]
        for w in self.watch:
            if path.startswith(w):
                return True
        return False

    def op(self, n):
        simflash.RUN.op("file", 0, n)

    def _cut(self, path, fn, *args):
        w = self.watched(path)
        if w:
            self.op(0)
        r = fn(*args)
        if w:
            simflash.RUN.op_done()
        return r

    def _size_of(self, path):
        st = self._stat(path)
        if st is None:
            return None
        return -1 if st[0] & _DIR else st[6]

    # --- the wrapped calls ---
    def open(self, path, mode="r", *args, **kw):
        if not self.inside(path) or not any(c in mode for c in "wax+"):
            return self.open_(path, mode, *args, **kw)
        old = self._size_of(path)
        w = self.watched(path)
        if old is None and self.used + 1 > self.capacity:
            raise OSError(ENOSPC)
        if w:
            self.op(0)
        f = self.open_(path, mode, *args, **kw)
        size = old or 0
        if old is None:
            self.used += 1
        elif "w" in mode:
            self.used -= _blocks(old)
            size = 0
        if w:
            simflash.RUN.op_done()
        return _File(self, f, path, size, w)

    def remove(self, path):
        if not self.inside(path):
            return self.real["remove"](path)
        old = self._size_of(path)
        self._cut(path, self.real["remove"], path)
        if old is not None and old >= 0:
            self.used -= 1 + _blocks(old)

    def rename(self, src, dst):
        if not self.inside(dst):
            return self.real["rename"](src, dst)
        old = self._size_of(dst)
        self._cut(dst if self.watched(dst) else src, self.real["rename"], src, dst)
        if old is not None and old >= 0:
            self.used -= 1 + _blocks(old)

    def mkdir(self, path, *a):
        if not self.inside(path):
            return self.real["mkdir"](path, *a)
        if self.used + 1 > self.capacity:
            raise OSError(ENOSPC)
        self._cut(path, self.real["mkdir"], path, *a)
        self.used += 1

    def rmdir(self, path):
        if not self.inside(path):
            return self.real["rmdir"](path)
        self._cut(path, self.real["rmdir"], path)
        self.used -= 1

    def statvfs(self, path):
        free = max(0, self.capacity - self.used)
        return (BLOCK, BLOCK, self.capacity, free, free, 0, 0, 0, 0, 255)


def _capacity(cfg):
    for e in cfg.get("partitions", []):
        if e[0] == "vfs":
            return e[4]
    return 1 << 20


# Put the model in front of `osmod` (the os module device code imports) and builtins.open.
# top: the board's "/" as osmod lists it; prefix: what device paths start with for "/";
# watch: board paths whose file operations are power-cut points (or None).
def install(osmod, top, prefix, cfg, watch):
    global _fs
    import builtins

    fs = FS(osmod, builtins.open, top, prefix, cfg.get("fs_size") or _capacity(cfg), watch)
    osmod.remove = fs.remove
    osmod.rename = fs.rename
    osmod.mkdir = fs.mkdir
    osmod.rmdir = fs.rmdir
    osmod.statvfs = fs.statvfs
    builtins.open = fs.open
    _fs = fs
    sys.modules.pop("simfs", None)  # the FS object stays (it is what the wrappers are bound to)
    return fs
