"""Our ESP image parser on genuine ESP32 / ESP32-S3 images, cross-checked with esptool run as a program."""

from __future__ import annotations

import hashlib
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from host_tools.boards import load_board
from host_tools.esp_image import (
    ImageError,
    extract_app,
    inspect_image,
    load_app_image,
    parse_image,
    read_image_file,
)
from host_tools.imagebuild import build_app_image, build_combined_image
from host_tools.partitions import build_binary

ESPTOOL = Path(sys.executable).with_name("esptool")
BOARDS = {"esp32": "esp32-generic-4mb", "esp32s3": "esp32s3-generic-8mb"}


def _app(chip: str, **kw: object) -> bytes:
    args: dict[str, object] = {"version": "1.4.2", "project_name": "micropython", "secure_version": 3}
    args.update(kw)
    return build_app_image(chip, **args)  # type: ignore[arg-type]


def _combined(chip: str, app: bytes) -> bytes:
    board = load_board(BOARDS[chip])
    return build_combined_image(chip, app, build_binary(board.table), board.bootloader_offset,
                                board.ota_slots[0].offset)


def _esptool_info(path: Path, chip: str) -> str:
    proc = subprocess.run([str(ESPTOOL), "--chip", chip, "image-info", str(path)], capture_output=True,
                          text=True, timeout=120)
    return proc.stdout + proc.stderr


@pytest.mark.parametrize("chip, chip_id", [("esp32", 0), ("esp32s3", 9)])
def test_genuine_app_matches_esptool(tmp_path: Path, chip: str, chip_id: int) -> None:
    data = _app(chip)
    rep = inspect_image(data)
    assert rep.kind == "app" and rep.ok, rep.findings
    assert rep.chip == chip and rep.chip_id == chip_id
    assert rep.image_length == len(data) and rep.checksum_valid and rep.sha256_valid
    assert rep.sha256 == data[-32:].hex() == hashlib.sha256(data[:-32]).hexdigest()
    assert rep.app_desc is not None
    assert (rep.app_desc.version, rep.app_desc.project_name, rep.app_desc.secure_version) == \
        ("1.4.2", "micropython", 3)
    assert [s.memory for s in rep.segments] == ["DROM", "IROM", "DRAM", "IRAM"]

    path = tmp_path / "app.bin"
    path.write_bytes(data)
    out = _esptool_info(path, chip)
    assert "Checksum: " in out and "(valid)" in out, out
    assert f"Chip ID: {chip_id}" in out
    assert "App version: 1.4.2" in out and "Project name: micropython" in out
    assert f"Entry point: 0x{rep.entry:08x}" in out
    rows = re.findall(r"^\s*(\d+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)", out, re.M)
    assert [(int(i), int(n, 16), int(a, 16), int(o, 16) + 8) for i, n, a, o in rows] == \
        [(s.index, s.length, s.load_addr, s.file_offset) for s in rep.segments]
    assert f"Validation hash: {rep.sha256} (valid)" in out


def test_corruption_seen_by_both_parsers(tmp_path: Path) -> None:
    data = bytearray(_app("esp32"))
    data[0x20 + 300] ^= 0x40  # a bit in the first segment: checksum and hash both break
    rep = inspect_image(bytes(data))
    assert rep.checksum_valid is False and rep.sha256_valid is False
    assert any("checksum mismatch" in e for e in rep.errors)
    path = tmp_path / "bad.bin"
    path.write_bytes(data)
    out = _esptool_info(path, "esp32")
    assert "invalid" in out.lower()


@pytest.mark.parametrize("chip", ["esp32", "esp32s3"])
def test_combined_image_detected_and_extracted(tmp_path: Path, chip: str) -> None:
    app = _app(chip)
    combined = _combined(chip, app)
    rep = inspect_image(combined)
    boot_off = load_board(BOARDS[chip]).bootloader_offset
    assert rep.kind == "combined"
    assert rep.bootloader_offset == boot_off and rep.partition_table_offset == 0x8000
    assert rep.app_partition == "ota_0" and rep.app_flash_offset == 0x10000
    assert rep.app_file_offset == 0x10000 - boot_off
    assert [p.label for p in rep.partitions][:5] == ["nvs", "otadata", "phy_init", "ota_0", "ota_1"]
    assert any("sign only the app" in f.message for f in rep.findings)
    extracted, app_rep = extract_app(combined)
    assert extracted == app and app_rep.kind == "app"
    path = tmp_path / "combined.bin"
    path.write_bytes(combined)
    with pytest.raises(ImageError, match="combined flash image .* mpota image extract-app"):
        load_app_image(path)
    out_path = tmp_path / "app.bin"
    out_path.write_bytes(extracted)
    assert "(valid)" in _esptool_info(out_path, chip)


