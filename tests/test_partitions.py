"""Partition tables: CSV parsing/validation and the ESP-IDF binary format, checked against bytes
written by hand from the documented format (not by the code under test)."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
from helpers import run_cli

from host_tools.partitions import (
    PartitionError,
    build_binary,
    load_csv,
    load_table,
    parse_binary,
    parse_csv,
    parse_int,
)

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


# The documented ESP-IDF format, spelled out independently of host_tools.partitions:
# entry = magic AA 50, type u8, subtype u8, offset u32le, size u32le, label 16 bytes, flags u32le.
def ref_entry(label: bytes, ptype: int, subtype: int, offset: int, size: int, flags: int = 0) -> bytes:
    return b"\xaa\x50" + bytes([ptype, subtype]) + offset.to_bytes(4, "little") + size.to_bytes(4, "little") \
        + label.ljust(16, b"\x00") + flags.to_bytes(4, "little")


def ref_table(entries: list[bytes]) -> bytes:
    body = b"".join(entries)
    md5 = b"\xeb\xeb" + b"\xff" * 14 + hashlib.md5(body).digest()
    out = body + md5
    return out + b"\xff" * (0xC00 - len(out))


REF_4MB = ref_table([
    ref_entry(b"nvs", 1, 0x02, 0x9000, 0x4000),
    ref_entry(b"otadata", 1, 0x00, 0xD000, 0x2000),
    ref_entry(b"phy_init", 1, 0x01, 0xF000, 0x1000),
    ref_entry(b"ota_0", 0, 0x10, 0x10000, 0x180000),
    ref_entry(b"ota_1", 0, 0x11, 0x190000, 0x180000),
    ref_entry(b"vfs", 1, 0x81, 0x310000, 0xF0000),
])

REF_8MB = ref_table([
    ref_entry(b"nvs", 1, 0x02, 0x9000, 0x4000),
    ref_entry(b"otadata", 1, 0x00, 0xD000, 0x2000),
    ref_entry(b"phy_init", 1, 0x01, 0xF000, 0x1000),
    ref_entry(b"ota_0", 0, 0x10, 0x10000, 0x270000),
    ref_entry(b"ota_1", 0, 0x11, 0x280000, 0x270000),
    ref_entry(b"vfs", 1, 0x81, 0x4F0000, 0x310000),
])


def test_reference_entry_layout_is_the_documented_struct() -> None:
    # The hand-written helper agrees with struct's view of the C struct esp_partition_info_t.
    e = ref_entry(b"ota_0", 0, 0x10, 0x10000, 0x180000, 1)
    assert len(e) == 32
    assert struct.unpack("<HBBII16sI", e) == (0x50AA, 0, 0x10, 0x10000, 0x180000, b"ota_0" + b"\0" * 11, 1)


def test_default_csv_builds_the_reference_bytes() -> None:
    table = load_csv(REPO / "partitions.csv", flash_size=4 << 20)
    data = build_binary(table)
    assert len(data) == 0xC00
    assert data == REF_4MB
    assert data == (DATA / "partitions-esp32-generic-4mb.bin").read_bytes()


def test_s3_csv_builds_the_reference_bytes() -> None:
    table = load_csv(REPO / "boards" / "esp32s3-generic-8mb.csv", flash_size=8 << 20)
    assert build_binary(table) == REF_8MB
    assert REF_8MB == (DATA / "partitions-esp32s3-generic-8mb.bin").read_bytes()


def test_binary_round_trip() -> None:
    table = parse_binary(REF_4MB, flash_size=4 << 20)
    assert table.md5
    assert [(p.name, p.type_name, p.subtype_name, p.offset, p.size) for p in table] == [
        ("nvs", "data", "nvs", 0x9000, 0x4000),
        ("otadata", "data", "ota", 0xD000, 0x2000),
        ("phy_init", "data", "phy", 0xF000, 0x1000),
        ("ota_0", "app", "ota_0", 0x10000, 0x180000),
        ("ota_1", "app", "ota_1", 0x190000, 0x180000),
        ("vfs", "data", "fat", 0x310000, 0xF0000),
    ]
    assert build_binary(table) == REF_4MB
    # CSV text round trip too
    again = parse_csv(table.to_csv(), flash_size=4 << 20)
    assert again.entries == table.entries


def test_binary_without_md5_round_trips() -> None:
    body = ref_entry(b"factory", 0, 0, 0x10000, 0x100000)
    data = body + b"\xff" * (0xC00 - 32)
    table = parse_binary(data)
    assert not table.md5
    assert build_binary(table, md5=False) == data
    assert build_binary(table) != data


def test_flags_subtypes_numbers_and_auto_offsets() -> None:
    csv = """
