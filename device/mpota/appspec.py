# The rules of a release manifest's application bundle (docs/FORMATS.md "app"), checked by
# mpota.trust before anything is fetched; loaded only for a release that carries one. The host
# applies the same rules (host_tools/manifest.py AppBundle); tests/vectors/trust holds both.
#
# A file path can never leave the root: '/'-separated names of [A-Za-z0-9._-], none empty and
# none starting with '.', so no '..', no '.', no absolute path, no backslash.
from micropython import const

import mpota.errors as errors

MAX_FILES = const(64)
MAX_FILE = const(262144)
MAX_TOTAL = const(1048576)
_DEPTH = const(4)
_PATH = const(128)


def _bad(what):
    raise errors.MetadataError("malformed", "bad app " + what)


def _ok(c, dot):
    return "0" <= c <= "9" or "a" <= c <= "z" or "A" <= c <= "Z" or c in "_-" or (dot and c == ".")


# "/" and a folder name of 1-32 letters, digits, '_' or '-'.
def root(r):
    if not isinstance(r, str) or not 1 < len(r) <= 33 or r[0] != "/":
        _bad("root")
    for c in r[1:]:
        if not _ok(c, False):
            _bad("root")
    return r


def path(p):
    if not isinstance(p, str) or not 0 < len(p) <= _PATH:
        _bad("path")
    parts = p.split("/")
    if len(parts) > _DEPTH:
        _bad("path")
    for s in parts:
        if not 0 < len(s) <= 64 or not _ok(s[0], False):
            _bad("path")
        for c in s:
            if not _ok(c, True):
                _bad("path")
    return parts


def _int(v, lo, hi, what):
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        _bad(what)
    return v


def _hash(v):
    if not (isinstance(v, str) and len(v) == 71 and v[:7] == "sha256:"
            and all("0" <= c <= "9" or "a" <= c <= "f" for c in v[7:])):
        _bad("hash")


# The app{} object of a manifest; returns it.
def check(app):
    if not isinstance(app, dict):
        _bad("bundle")
    root(app.get("root"))
    u = app.get("url")
    if not isinstance(u, str) or not 0 < len(u) <= 512 or any(c in u for c in " \\\n\r\t"):
        _bad("url")
    size = _int(app.get("size"), 0, MAX_TOTAL, "size")
    _hash(app.get("hash"))
    fs = app.get("files")
    if not isinstance(fs, list) or not 0 < len(fs) <= MAX_FILES:
        _bad("files")
    files = {}
    dirs = {}
    total = 0
    for f in fs:
        if not isinstance(f, dict):
            _bad("files")
        p = f.get("path")
        parts = path(p)
        total += _int(f.get("size"), 0, MAX_FILE, "size")
        _hash(f.get("hash"))
        if p in files or p in dirs:
            _bad("path")  # listed twice, or a file where another one needs a folder
        files[p] = 1
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d in files:
                _bad("path")
            dirs[d] = 1
    if total != size:
        _bad("size")
    return app