def test_extract_refuses_non_combined() -> None:
    with pytest.raises(ImageError, match="already an app image"):
        extract_app(_app("esp32"))
    with pytest.raises(ImageError, match="not a combined flash image"):
        extract_app(b"\x00" * 100)


def _cut_points(data: bytes) -> list[int]:
    return [1, 8, 23, 24, 30, 0x20 + 100, 0x10020, len(data) - 33, len(data) - 32, len(data) - 1]


def test_truncated_images_are_errors_never_exceptions() -> None:
    data = _app("esp32s3")
    for cut in _cut_points(data):
        rep = inspect_image(data[:cut])
        assert not rep.ok and any("truncated" in e for e in rep.errors), (cut, rep.findings)
        with pytest.raises(ImageError):
            from host_tools.esp_image import require_app
            require_app(rep)


@pytest.mark.parametrize("mutate, pattern", [
    (lambda d: b"", "empty"),
    (lambda d: b"\x7fELF" + d[4:], "first byte is 0x7f"),
    (lambda d: d[:1] + b"\x00" + d[2:], "segment count 0"),
    (lambda d: d[:1] + b"\x11" + d[2:], "segment count 17"),
    (lambda d: d[:12] + struct.pack("<H", 77) + d[14:], "unknown chip id 77"),
    (lambda d: d[:-1] + bytes([d[-1] ^ 1]), "appended SHA-256 mismatch"),
    (lambda d: d[:23] + b"\x07" + d[24:], "hash_appended byte is 7"),
])
def test_bad_images(mutate: object, pattern: str) -> None:
    data = _app("esp32")
    rep = inspect_image(mutate(data))  # type: ignore[operator]
    assert any(re.search(pattern, e) for e in rep.errors), rep.findings


def test_bootloader_only_and_trailing_data() -> None:
    app = _app("esp32")
    combined = _combined("esp32", app)
    boot = combined[: 0x4000 + 0x40]  # the bootloader image, no table after it
    rep = inspect_image(boot)
    assert rep.kind == "bootloader" and any("looks like a bootloader" in e for e in rep.errors)
    padded = inspect_image(app + b"\xff" * 64)
    assert padded.ok and any("64 bytes of padding" in f.message for f in padded.findings)
    junk = inspect_image(app + b"junk")
    assert any(f.level == "warning" and "4 bytes of data after" in f.message for f in junk.findings)


def test_no_appended_hash_is_a_warning() -> None:
    rep = parse_image(build_app_image("esp32", "1.0.0", hash_appended=False))
    assert rep.ok and rep.hash_appended is False and rep.sha256_valid is None
    assert any(f.level == "warning" and "no appended SHA-256" in f.message for f in rep.findings)


def test_read_image_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="No such file"):
        read_image_file(tmp_path / "none.bin")
    (tmp_path / "e.bin").write_bytes(b"")
    with pytest.raises(ImageError, match="is empty"):
        read_image_file(tmp_path / "e.bin")
    with pytest.raises(ImageError, match="is a folder"):
        read_image_file(tmp_path)
    (tmp_path / "junk.bin").write_bytes(b"\x00" * 4096)
    with pytest.raises(ImageError, match="not a valid app image: not an ESP image"):
        load_app_image(tmp_path / "junk.bin")
    (tmp_path / "trail.bin").write_bytes(_app("esp32") + b"\xff" * 16)
    with pytest.raises(ImageError, match="16 bytes after the app image end"):
        load_app_image(tmp_path / "trail.bin")


def test_full_flash_dump_from_zero() -> None:
    """`esptool read-flash 0 ...` of an ESP32: 0x1000 bytes of 0xFF, then the combined layout."""
    app = _app("esp32")
    dump = b"\xff" * 0x1000 + _combined("esp32", app)
    rep = inspect_image(dump)
    assert rep.kind == "combined" and rep.bootloader_offset == 0x1000
    assert rep.app_file_offset == 0x10000 and rep.app_partition == "ota_0"
    assert any("flash dump" in f.message for f in rep.findings)
    assert extract_app(dump)[0] == app