# comment line
nvs,      data, nvs,      ,        24K,
phy_init, data, phy,      ,        4K,
factory,  app,  factory,  ,        1M,
keys,     data, nvs_keys, ,        0x1000, encrypted
store,    data, littlefs, ,        256K,   readonly
raw,      0x40, 0x7,      ,        4096,   encrypted:readonly
cd,       data, coredump, ,        64K
"""
    t = parse_csv(csv, flash_size=4 << 20)
    got = {p.name: (p.type, p.subtype, p.offset, p.size, p.flags) for p in t}
    assert got == {
        "nvs": (1, 0x02, 0x9000, 0x6000, 0),
        "phy_init": (1, 0x01, 0xF000, 0x1000, 0),
        "factory": (0, 0x00, 0x10000, 0x100000, 0),   # app rounded up to 64 KiB
        "keys": (1, 0x04, 0x110000, 0x1000, 1),
        "store": (1, 0x83, 0x111000, 0x40000, 2),
        "raw": (0x40, 0x07, 0x151000, 0x1000, 3),
        "cd": (1, 0x03, 0x152000, 0x10000, 0),
    }
    assert t.ota_slots == [] and t.otadata is None
    data = build_binary(t)
    assert data[5 * 32 : 6 * 32] == ref_entry(b"raw", 0x40, 7, 0x151000, 0x1000, 3)
    assert parse_binary(data).entries == t.entries


def test_all_named_subtypes() -> None:
    rows = [f"o{n}, app, ota_{n}, , 64K" for n in range(16)]
    rows.insert(0, "otadata, data, ota, 0xd000, 0x2000")
    rows.append("t, app, test, , 64K")
    for name in ("phy", "nvs", "coredump", "nvs_keys", "efuse", "undefined", "fat", "spiffs", "littlefs"):
        rows.append(f"d_{name}, data, {name}, , 4K")
    t = parse_csv("\n".join(rows), flash_size=4 << 20)
    assert [p.subtype for p in t.ota_slots] == list(range(0x10, 0x20))
    subtypes = {p.name: p.subtype for p in t}
    assert subtypes["t"] == 0x20
    assert [subtypes[f"d_{n}"] for n in ("phy", "nvs", "coredump", "nvs_keys", "efuse", "undefined", "fat",
                                         "spiffs", "littlefs")] == [1, 2, 3, 4, 5, 6, 0x81, 0x82, 0x83]


@pytest.mark.parametrize("text,value", [
    ("0x1000", 0x1000), ("4096", 4096), ("4K", 4096), ("4k", 4096), ("1M", 1 << 20), ("0x10K", 0x4000),
])
def test_parse_int(text: str, value: int) -> None:
    assert parse_int(text) == value


HEAD = "nvs, data, nvs, 0x9000, 0x4000\notadata, data, ota, 0xd000, 0x2000\n"

BAD_CSV = [
    # (csv, expected message fragment)
    (HEAD + "ota_0, app, ota_0, 0x10000, 0x180000\nota_1, app, ota_1, 0x180000, 0x180000\n",
     "line 4 (ota_1): 0x180000..0x300000 overlaps ota_0 at 0x10000..0x190000"),
    (HEAD + "ota_0, app, ota_0, 0x18000, 0x10000\n",
     "line 3 (ota_0): app partition offset 0x18000 is not 64 KiB"),
    (HEAD + "ota_0, app, ota_0, 0x10000, 0x400000\n",
     "line 3 (ota_0): ends at 0x410000, past the flash size"),
    (HEAD + "ota_0, blob, ota_0, 0x10000, 0x10000\n", "line 3 (ota_0): unknown type 'blob'"),
    (HEAD + "ota_0, app, ota_99, 0x10000, 0x10000\n", "line 3 (ota_0): unknown subtype 'ota_99'"),
    (HEAD + "x, data, sqlite, 0x20000, 0x1000\n", "line 3 (x): unknown subtype 'sqlite'"),
    (HEAD + "nvs, data, fat, 0x20000, 0x1000\n",
     "line 3 (nvs): duplicate name (first at t.csv line 1 (nvs))"),
    ("nvs, data, nvs, 0x8000, 0x1000\n", "line 1 (nvs): 0x8000..0x9000 overlaps the partition table itself"),
    ("nvs, data, nvs, 0x8800, 0x1000\n", "line 1 (nvs): offset 0x8800 is not 4 KiB"),
    ("nvs, data, nvs, 0x7000, 0x2000\n", "overlaps the partition table itself at 0x8000..0x9000"),
    ("nvs, data, nvs, 0x1000, 0x1000\n", "below the partition table"),
    ("nvs, data, nvs, 0x9000\n", "line 1: expected 'name, type, subtype, offset, size"),
    ("nvs, data, nvs, 0x9000, lots\n", "line 1 (nvs): bad size 'lots'"),
    ("nvs, data, nvs, 0x9zz0, 0x1000\n", "line 1 (nvs): bad offset '0x9zz0'"),
    ("nvs, data, nvs, 0x9000, 0x1000, sticky\n", "line 1 (nvs): unknown flag 'sticky'"),
    ("averyveryverylongname, data, nvs, 0x9000, 0x1000\n", "name longer than 16 bytes"),
    ("ota_0, app, ota_0, 0x10000, 0x10000\n", "OTA app partitions need an otadata"),
    (HEAD + "a, app, ota_0, 0x10000, 0x10000\nb, app, ota_0, 0x20000, 0x10000\n",
     "second app/ota_0 partition"),
    ("", "no partitions"),
]


@pytest.mark.parametrize("csv,message", BAD_CSV)
def test_bad_csv_one_clear_error(csv: str, message: str) -> None:
    with pytest.raises(PartitionError) as info:
        parse_csv(csv, source="t.csv", flash_size=4 << 20)
    text = str(info.value)
    assert message in text
    assert text.startswith("t.csv")
    assert "\n" not in text


def test_bad_binaries() -> None:
    with pytest.raises(PartitionError, match="MD5 mismatch"):
        corrupt = bytearray(REF_4MB)
        corrupt[8] ^= 1
        parse_binary(bytes(corrupt))
    with pytest.raises(PartitionError, match="entry 2: bad magic"):
        parse_binary(REF_4MB[:32] + b"\x00" * 32)
    with pytest.raises(PartitionError, match="no partition table"):
        parse_binary(b"\xff" * 0xC00)
    with pytest.raises(PartitionError, match="truncated"):
        parse_binary(REF_4MB[:40])
    with pytest.raises(PartitionError, match="unexpected data after the table"):
        parse_binary(REF_4MB[: 7 * 32] + b"junk" + b"\xff" * 100)
    overlapping = ref_table([ref_entry(b"a", 1, 2, 0x9000, 0x2000), ref_entry(b"b", 1, 2, 0xA000, 0x1000)])
    with pytest.raises(PartitionError, match=r"entry 2 \(b\): 0xa000..0xb000 overlaps a"):
        parse_binary(overlapping, source="x.bin")


def test_load_table_sniffs_binary_and_csv(tmp_path: Path) -> None:
    (tmp_path / "t.bin").write_bytes(REF_4MB)
    (tmp_path / "t.csv").write_text((REPO / "partitions.csv").read_text())
    assert load_table(tmp_path / "t.bin").entries == load_table(tmp_path / "t.csv").entries
    (tmp_path / "junk").write_bytes(b"\x00\xff\xfe")
    with pytest.raises(PartitionError, match="neither a partition CSV nor a binary table"):
        load_table(tmp_path / "junk")



def test_cli_build_and_show(tmp_path: Path) -> None:
    out = tmp_path / "pt.bin"
    r = run_cli("partitions", "build", "esp32-generic-4mb", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == REF_4MB
    r = run_cli("partitions", "build", str(REPO / "boards" / "esp32s3-generic-8mb.csv"), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert out.read_bytes() == REF_8MB
    r = run_cli("partitions", "show", str(out))
    assert r.returncode == 0, r.stderr
    assert "MD5 ok" in r.stdout
    assert "ota_1     app   ota_1    0x280000  0x270000" in r.stdout
    assert "OTA: 2 slots (ota_0, ota_1), largest image 0x270000" in r.stdout
    r = run_cli("partitions", "show", "esp32-generic-4mb", "--csv")
    assert r.returncode == 0
    assert "ota_0, app, ota_0, 0x10000, 0x180000" in r.stdout


def test_cli_errors_are_one_line_and_write_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(HEAD + "ota_0, app, ota_0, 0x18000, 0x10000\n")
    out = tmp_path / "pt.bin"
    r = run_cli("partitions", "build", str(bad), "--out", str(out))
    assert r.returncode != 0
    assert r.stderr == "mpota: error: bad.csv line 3 (ota_0): app partition offset 0x18000 is not 64 KiB " \
                       "(0x10000) aligned\n"
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [bad]
    r = run_cli("partitions", "build", str(bad.with_name("big.csv")), "--out", str(out))
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "big.csv" in r.stderr
    r = run_cli("partitions", "build", "esp32-nope", "--out", str(out))
    assert r.stderr.startswith("mpota: error: unknown board 'esp32-nope' (known: esp32-generic-4mb, ")
    r = run_cli("partitions", "show", str(bad), "--flash-size", "lots")
    assert r.returncode == 2 and "bad --flash-size" in r.stderr


def test_show_the_table_inside_a_combined_image(tmp_path: Path) -> None:
    from host_tools.imagebuild import build_app_image, build_combined_image

    fw = tmp_path / "firmware.bin"
    fw.write_bytes(build_combined_image("esp32", build_app_image("esp32"), REF_4MB, 0x1000))
    assert load_table(fw).entries == parse_binary(REF_4MB).entries
    r = run_cli("partitions", "show", str(fw))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("firmware.bin (table at file offset 0x7000): binary table, 6 partitions, "
                               "MD5 ok")
