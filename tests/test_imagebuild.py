"""Genuine ESP32 / ESP32-S3 app images from host_tools.imagebuild, judged by esptool itself.

esptool is GPL: it is run as a program (``esptool image-info``), never imported. The same
images are also checked against the simulated board's bootloader model, so the board
model and esptool agree on what is a valid image.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

from host_tools.imagebuild import build_app_image, build_combined_image
from sim.board import ota, sf
from sim.images import build_sim_image

ESPTOOL = Path(sys.executable).parent / "esptool"

CHIPS = {"esp32": ("ESP32", 0), "esp32s3": ("ESP32-S3", 9)}


def image_info(path: Path) -> str:
    proc = subprocess.run([str(ESPTOOL), "image-info", str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


class _BytesFlash:
    """Flash stand-in over a bytes object, for simota.verify_image / firmware_info."""

    def __init__(self, data: bytes, size: int):
        self.data = data + b"\xff" * (size - len(data))
        self.size = size

    def read(self, addr: int, n: int) -> bytes:
        return self.data[addr:addr + n]

    def readinto(self, addr: int, buf: memoryview) -> None:
        buf[:] = self.data[addr:addr + len(buf)]


def board_verdict(image: bytes, chip_id: int) -> str | None:
    return ota.verify_image(_BytesFlash(image, 0x180000), 0, 0x180000, chip_id, 0)  # type: ignore[no-any-return]


@pytest.mark.parametrize("chip", sorted(CHIPS))
def test_esptool_accepts_genuine_images(tmp_path: Path, chip: str) -> None:
    name, chip_id = CHIPS[chip]
    image = build_sim_image(chip, "1.2.3-rc.1", "demo-app", secure_version=7, flags="health=fail")
    path = tmp_path / f"{chip}.bin"
    path.write_bytes(image)
    out = image_info(path)
    assert f"Detected image type: {name}" in out
    assert f"Chip ID: {chip_id} ({name})" in out
    assert "App version: 1.2.3-rc.1" in out
    assert "Project name: demo-app" in out
    assert "Secure version: 7" in out
    assert re.search(r"Checksum: 0x[0-9a-f]{2} \(valid\)", out), out
    digest = hashlib.sha256(image[:-32]).hexdigest()
    assert image[-32:].hex() == digest
    assert f"Validation hash: {digest} (valid)" in out
    assert "DROM" in out and "IROM" in out  # flash-mapped segments the bootloader maps by MMU page
    # the board model agrees, and reads the same app_desc and the sim flags
    assert board_verdict(image, chip_id) is None
    assert board_verdict(image, 9 - chip_id) is not None  # the other chip refuses it
    part = sf.Part(["ota_0", 0, 0x10, 0, 0x180000])
    info = ota.firmware_info(_BytesFlash(image, 0x180000), part)
    assert info["version"] == "1.2.3-rc.1" and info["project_name"] == "demo-app"
    assert info["secure_version"] == 7 and info["flags"] == {"health": "fail"}


def test_esptool_and_board_model_both_reject_corruption(tmp_path: Path) -> None:
    image = bytearray(build_app_image("esp32", "2.0.0"))
    image[100] ^= 0x01  # a byte of segment data
    path = tmp_path / "bad.bin"
    path.write_bytes(image)
    out = image_info(path)
    assert re.search(r"Checksum: 0x[0-9a-f]{2} \(invalid - calculated", out), out
    assert "(invalid)" in out  # validation hash
    assert "checksum mismatch" in str(board_verdict(bytes(image), 0))

    image = bytearray(build_app_image("esp32", "2.0.0"))
    image[-3] ^= 0x01  # only the appended SHA-256
    path.write_bytes(image)
    out = image_info(path)
    assert re.search(r"Checksum: 0x[0-9a-f]{2} \(valid\)", out) and "(invalid)" in out
    assert board_verdict(bytes(image), 0) == "SHA-256 mismatch"


def test_image_without_appended_hash(tmp_path: Path) -> None:
    image = build_app_image("esp32", "2.0.0", hash_appended=False)
    path = tmp_path / "nohash.bin"
    path.write_bytes(image)
    out = image_info(path)
    assert re.search(r"Checksum: 0x[0-9a-f]{2} \(valid\)", out)
    assert "Validation hash" not in out
    assert len(image) % 16 == 0
    assert board_verdict(image, 0) is None


def test_custom_code_and_versions_change_the_image(tmp_path: Path) -> None:
    a = build_app_image("esp32", "1.0.0", code=b"\x01\x02\x03")  # padded to 4 bytes
    b = build_app_image("esp32", "1.0.1")
    big = build_app_image("esp32", "1.0.0", code_size=0x40000)
    assert a != b and len(big) > len(b) + 0x30000
    for i, img in enumerate((a, b, big)):
        path = tmp_path / f"img{i}.bin"
        path.write_bytes(img)
        assert re.search(r"Checksum: 0x[0-9a-f]{2} \(valid\)", image_info(path))
        assert board_verdict(img, 0) is None


def test_unknown_chip_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown chip"):
        build_app_image("esp8266", "1.0.0")


def test_combined_image_bootloader_is_a_valid_esp_image(tmp_path: Path) -> None:
    app = build_app_image("esp32", "1.0.0")
    combined = build_combined_image("esp32", app, b"\xaa\x50" + b"\xff" * 30, bootloader_offset=0x1000)
    assert combined[0x10000 - 0x1000:] == app
    assert combined[0x8000 - 0x1000:0x8000 - 0x1000 + 2] == b"\xaa\x50"
    path = tmp_path / "bootloader.bin"
    path.write_bytes(combined[:0x7000])
    out = image_info(path)
    assert "Detected image type: ESP32" in out
    assert re.search(r"Checksum: 0x[0-9a-f]{2} \(valid\)", out), out
