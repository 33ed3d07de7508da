"""Our own parser and validator of ESP32 firmware images (esptool is GPL: never imported).

An app image is what ESP-IDF's bootloader loads from an OTA slot::

    header (8)      magic 0xE9, segment count, SPI mode, flash size<<4 | freq, entry address
    ext header (16) WP pin, SPI drive (3), chip id (u16), min rev (u8), min/max rev full (u16, u16),
                    reserved (4), hash_appended (u8)
    segments        (load address u32, length u32, data) x count
    padding         zeros up to the checksum byte, the last byte of a 16-byte line
    checksum (1)    0xEF xor every segment data byte
    sha256 (32)     of everything before it, when hash_appended

The first segment of an ESP-IDF app starts with ``esp_app_desc_t`` (magic 0xABCD5432), carrying
secure_version, version, project name, build time and date, IDF version and the ELF SHA-256.

A *combined* flash image (MicroPython's firmware.bin, meant for ``esptool write-flash 0x1000``
on the ESP32, ``0x0`` on the ESP32-S3) starts with the bootloader, holds the partition table
(0xAA50 entries) at 0x8000 - bootloader_offset and the app at its ota_0/factory offset.
Only the app goes into an OTA slot, so only the app is signed.

``inspect_image`` never raises on bad content: it records findings (error/warning/note) in plain
language. ``load_app_image`` raises ImageError with one line for anything that must not be signed.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from host_tools.errors import MpotaError

IMAGE_MAGIC = 0xE9
APP_DESC_MAGIC = 0xABCD5432
CHECKSUM_SEED = 0xEF
PARTITION_MAGIC = b"\xaa\x50"
PARTITION_MD5_MAGIC = b"\xeb\xeb"
PARTITION_TABLE_FLASH_OFFSET = 0x8000
MAX_SEGMENTS = 16
MAX_IMAGE_FILE = 32 * 1024 * 1024
HEADER_LEN = 8
EXT_HEADER_LEN = 16
APP_DESC_LEN = 256

CHIP_NAMES: dict[int, str] = {
    0: "esp32", 2: "esp32s2", 5: "esp32c3", 9: "esp32s3", 12: "esp32c2",
    13: "esp32c6", 16: "esp32h2", 18: "esp32p4", 20: "esp32c61", 23: "esp32c5",
}
CHIP_IDS: dict[str, int] = {v: k for k, v in CHIP_NAMES.items()}
# Where the ROM loads the second-stage bootloader from, per chip (esptool's BOOTLOADER_FLASH_OFFSET).
BOOTLOADER_OFFSETS: dict[str, int] = {
    "esp32": 0x1000, "esp32s2": 0x1000, "esp32s3": 0x0, "esp32c3": 0x0, "esp32c2": 0x0,
    "esp32c6": 0x0, "esp32h2": 0x0, "esp32c61": 0x0, "esp32p4": 0x2000, "esp32c5": 0x2000,
}
FLASH_MODES = {0: "qio", 1: "qout", 2: "dio", 3: "dout"}
FLASH_SIZES = {0: "1MB", 1: "2MB", 2: "4MB", 3: "8MB", 4: "16MB", 5: "32MB", 6: "64MB", 7: "128MB"}
FLASH_FREQS = {0x0: "40m", 0x1: "26m", 0x2: "20m", 0xF: "80m"}

# (start, end, name) per chip, from the chips' memory maps.
_MEMORY: dict[str, tuple[tuple[int, int, str], ...]] = {
    "esp32": (
        (0x3F400000, 0x3F800000, "DROM"), (0x3F800000, 0x3FC00000, "EXTRAM_DATA"),
        (0x3FF80000, 0x3FF82000, "RTC_DRAM"), (0x3FF90000, 0x40000000, "DRAM"),
        (0x40070000, 0x40080000, "CACHE_IRAM"), (0x40080000, 0x400A0000, "IRAM"),
        (0x400C0000, 0x400C2000, "RTC_IRAM"), (0x400D0000, 0x40400000, "IROM"),
        (0x50000000, 0x50002000, "RTC_DATA"),
    ),
    "esp32s3": (
        (0x3C000000, 0x3E000000, "DROM"), (0x3FC88000, 0x3FD00000, "DRAM"),
        (0x40370000, 0x403E0000, "IRAM"), (0x42000000, 0x44000000, "IROM"),
        (0x50000000, 0x50002000, "RTC_DATA"), (0x600FE000, 0x60100000, "RTC_IRAM"),
    ),
}
_FLASH_MAPPED = ("DROM", "IROM", "EXTRAM_DATA")


class ImageError(MpotaError):
    """The file is not an image that may be used for this purpose (one-line reason)."""


@dataclass
class Finding:
    level: str  # "error" | "warning" | "note"
    message: str


@dataclass
class Segment:
    index: int
    load_addr: int
    length: int
    file_offset: int  # of the segment data, from the start of the image
    memory: str


@dataclass
class AppDesc:
    secure_version: int
    version: str
    project_name: str
    time: str
    date: str
    idf_ver: str
    app_elf_sha256: str


@dataclass
class Partition:
    label: str
    type: int
    subtype: int
    offset: int
    size: int
    flags: int


@dataclass
class ImageReport:
    """What inspect_image found; ``kind`` is app, bootloader, combined or invalid."""

    kind: str
    file_size: int
    image_length: int | None = None  # bytes the image occupies, including the appended hash
    segment_count: int | None = None
    flash_mode: str | None = None
    flash_size: str | None = None
    flash_freq: str | None = None
    entry: int | None = None
    chip_id: int | None = None
    chip: str | None = None
    min_chip_rev_full: int | None = None
    max_chip_rev_full: int | None = None
    hash_appended: bool | None = None
    segments: list[Segment] = field(default_factory=list)
    checksum_valid: bool | None = None
    sha256_valid: bool | None = None
    sha256: str | None = None  # appended digest (hex) when present and valid
    app_desc: AppDesc | None = None
    # combined images
    bootloader_offset: int | None = None
    flash_offset: int | None = None  # flash address of the file's first byte (where to write it)
    partition_table_offset: int | None = None
    partitions: list[Partition] = field(default_factory=list)
    app_partition: str | None = None
    app_flash_offset: int | None = None
    app_file_offset: int | None = None
    app: ImageReport | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def errors(self) -> list[str]:
        return [f.message for f in self.findings if f.level == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def add(self, level: str, message: str) -> None:
        self.findings.append(Finding(level, message))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def chip_name(chip_id: int) -> str:
    return CHIP_NAMES.get(chip_id, f"unknown chip id {chip_id}")


def rev_text(rev_full: int) -> str:
    return f"v{rev_full // 100}.{rev_full % 100}"


def memory_type(chip: str | None, addr: int) -> str:
    for start, end, name in _MEMORY.get(chip or "", ()):
        if start <= addr < end:
            return name
    return "unknown"


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_app_desc(data: bytes) -> AppDesc | None:
    if len(data) < APP_DESC_LEN or struct.unpack_from("<I", data, 0)[0] != APP_DESC_MAGIC:
        return None
    secure_version = struct.unpack_from("<I", data, 4)[0]
    version, project, time_, date, idf, elf = struct.unpack_from("<32s32s16s16s32s32s", data, 16)
    return AppDesc(secure_version, _cstr(version), _cstr(project), _cstr(time_), _cstr(date), _cstr(idf),
                   elf.hex())


def parse_image(data: bytes | memoryview, base: int = 0) -> ImageReport:
    """Parse one ESP image starting at data[base] (kind: app, bootloader or invalid)."""
    mv = memoryview(data)
    rep = ImageReport(kind="invalid", file_size=len(mv))
    # Each step reports what it finds; None/False: the image stops short of the next step.
    if not _read_header(mv, base, rep):
        return rep
    segments = _read_segments(mv, base, rep)
    if segments is None:
        return rep
    pos, checksum = segments
    end = _check_checksum(mv, base, pos, checksum, rep)
    if end is None:
        return rep
    end = _check_appended_hash(mv, base, end, rep)
    if end is None:
        return rep
    rep.image_length = end
    _find_app_desc(mv, base, rep)
    return rep


def _read_header(mv: memoryview, base: int, rep: ImageReport) -> bool:
    """The image header and extended header into rep; False where no segment can be read."""
    avail = len(mv) - base
    if avail <= 0:
        rep.add("error", "the file is empty")
        return False
    if mv[base] != IMAGE_MAGIC:
        rep.add("error", f"not an ESP image: first byte is 0x{mv[base]:02x}, an image starts with 0xE9")
        return False
    if avail < HEADER_LEN + EXT_HEADER_LEN:
        rep.add("error", f"truncated: {avail} bytes, shorter than the 24-byte image header")
        return False
    _, count, mode, size_freq, entry = struct.unpack_from("<BBBBI", mv, base)
    _, _, chip_id, _, min_rev, max_rev, _, hash_flag = struct.unpack_from("<B3sHBHH4sB", mv, base + 8)
    rep.segment_count = count
    rep.flash_mode = FLASH_MODES.get(mode, f"unknown ({mode})")
    rep.flash_size = FLASH_SIZES.get(size_freq >> 4, f"unknown (0x{size_freq >> 4:x})")
    rep.flash_freq = FLASH_FREQS.get(size_freq & 0xF, f"unknown (0x{size_freq & 0xF:x})")
    rep.entry = entry
    rep.chip_id = chip_id
    rep.chip = CHIP_NAMES.get(chip_id)
    rep.min_chip_rev_full = min_rev
    rep.max_chip_rev_full = max_rev
    rep.hash_appended = hash_flag == 1
    if rep.chip is None:
        rep.add("error", f"unknown chip id {chip_id} in the extended header")
    if hash_flag not in (0, 1):
        rep.add("error", f"hash_appended byte is {hash_flag}, expected 0 or 1")
    if count == 0 or count > MAX_SEGMENTS:
        rep.add("error", f"segment count {count} is out of range (1..{MAX_SEGMENTS})")
        return False
    if mode not in FLASH_MODES:
        rep.add("warning", f"unknown SPI flash mode {mode}")
    return True


def _read_segments(mv: memoryview, base: int, rep: ImageReport) -> tuple[int, int] | None:
    """Each segment into rep.segments, checked as the bootloader and MMU need it; the offset past
    the last one and the xor checksum of their data, or None if the file ends inside one."""
    avail = len(mv) - base
    assert rep.segment_count is not None
    pos = HEADER_LEN + EXT_HEADER_LEN
    checksum = CHECKSUM_SEED
    for i in range(rep.segment_count):
        if pos + 8 > avail:
            rep.add("error", f"truncated: segment {i} header at offset {pos} is past the end of the file "
                             f"({avail} bytes)")
            return None
        addr, length = struct.unpack_from("<II", mv, base + pos)
        seg = Segment(i, addr, length, pos + 8, memory_type(rep.chip, addr))
        if pos + 8 + length > avail:
            rep.add("error", f"truncated: segment {i} needs {length} bytes at offset {pos + 8}, "
                             f"the file has {avail - pos - 8}")
            return None
        rep.segments.append(seg)
        if length % 4:
            rep.add("error", f"segment {i} length {length} is not a multiple of 4 "
                             "(the bootloader refuses it)")
        if seg.memory in _FLASH_MAPPED and (addr - (pos + 8)) % 0x10000:
            rep.add("error", f"segment {i} at 0x{addr:08x} is not page-aligned with its file offset "
                             f"0x{pos + 8:x} (the MMU cannot map it)")
        checksum = _xor(mv[base + pos + 8 : base + pos + 8 + length], checksum)
        pos += 8 + length
    return pos, checksum


def _check_checksum(mv: memoryview, base: int, pos: int, checksum: int, rep: ImageReport) -> int | None:
    """The checksum byte (last of the 16-byte block after the segments) against the segments' xor;
    the offset past it, or None if the file ends before it."""
    cks_at = pos + (15 - pos % 16)
    if cks_at >= len(mv) - base:
        rep.add("error", f"truncated: the checksum byte at offset {cks_at} is past the end of the file")
        return None
    rep.checksum_valid = mv[base + cks_at] == checksum
    if not rep.checksum_valid:
        rep.add("error", f"checksum mismatch: stored 0x{mv[base + cks_at]:02x}, computed 0x{checksum:02x} "
                         "(the image is corrupt)")
    return cks_at + 1


def _check_appended_hash(mv: memoryview, base: int, end: int, rep: ImageReport) -> int | None:
    """The SHA-256 appended after the checksum, when the header says there is one; the image's end,
    or None if the file ends inside the digest."""
    avail = len(mv) - base
    if not rep.hash_appended:
        rep.add("warning", "no appended SHA-256 (hash_appended=0): the bootloader cannot check the image")
        return end
    if end + 32 > avail:
        rep.add("error", f"truncated: the appended SHA-256 needs 32 bytes at offset {end}, "
                         f"the file has {avail - end}")
        return None
    digest = hashlib.sha256(mv[base : base + end]).digest()
    stored = bytes(mv[base + end : base + end + 32])
    rep.sha256_valid = digest == stored
    if rep.sha256_valid:
        rep.sha256 = digest.hex()
    else:
        rep.add("error", "appended SHA-256 mismatch (the image is corrupt)")
    return end + 32


def _find_app_desc(mv: memoryview, base: int, rep: ImageReport) -> None:
    """An ESP-IDF app carries esp_app_desc_t at the start of its first segment; without it the
    image is a bootloader (or another program)."""
    if rep.segments:
        first = rep.segments[0]
        rep.app_desc = parse_app_desc(bytes(mv[base + first.file_offset : base + first.file_offset
                                              + min(first.length, APP_DESC_LEN)]))
    rep.kind = "app" if rep.app_desc is not None else "bootloader"
    if rep.app_desc is None:
        rep.add("note", "no esp_app_desc_t in the first segment: this is not an ESP-IDF app "
                        "(a bootloader or another program)")


def _xor(data: memoryview, seed: int) -> int:
    # xor of all bytes, 8 at a time through int.from_bytes (fast enough for 4 MB images)
    n = len(data) - len(data) % 8
    acc = 0
    for (word,) in struct.iter_unpack("<Q", data[:n]):
        acc ^= word
    out = seed
    for i in range(8):
        out ^= (acc >> (8 * i)) & 0xFF
    for b in data[n:]:
        out ^= b
    return out


def parse_partition_table(data: bytes | memoryview, offset: int) -> list[Partition]:
    out: list[Partition] = []
    mv = memoryview(data)
    for pos in range(offset, min(len(mv), offset + 0xC00) - 31, 32):
        magic = bytes(mv[pos : pos + 2])
        if magic != PARTITION_MAGIC:
            break  # 0xEBEB (MD5 entry) or 0xFFFF ends the table
        _, ptype, subtype, poff, psize, label, flags = struct.unpack_from("<2sBBII16sI", mv, pos)
        out.append(Partition(_cstr(label), ptype, subtype, poff, psize, flags))
    return out


def _detect_combined(data: bytes, boot: ImageReport, dump: bool = False) -> ImageReport | None:
    """A combined flash image report, when data holds a partition table where a flash image would.

    Normally the file starts with the bootloader (written at the bootloader offset); with ``dump``
    it starts at flash address 0 (``esptool read-flash 0 ...``) and the bootloader is further in.
    """
    offsets: list[int] = []
    if boot.chip in BOOTLOADER_OFFSETS:
        offsets.append(BOOTLOADER_OFFSETS[boot.chip])
    offsets += [o for o in (0x1000, 0x0, 0x2000) if o not in offsets]
    for boot_off in offsets:
        start = 0 if dump else boot_off  # flash address of the file's first byte
        pt_file = PARTITION_TABLE_FLASH_OFFSET - start
        if data[pt_file : pt_file + 2] != PARTITION_MAGIC:
            continue
        if dump and data[boot_off : boot_off + 1] != bytes([IMAGE_MAGIC]):
            continue
        parts = parse_partition_table(data, pt_file)
        rep = ImageReport(kind="combined", file_size=len(data), chip=boot.chip, chip_id=boot.chip_id,
                          bootloader_offset=boot_off, partition_table_offset=PARTITION_TABLE_FLASH_OFFSET,
                          partitions=parts, findings=[], flash_offset=start)
        what = "flash dump (from address 0x0)" if dump else "combined flash image"
        rep.add("warning", f"{what} (bootloader + partition table + app) for "
                           f"`esptool write-flash 0x{start:x}`: sign only the app "
                           "(mpota image extract-app FILE --out app.bin)")
        if boot.chip is not None and BOOTLOADER_OFFSETS.get(boot.chip) != boot_off:
            rep.add("warning", f"the bootloader is for {boot.chip}, which loads it from "
                               f"0x{BOOTLOADER_OFFSETS[boot.chip]:x}, not 0x{boot_off:x}")
        apps = [p for p in parts if p.type == 0]
        apps.sort(key=lambda p: (0 if p.subtype == 0x10 else 1 if p.subtype == 0x00 else 2, p.offset))
        for p in apps:
            file_off = p.offset - start
            if 0 <= file_off < len(data) and data[file_off] == IMAGE_MAGIC:
                app = parse_image(data, file_off)
                rep.app, rep.app_partition = app, p.label
                rep.app_flash_offset, rep.app_file_offset = p.offset, file_off
                size = app.image_length or 0
                rep.add("note", f"the app is in partition {p.label!r} at flash offset 0x{p.offset:x} "
                                f"(file offset 0x{file_off:x}, {size} bytes)")
                for f in app.findings:
                    rep.add(f.level, f"app: {f.message}")
                break
        else:
            rep.add("error", "the combined image holds no app image at any app partition's offset")
        return rep
    return None


def inspect_image(data: bytes) -> ImageReport:
    """Inspect an app, bootloader or combined flash image; findings describe every problem."""
    rep = parse_image(data, 0)
    if rep.kind == "bootloader" or (rep.kind == "invalid" and data[:1] == bytes([IMAGE_MAGIC])):
        combined = _detect_combined(data, rep)
        if combined is not None:
            return combined
    if data[:1] == b"\xff" and len(data) > PARTITION_TABLE_FLASH_OFFSET:
        for boot_off in (0x1000, 0x2000):
            if data[boot_off : boot_off + 1] == bytes([IMAGE_MAGIC]):
                dump = _detect_combined(data, parse_image(data, boot_off), dump=True)
                if dump is not None:
                    return dump
    if rep.kind == "bootloader":
        rep.add("error", "not an app image: no esp_app_desc_t (this looks like a bootloader)")
    if rep.image_length is not None and rep.image_length < len(data):
        extra = data[rep.image_length :]
        if extra.strip(b"\xff") == b"" or extra.strip(b"\0") == b"":
            rep.add("note", f"{len(extra)} bytes of padding after the image end")
        else:
            rep.add("warning", f"{len(extra)} bytes of data after the image end (not part of the image)")
    if rep.kind == "app" and rep.app_desc is not None and rep.ok:
        d = rep.app_desc
        rep.add("note", f"valid {rep.chip} app image: {d.project_name} {d.version}, "
                        f"secure_version {d.secure_version}, {rep.image_length} bytes")
    return rep


def read_image_file(path: str | os.PathLike[str]) -> bytes:
    p = Path(path)
    try:
        if p.is_dir():
            raise ImageError(f"cannot read image {p}: it is a folder")
        size = p.stat().st_size
        if size > MAX_IMAGE_FILE:
            raise ImageError(f"image {p} is {size} bytes, larger than any ESP32 flash")
        data = p.read_bytes()
    except OSError as exc:
        raise ImageError(f"cannot read image {p}: {exc.strerror or exc}") from None
    if not data:
        raise ImageError(f"image {p} is empty")
    return data


def inspect_file(path: str | os.PathLike[str]) -> ImageReport:
    return inspect_image(read_image_file(path))


def require_app(rep: ImageReport, name: str = "image") -> ImageReport:
    """Raise ImageError (one line) unless rep is a valid app image."""
    if rep.kind == "combined":
        raise ImageError(
            f"{name} is a combined flash image (bootloader at 0x{rep.bootloader_offset or 0:x}, partition "
            f"table at 0x8000, app in {rep.app_partition or '?'}); sign only the app: "
            f"mpota image extract-app {name} --out app.bin"
        )
    if rep.errors:
        raise ImageError(f"{name} is not a valid app image: {rep.errors[0]}")
    if rep.kind != "app" or rep.app_desc is None:
        raise ImageError(f"{name} is not an app image")
    return rep


def load_app_image(path: str | os.PathLike[str]) -> tuple[bytes, ImageReport]:
    """Read and validate an app image file: returns its bytes and report, or raises ImageError."""
    data = read_image_file(path)
    rep = require_app(inspect_image(data), str(path))
    assert rep.image_length is not None
    if rep.image_length != len(data):
        raise ImageError(
            f"{path} has {len(data) - rep.image_length} bytes after the app image end; "
            "sign the bare app image"
        )
    return data, rep


def extract_app(data: bytes, name: str = "image") -> tuple[bytes, ImageReport]:
    """The app image bytes inside a combined flash image (exactly the image, hash included)."""
    rep = inspect_image(data)
    if rep.kind != "combined":
        if rep.kind == "app":
            raise ImageError(f"{name} is already an app image, not a combined flash image")
        raise ImageError(f"{name} is not a combined flash image: {(rep.errors or ['no partition table'])[0]}")
    app = rep.app
    if app is None or rep.app_file_offset is None:
        raise ImageError(f"{name}: the combined image holds no app image")
    if app.errors:
        raise ImageError(f"{name}: the app in partition {rep.app_partition} is not valid: {app.errors[0]}")
    if app.kind != "app" or app.image_length is None:
        raise ImageError(f"{name}: the image in partition {rep.app_partition} is not an app")
    start = rep.app_file_offset
    return data[start : start + app.image_length], app
