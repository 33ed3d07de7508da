"""Application bundles: a folder of the board's Python files made into a release's app{} section
(docs/FORMATS.md "Application bundle") and the one file the board downloads, and checked back.

The bundle file (``app.bin``) is the files' bytes one after another in the manifest's order; the
manifest lists each file's path (relative to the root), size and SHA-256, and the bundle file's
size and SHA-256. The path rules are host_tools.manifest.check_app_path (the device's are
device/mpota/appspec.py; tests/vectors/trust holds both to the same verdicts).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from host_tools.errors import MpotaError
from host_tools.manifest import (
    MAX_APP_BYTES,
    MAX_APP_FILE_BYTES,
    MAX_APP_FILES,
    AppBundle,
    AppFile,
    ManifestError,
    check_app_path,
)

BUNDLE_NAME = "app.bin"
DEFAULT_ROOT = "/app"


class AppBundleError(MpotaError):
    """An app folder that cannot be a bundle, or a bundle file that does not match its manifest."""


@dataclass
class Bundle:
    app: AppBundle
    data: bytes  # the bundle file


def _files(src: Path) -> list[tuple[str, Path]]:
    if not src.is_dir():
        raise AppBundleError(f"--app {src} is not a folder")
    out: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if n != "__pycache__")
        for n in dirnames:
            if (d / n).is_symlink():
                raise AppBundleError(f"{d / n} is a symbolic link; a bundle holds plain files only")
        for n in sorted(filenames):
            p = d / n
            if p.is_symlink() or not p.is_file():
                raise AppBundleError(f"{p} is not a plain file; a bundle holds plain files only")
            if n.endswith(".pyc"):
                continue
            rel = p.relative_to(src).as_posix()
            try:
                check_app_path(rel, "app file")
            except ManifestError as exc:
                raise AppBundleError(f"{p}: {exc}") from None
            out.append((rel, p))
    if not out:
        raise AppBundleError(f"--app {src} holds no files")
    return out


def _compile(tool: str, rel: str, src: Path, tmp: Path) -> bytes:
    dst = tmp / "out.mpy"
    try:
        p = subprocess.run([tool, "-o", str(dst), "-s", rel, str(src)], capture_output=True, text=True,
                           timeout=120)
    except OSError as exc:
        raise AppBundleError(f"cannot run {tool}: {exc.strerror or exc}") from None
    if p.returncode != 0:
        why = (p.stderr or p.stdout).strip().splitlines()
        raise AppBundleError(f"mpy-cross failed on {rel}: {why[-1] if why else 'exit ' + str(p.returncode)}")
    return dst.read_bytes()


def build_bundle(src_dir: str | os.PathLike[str], root: str = DEFAULT_ROOT, *, url: str = BUNDLE_NAME,
                 mpy_cross: str | None = None) -> Bundle:
    """The bundle of every file under src_dir (sorted paths, __pycache__ and .pyc left out). With
    ``mpy_cross`` (the mpy-cross program, whose .mpy version must be the board's MicroPython's)
    each .py file is compiled to .mpy: the board imports the bundle's modules, never runs them as
    scripts."""
    src = Path(src_dir)
    entries: list[tuple[str, bytes]] = []
    with tempfile.TemporaryDirectory(prefix="mpota-app-") as t:
        for rel, p in _files(src):
            if mpy_cross and rel.endswith(".py"):
                rel = rel[:-3] + ".mpy"
                data = _compile(mpy_cross, rel[:-4] + ".py", p, Path(t))
            else:
                data = p.read_bytes()
            if len(data) > MAX_APP_FILE_BYTES:
                raise AppBundleError(f"{p} is {len(data)} bytes; a bundle file holds at most "
                                     f"{MAX_APP_FILE_BYTES}")
            entries.append((rel, data))
    names = [r for r, _ in entries]
    if len(set(names)) != len(names):
        raise AppBundleError("two files of the folder compile to the same .mpy path")
    if len(entries) > MAX_APP_FILES:
        raise AppBundleError(f"--app {src} holds {len(entries)} files; a bundle holds at most "
                             f"{MAX_APP_FILES}")
    blob = b"".join(d for _, d in entries)
    if len(blob) > MAX_APP_BYTES:
        raise AppBundleError(f"--app {src} holds {len(blob)} bytes; a bundle holds at most {MAX_APP_BYTES}")
    files = [AppFile(r, len(d), "sha256:" + hashlib.sha256(d).hexdigest()) for r, d in entries]
    try:
        app = AppBundle(root=root, url=url, size=len(blob), hash="sha256:" + hashlib.sha256(blob).hexdigest(),
                        files=files)
    except ManifestError as exc:
        raise AppBundleError(str(exc)) from None
    return Bundle(app, blob)


def check_bundle(app: AppBundle, data: bytes) -> list[tuple[str, bytes]]:
    """The files of a bundle file, each checked against the manifest (size, SHA-256)."""
    if len(data) != app.size or "sha256:" + hashlib.sha256(data).hexdigest() != app.hash:
        raise AppBundleError(f"{app.url}: size or SHA-256 does not match the manifest's app section")
    out = []
    pos = 0
    for f in app.files:
        part = data[pos:pos + f.size]
        pos += f.size
        if "sha256:" + hashlib.sha256(part).hexdigest() != f.hash:
            raise AppBundleError(f"{app.url}: {f.path} does not match its SHA-256 in the manifest")
        out.append((f.path, part))
    return out


def app_lines(app: AppBundle | None) -> list[str]:
    """The bundle as `mpota sign`, `verify` and `image info` print it (nothing for no bundle)."""
    if app is None:
        return []
    out = [f"app: {len(app.files)} file(s), {app.size} bytes, under {app.root} ({app.url} {app.hash[:19]})"]
    out += [f"  {f.path}  {f.size} bytes  {f.hash[:19]}" for f in app.files]
    return out
