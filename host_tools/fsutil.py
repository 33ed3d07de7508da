"""Atomic file writes: a reader (or a web server) never sees a half-written file.

Published files must be readable by whatever user serves them (nginx as www-data,
`python3 -m http.server` as nobody): files are written 0644 and the folders created for them
0755, whatever the umask. Secrets pass mode=0o600.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

FILE_MODE = 0o644
DIR_MODE = 0o755


def make_dirs(path: str | os.PathLike[str]) -> None:
    """Create `path` and its missing parents as DIR_MODE (folders that exist are left alone)."""
    p = Path(path)
    missing = []
    while not p.is_dir():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
        except FileExistsError:
            if not d.is_dir():
                raise
            continue
        os.chmod(d, DIR_MODE)  # mkdir's mode goes through the umask


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int | None = None) -> None:
    """Write data to path via a temp file in the same folder, fsync, chmod (FILE_MODE unless
    `mode` says otherwise), then os.replace."""
    target = Path(path)
    make_dirs(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE if mode is None else mode)  # mkstemp creates 0600
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dirfd = os.open(target.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)


def atomic_write_text(path: str | os.PathLike[str], text: str, mode: int | None = None) -> None:
    atomic_write(path, text.encode("utf-8"), mode)
