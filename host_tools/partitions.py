"""ESP-IDF partition tables: parse and validate the CSV, build and parse the binary table.

The binary format (what ESP-IDF's gen_esp32part.py writes and the bootloader reads at 0x8000):
32-byte entries ``<2sBBII16sI`` (magic ``AA 50``, type, subtype, offset, size, label padded
with NUL, flags: bit 0 encrypted, bit 1 readonly), then one MD5 entry (``EB EB``, 14 bytes
0xFF, MD5 of all entries before it), then 0xFF up to 0xC00 bytes (the table's sector is
0x1000; the last 0x400 bytes are left to the bootloader's own use in ESP-IDF: we pad to
0xC00 like gen_esp32part's ``--flash-size`` output).

Every error is a PartitionError whose message names the source, the line (CSV) or entry
number (binary) and the partition.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from host_tools.errors import MpotaError

ENTRY_SIZE = 32
ENTRY_MAGIC = b"\xaa\x50"
MD5_MAGIC = b"\xeb\xeb"
TABLE_SIZE = 0xC00  # the binary table is padded with 0xFF to this size
TABLE_SECTOR = 0x1000  # flash reserved for the table at its offset
MAX_ENTRIES = TABLE_SIZE // ENTRY_SIZE - 1  # one slot is the MD5 entry
DEFAULT_TABLE_OFFSET = 0x8000
APP_ALIGN = 0x10000  # app partitions are mapped by the MMU in 64 KiB pages
DATA_ALIGN = 0x1000  # flash sector
LABEL_SIZE = 16

TYPE_APP = 0x00
TYPE_DATA = 0x01
TYPES: dict[str, int] = {"app": TYPE_APP, "data": TYPE_DATA}

APP_SUBTYPES: dict[str, int] = {"factory": 0x00, "test": 0x20}
APP_SUBTYPES.update({f"ota_{n}": 0x10 + n for n in range(16)})
DATA_SUBTYPES: dict[str, int] = {
    "ota": 0x00, "phy": 0x01, "nvs": 0x02, "coredump": 0x03, "nvs_keys": 0x04, "efuse": 0x05,
    "undefined": 0x06, "esphttpd": 0x80, "fat": 0x81, "spiffs": 0x82, "littlefs": 0x83,
}
SUBTYPES: dict[int, dict[str, int]] = {TYPE_APP: APP_SUBTYPES, TYPE_DATA: DATA_SUBTYPES}

FLAG_ENCRYPTED = 0x1
FLAG_READONLY = 0x2
FLAGS: dict[str, int] = {"encrypted": FLAG_ENCRYPTED, "readonly": FLAG_READONLY}

OTA_SUBTYPE_FIRST = 0x10
OTA_SUBTYPE_LAST = 0x1F


class PartitionError(MpotaError):
    """A partition table (CSV or binary) is malformed or inconsistent."""


def _name_of(table: dict[str, int], value: int) -> str | None:
    for name, number in table.items():
        if number == value:
            return name
    return None


@dataclass(frozen=True)
class Partition:
    name: str
    type: int
    subtype: int
    offset: int
    size: int
    flags: int = 0
    line: int | None = field(default=None, compare=False)  # CSV line or binary entry number

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def type_name(self) -> str:
        return _name_of(TYPES, self.type) or f"0x{self.type:02x}"

    @property
    def subtype_name(self) -> str:
        known = SUBTYPES.get(self.type)
        name = _name_of(known, self.subtype) if known is not None else None
        return name or f"0x{self.subtype:02x}"

    @property
    def is_app(self) -> bool:
        return self.type == TYPE_APP

    @property
    def is_ota_slot(self) -> bool:
        return self.type == TYPE_APP and OTA_SUBTYPE_FIRST <= self.subtype <= OTA_SUBTYPE_LAST

    @property
    def encrypted(self) -> bool:
        return bool(self.flags & FLAG_ENCRYPTED)

    @property
    def readonly(self) -> bool:
        return bool(self.flags & FLAG_READONLY)

    @property
    def flag_names(self) -> list[str]:
        names = [n for n, bit in FLAGS.items() if self.flags & bit]
        rest = self.flags & ~(FLAG_ENCRYPTED | FLAG_READONLY)
        if rest:
            names.append(f"0x{rest:x}")
        return names

    def to_entry(self) -> bytes:
        label = self.name.encode("utf-8")
        return struct.pack("<2sBBII16sI", ENTRY_MAGIC, self.type, self.subtype, self.offset, self.size,
                           label + b"\0" * (LABEL_SIZE - len(label)), self.flags)


@dataclass(frozen=True)
class PartitionTable:
    entries: tuple[Partition, ...]
    source: str = "<table>"
    md5: bool = True  # whether the binary form carries (or carried) the MD5 entry
    unit: str = "line"  # how Partition.line is named in messages: CSV "line", binary "entry"

    def __iter__(self) -> Iterator[Partition]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def find(self, name: str) -> Partition | None:
        for p in self.entries:
            if p.name == name:
                return p
        return None

    def find_subtype(self, ptype: int, subtype: int) -> Partition | None:
        for p in self.entries:
            if p.type == ptype and p.subtype == subtype:
                return p
        return None

    @property
    def ota_slots(self) -> list[Partition]:
        """App partitions ota_0..ota_15, in subtype order."""
        return sorted((p for p in self.entries if p.is_ota_slot), key=lambda p: p.subtype)

    @property
    def otadata(self) -> Partition | None:
        return self.find_subtype(TYPE_DATA, DATA_SUBTYPES["ota"])

    def to_binary(self, md5: bool | None = None) -> bytes:
        return build_binary(self, md5=self.md5 if md5 is None else md5)

    def to_csv(self) -> str:
        lines = ["# Name, Type, SubType, Offset, Size, Flags"]
        for p in self.entries:
            lines.append(f"{p.name}, {p.type_name}, {p.subtype_name}, 0x{p.offset:x}, 0x{p.size:x}, "
                         f"{':'.join(p.flag_names)}".rstrip())
        return "\n".join(lines) + "\n"

    def same_layout(self, other: PartitionTable) -> str | None:
        """None when both tables have the same entries; else a short description of the first difference."""
        for i, (a, b) in enumerate(zip(self.entries, other.entries, strict=False)):
            if a != b:
                return f"entry {i + 1}: {describe(a)} vs {describe(b)}"
        if len(self.entries) != len(other.entries):
            longer = self.entries if len(self.entries) > len(other.entries) else other.entries
            extra = longer[min(len(self.entries), len(other.entries))]
            which = self.source if longer is self.entries else other.source
            return (f"{len(self.entries)} vs {len(other.entries)} entries "
                    f"(first extra in {which}: {describe(extra)})")
        return None


def describe(p: Partition) -> str:
    return f"{p.name} {p.type_name}/{p.subtype_name} 0x{p.offset:x}+0x{p.size:x}" + (
        f" [{':'.join(p.flag_names)}]" if p.flags else "")


# ---------------------------------------------------------------------------------------------
# CSV

_SUFFIX = {"k": 1024, "m": 1024 * 1024}


def parse_int(text: str) -> int:
    """ESP-IDF number syntax: decimal, 0x hex, optional K/M suffix (e.g. 1536K, 1M, 0x1000)."""
    t = text.strip().lower()
    mult = 1
    if t and t[-1] in _SUFFIX:
        mult = _SUFFIX[t[-1]]
        t = t[:-1].strip()
    if not re.fullmatch(r"0x[0-9a-f]+|0o[0-7]+|0b[01]+|[0-9]+", t):
        raise ValueError(text)
    return int(t, 0) * mult


def _where(table: PartitionTable, p: Partition) -> str:
    if p.line is None:
        return f"{table.source} ({p.name})"
    return f"{table.source} {table.unit} {p.line} ({p.name})"


def parse_csv(text: str, *, source: str = "<csv>", flash_size: int | None = None,
              table_offset: int = DEFAULT_TABLE_OFFSET) -> PartitionTable:
    """Parse and validate an ESP-IDF partition CSV (empty offset = next free, aligned)."""
    entries: list[Partition] = []
    next_free = table_offset + TABLE_SECTOR
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        cols = [c.strip() for c in line.split(",")]
        if len(cols) < 5:
            raise PartitionError(f"{source} line {lineno}: expected 'name, type, subtype, offset, size"
                                 f"[, flags]', got {len(cols)} field(s)")
        if len(cols) > 6 and any(cols[6:]):
            raise PartitionError(f"{source} line {lineno} ({cols[0]}): too many fields ({len(cols)})")
        name, tname, sname, off_s, size_s = cols[:5]
        flag_s = cols[5] if len(cols) > 5 else ""
        where = f"{source} line {lineno} ({name or '?'})"
        if not name:
            raise PartitionError(f"{source} line {lineno}: empty partition name")
        if len(name.encode("utf-8")) > LABEL_SIZE:
            raise PartitionError(f"{where}: name longer than {LABEL_SIZE} bytes")
        ptype = _parse_type(tname, where)
        subtype = _parse_subtype(ptype, sname, where)
        align = APP_ALIGN if ptype == TYPE_APP else DATA_ALIGN
        if off_s:
            try:
                offset = parse_int(off_s)
            except ValueError:
                raise PartitionError(f"{where}: bad offset {off_s!r}") from None
        else:
            offset = -(-next_free // align) * align
        if not size_s:
            raise PartitionError(f"{where}: size is required")
        try:
            size = parse_int(size_s)
        except ValueError:
            raise PartitionError(f"{where}: bad size {size_s!r}") from None
        flags = 0
        for f in filter(None, (x.strip() for x in flag_s.split(":"))):
            if f.lower() not in FLAGS:
                raise PartitionError(f"{where}: unknown flag {f!r} (known: {', '.join(FLAGS)})")
            flags |= FLAGS[f.lower()]
        entries.append(Partition(name, ptype, subtype, offset, size, flags, lineno))
        next_free = offset + size
    table = PartitionTable(tuple(entries), source=source)
    validate(table, flash_size=flash_size, table_offset=table_offset)
    return table


def _parse_type(text: str, where: str) -> int:
    if text.lower() in TYPES:
        return TYPES[text.lower()]
    try:
        value = parse_int(text)
    except ValueError:
        raise PartitionError(f"{where}: unknown type {text!r} (known: app, data, or a number)") from None
    if not 0 <= value <= 0xFE:
        raise PartitionError(f"{where}: type {text} out of range 0..0xfe")
    return value


def _parse_subtype(ptype: int, text: str, where: str) -> int:
    known = SUBTYPES.get(ptype, {})
    if text.lower() in known:
        return known[text.lower()]
    if not text:
        if ptype == TYPE_DATA:  # gen_esp32part: an empty data subtype means "undefined"
            return DATA_SUBTYPES["undefined"]
        raise PartitionError(f"{where}: subtype is required")
    try:
        value = parse_int(text)
    except ValueError:
        names = ", ".join(k for k in known if not k.startswith("ota_")) if known else ""
        hint = f"known for this type: {names}{', ota_0..ota_15' if ptype == TYPE_APP else ''}, or a number" \
            if known else "custom types take a number"
        raise PartitionError(f"{where}: unknown subtype {text!r} ({hint})") from None
    if not 0 <= value <= 0xFE:
        raise PartitionError(f"{where}: subtype {text} out of range 0..0xfe")
    return value


def validate(table: PartitionTable, *, flash_size: int | None = None,
             table_offset: int = DEFAULT_TABLE_OFFSET) -> None:
    """Raise PartitionError for the first inconsistency, naming the line/entry and partition."""
    src = table.source
    if not table.entries:
        raise PartitionError(f"{src}: no partitions")
    if len(table.entries) > MAX_ENTRIES:
        raise PartitionError(f"{src}: {len(table.entries)} partitions, the table holds at most {MAX_ENTRIES}")
    seen: dict[str, Partition] = {}
    table_end = table_offset + TABLE_SECTOR
    for p in table.entries:
        where = _where(table, p)
        if p.name in seen:
            raise PartitionError(f"{where}: duplicate name (first at {_where(table, seen[p.name])})")
        seen[p.name] = p
        if p.size <= 0:
            raise PartitionError(f"{where}: size must be positive")
        if p.type == TYPE_APP:
            if p.offset % APP_ALIGN:
                raise PartitionError(f"{where}: app partition offset 0x{p.offset:x} is not 64 KiB (0x10000) "
                                     f"aligned")
            if p.size % DATA_ALIGN:
                raise PartitionError(f"{where}: app partition size 0x{p.size:x} is not a multiple of 4 KiB")
        elif p.offset % DATA_ALIGN:
            raise PartitionError(f"{where}: offset 0x{p.offset:x} is not 4 KiB (0x1000) aligned")
        if p.encrypted and p.size % DATA_ALIGN:
            raise PartitionError(f"{where}: encrypted partition size 0x{p.size:x} is not a multiple of 4 KiB")
        if p.offset < table_end and p.end > table_offset:
            raise PartitionError(f"{where}: 0x{p.offset:x}..0x{p.end:x} overlaps the partition table itself "
                                 f"at 0x{table_offset:x}..0x{table_end:x}")
        if p.offset < table_offset:
            raise PartitionError(f"{where}: offset 0x{p.offset:x} is below the partition table at "
                                 f"0x{table_offset:x} (bootloader area)")
        if flash_size is not None and p.end > flash_size:
            raise PartitionError(f"{where}: ends at 0x{p.end:x}, past the flash size 0x{flash_size:x} "
                                 f"({_human(flash_size).replace('M', ' MiB').replace('K', ' KiB')})")
    ordered = sorted(table.entries, key=lambda q: q.offset)
    for a, b in zip(ordered, ordered[1:], strict=False):
        if b.offset < a.end:
            first, second = (a, b) if (a.line or 0) <= (b.line or 0) else (b, a)
            raise PartitionError(f"{_where(table, second)}: 0x{second.offset:x}..0x{second.end:x} overlaps "
                                 f"{first.name} at 0x{first.offset:x}..0x{first.end:x}")
    subtypes: dict[tuple[int, int], Partition] = {}
    for p in table.entries:
        unique = (p.type == TYPE_APP) or (p.type == TYPE_DATA and p.subtype == DATA_SUBTYPES["ota"])
        key = (p.type, p.subtype)
        if unique and key in subtypes:
            raise PartitionError(f"{_where(table, p)}: second {p.type_name}/{p.subtype_name} partition "
                                 f"(first is {subtypes[key].name})")
        subtypes[key] = p
    if table.ota_slots and table.otadata is None:
        raise PartitionError(f"{src}: OTA app partitions need an otadata (data, ota) partition")
    od = table.otadata
    if od is not None and od.size != 2 * DATA_ALIGN:
        raise PartitionError(f"{_where(table, od)}: otadata must be 0x2000 bytes (two sectors), "
                             f"is 0x{od.size:x}")


def load_csv(path: str | os.PathLike[str], *, flash_size: int | None = None,
             table_offset: int = DEFAULT_TABLE_OFFSET) -> PartitionTable:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise PartitionError(f"cannot read {p}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise PartitionError(f"{p}: not a text partition CSV") from None
    return parse_csv(text, source=p.name, flash_size=flash_size, table_offset=table_offset)


# ---------------------------------------------------------------------------------------------
# Binary

def build_binary(table: PartitionTable, *, md5: bool = True) -> bytes:
    """The binary table: entries, MD5 entry (when md5), 0xFF padding to 0xC00 bytes."""
    if len(table.entries) > MAX_ENTRIES:
        raise PartitionError(f"{table.source}: {len(table.entries)} partitions, at most {MAX_ENTRIES} fit")
    body = b"".join(p.to_entry() for p in table.entries)
    if md5:
        body += MD5_MAGIC + b"\xff" * 14 + hashlib.md5(body).digest()
    return body + b"\xff" * (TABLE_SIZE - len(body))


def is_binary_table(data: bytes) -> bool:
    return data[:2] == ENTRY_MAGIC


def parse_binary(data: bytes, *, source: str = "binary table", flash_size: int | None = None,
                 table_offset: int = DEFAULT_TABLE_OFFSET, check: bool = True) -> PartitionTable:
    """Parse entries until the MD5 entry or 0xFF padding; verify the MD5; validate when check."""
    entries: list[Partition] = []
    has_md5 = False
    pos = 0
    limit = min(len(data), TABLE_SIZE)
    while pos + ENTRY_SIZE <= limit:
        chunk = data[pos : pos + ENTRY_SIZE]
        n = pos // ENTRY_SIZE + 1
        if chunk == b"\xff" * ENTRY_SIZE:
            break
        if chunk[:2] == MD5_MAGIC:
            if chunk[2:16] != b"\xff" * 14:
                raise PartitionError(f"{source} entry {n}: malformed MD5 entry")
            if hashlib.md5(data[:pos]).digest() != chunk[16:32]:
                raise PartitionError(f"{source}: MD5 mismatch (table is corrupt)")
            has_md5 = True
            pos += ENTRY_SIZE
            break
        magic, ptype, subtype, offset, size, label, flags = struct.unpack("<2sBBII16sI", chunk)
        if magic != ENTRY_MAGIC:
            raise PartitionError(f"{source} entry {n}: bad magic {magic.hex()} (expected aa50)")
        try:
            name = label.split(b"\0", 1)[0].decode("utf-8")
        except UnicodeDecodeError:
            raise PartitionError(f"{source} entry {n}: label is not UTF-8") from None
        entries.append(Partition(name, ptype, subtype, offset, size, flags, n))
        pos += ENTRY_SIZE
    else:
        if pos < limit and data[pos:limit].strip(b"\xff"):
            raise PartitionError(f"{source}: truncated entry at byte {pos} (entries are {ENTRY_SIZE} bytes)")
    if not entries:
        raise PartitionError(f"{source}: no partition table here (no 0xAA50 entry)")
    rest = data[pos:limit]
    if rest.strip(b"\xff"):
        raise PartitionError(f"{source}: unexpected data after the table at byte {pos}")
    table = PartitionTable(tuple(entries), source=source, md5=has_md5, unit="entry")
    if check:
        validate(table, flash_size=flash_size, table_offset=table_offset)
    return table


def load_table(path: str | os.PathLike[str], *, flash_size: int | None = None,
               table_offset: int = DEFAULT_TABLE_OFFSET) -> PartitionTable:
    """A CSV or a binary table, told apart by content (a binary table starts with AA 50)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise PartitionError(f"cannot read {p}: {exc.strerror}") from None
    if is_binary_table(data):
        return parse_binary(data, source=p.name, flash_size=flash_size, table_offset=table_offset)
    embedded = table_in_image(data, table_offset)
    if embedded is not None:
        return parse_binary(data[embedded : embedded + TABLE_SIZE], source=f"{p.name} (table at file offset "
                            f"0x{embedded:x})", flash_size=flash_size, table_offset=table_offset)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise PartitionError(f"{p}: neither a partition CSV nor a binary table (no AA50 magic)") from None
    return parse_csv(text, source=p.name, flash_size=flash_size, table_offset=table_offset)


def table_in_image(data: bytes, table_offset: int = DEFAULT_TABLE_OFFSET) -> int | None:
    """File offset of the table inside a combined flash image (bootloader at 0x1000, 0x0 or 0x2000)."""
    if data[:1] != b"\xe9":
        return None
    for boot in (0x1000, 0x0, 0x2000):
        at = table_offset - boot
        if data[at : at + 2] == ENTRY_MAGIC:
            return at
    return None


def with_source(table: PartitionTable, source: str) -> PartitionTable:
    return replace(table, source=source)


def format_table(table: PartitionTable) -> str:
    """A human table, one partition per line."""
    rows = [("Name", "Type", "SubType", "Offset", "Size", "", "Flags")]
    for p in table.entries:
        rows.append((p.name, p.type_name, p.subtype_name, f"0x{p.offset:x}", f"0x{p.size:x}",
                     _human(p.size), ":".join(p.flag_names)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [c.rjust(w) if i in (3, 4, 5) else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths,
                                                                                           strict=True))]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def _human(size: int) -> str:
    if size % (1024 * 1024) == 0:
        return f"{size // (1024 * 1024)}M"
    if size % 1024 == 0:
        return f"{size // 1024}K"
    return f"{size}"
