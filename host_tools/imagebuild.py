"""Build genuine ESP32 / ESP32-S3 app images (the format esptool's elf2image writes).

Used by the demo, the fleet simulator and the tests: an image has the 0xE9 header,
the extended header with the chip id, flash-mapped DROM/IROM segments aligned to
64 KiB MMU pages, an ``esp_app_desc_t`` at the start of the first segment, the
XOR checksum and the appended SHA-256. ``esptool image-info`` accepts them.

By default an image is built like MicroPython's own ESP32 firmware: its sdkconfig sets
``CONFIG_APP_EXCLUDE_PROJECT_VER_VAR=y`` and ``CONFIG_APP_EXCLUDE_PROJECT_NAME_VAR=y``, so the
app description's version and project name are empty. What tells two builds apart is then
``app_elf_sha256`` (esptool writes the ELF's SHA-256 there): here a hash of the build's
content, seeded by ``build`` (e.g. the release the image stands for).
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

APP_DESC_MAGIC = 0xABCD5432
IMAGE_MAGIC = 0xE9
CHECKSUM_SEED = 0xEF
_PAGE = 0x10000


@dataclass(frozen=True)
class ChipLayout:
    chip_id: int
    drom: int  # load address of the first (DROM) segment, page-aligned + 0x20
    irom: int  # base of the IROM region (page 1 of the image maps here)
    dram: int
    iram: int
    entry: int
    max_rev_full: int


CHIPS: dict[str, ChipLayout] = {
    "esp32": ChipLayout(0, 0x3F400020, 0x400D0000, 0x3FFB0000, 0x40080000, 0x40080404, 399),
    "esp32s3": ChipLayout(9, 0x3C000020, 0x42000000, 0x3FC88000, 0x40374000, 0x40375000, 99),
}


def _cstr(text: str, size: int) -> bytes:
    raw = text.encode("utf-8")[: size - 1]
    return raw + b"\0" * (size - len(raw))


def app_desc(version: str, project_name: str, secure_version: int,
             date: str = "Nov 27 2026", time: str = "00:00:00", idf_ver: str = "v5.4.1",
             elf_sha256: bytes | None = None) -> bytes:
    """The 256-byte esp_app_desc_t that ESP-IDF puts first in the DROM segment."""
    if elf_sha256 is None:
        elf_sha256 = hashlib.sha256(f"{project_name}-{version}".encode()).digest()
    desc = struct.pack("<II8s", APP_DESC_MAGIC, secure_version, b"\0" * 8)
    desc += _cstr(version, 32) + _cstr(project_name, 32) + _cstr(time, 16) + _cstr(date, 16)
    desc += _cstr(idf_ver, 32) + elf_sha256
    desc += struct.pack("<HHB3s", 0, 0xFFFF, 16, b"\0" * 3)  # efuse blk revs, mmu page = 64 KiB (2^16)
    return desc + b"\0" * (256 - len(desc))


def _filler(seed: str, size: int) -> bytes:
    out = bytearray()
    block = hashlib.sha256(seed.encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def build_app_image(
    chip: str = "esp32",
    version: str = "",
    project_name: str = "",
    secure_version: int = 0,
    code: bytes | None = None,
    code_size: int = 0x8000,
    hash_appended: bool = True,
    rodata: bytes = b"",
    build: str | None = None,
) -> bytes:
    """Return a bootable app image. ``code`` (e.g. real machine code) fills IROM; else filler.

    ``version``/``project_name`` go into the app description; both are empty by default, as in
    MicroPython's own builds. ``build`` (default: the version) seeds the filler and the
    app_elf_sha256, so builds of different releases differ even without a version.
    ``rodata`` goes into the read-only data right after the app description (within the image's
    first 4 KiB: the simulated board reads its firmware's behaviour from there, sim/images.py).
    """
    if chip not in CHIPS:
        raise ValueError(f"unknown chip {chip!r} (known: {', '.join(sorted(CHIPS))})")
    lay = CHIPS[chip]
    seed = version if build is None else build
    if code is None:
        code = _filler(f"{chip}-{project_name}-{seed}-code", code_size)
    code = code + b"\0" * (-len(code) % 4)
    dram, iram = _filler(f"{seed}-dram", 512), _filler(f"{seed}-iram", 1024)
    elf = hashlib.sha256(b"".join([f"{chip}|{project_name}|{version}|{seed}|{secure_version}|{rodata.hex()}|"
                                   .encode(), code, dram, iram])).digest()

    # First segment: app_desc + rodata, sized so the IROM segment data starts at file
    # offset 0x10020, the page alignment the bootloader needs to map it (addr % 64K == off % 64K).
    drom_len = _PAGE - 8
    drom = app_desc(version, project_name, secure_version, elf_sha256=elf) + rodata
    drom += _filler(f"{chip}-{seed}-rodata", drom_len - len(drom))
    segments = [
        (lay.drom, drom),
        (lay.irom + _PAGE + 0x20, code),
        (lay.dram, dram),
        (lay.iram, iram),
    ]

    flash_size_nibble = 0x20  # 4 MB, 40 MHz: esptool rewrites these when flashing
    header = struct.pack("<BBBBI", IMAGE_MAGIC, len(segments), 2, flash_size_nibble, lay.entry)
    ext = struct.pack("<B3sHBHH4sB", 0xEE, b"\0\0\0", lay.chip_id, 0, 0, lay.max_rev_full,
                      b"\0" * 4, 1 if hash_appended else 0)
    body = bytearray(header + ext)
    checksum = CHECKSUM_SEED
    for addr, data in segments:
        body += struct.pack("<II", addr, len(data)) + data
        for b in data:
            checksum ^= b
    body += b"\0" * (15 - len(body) % 16)
    body.append(checksum)
    if hash_appended:
        body += hashlib.sha256(body).digest()
    return bytes(body)


def build_combined_image(chip: str, app: bytes, partition_table: bytes, bootloader_offset: int,
                         app_offset: int = 0x10000) -> bytes:
    """A MicroPython-style firmware.bin: bootloader at bootloader_offset, table at 0x8000, app.

    The result starts at bootloader_offset (as `esptool write-flash 0x1000 firmware.bin`).
    """
    lay = CHIPS[chip]
    boot = bytearray(struct.pack("<BBBBI", IMAGE_MAGIC, 1, 2, 0x20, lay.iram + 0x80))
    boot += struct.pack("<B3sHBHH4sB", 0xEE, b"\0\0\0", lay.chip_id, 0, 0, lay.max_rev_full, b"\0" * 4, 0)
    seg = _filler("bootloader", 0x4000)
    boot += struct.pack("<II", 0x3FFF0000, len(seg)) + seg
    cks = CHECKSUM_SEED
    for b in seg:
        cks ^= b
    boot += b"\0" * (15 - len(boot) % 16)
    boot.append(cks)
    out = bytearray(b"\xff" * (app_offset - bootloader_offset))
    out[0 : len(boot)] = boot
    pt = 0x8000 - bootloader_offset
    out[pt : pt + len(partition_table)] = partition_table
    return bytes(out) + app


def app_elf_sha256(image: bytes) -> bytes:
    """The app_elf_sha256 of an app image's esp_app_desc_t (what tells stock builds apart)."""
    return image[0x20 + 144 : 0x20 + 176]
