"""Board registry: both shipped boards, MPOTA_BOARDS_DIR, and one-line errors for bad definitions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from host_tools.boards import BoardError, boards_dir, list_boards, load_board

REPO = Path(__file__).resolve().parent.parent


def test_boards_dir_is_the_repo_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MPOTA_BOARDS_DIR", raising=False)
    assert boards_dir() == REPO / "boards"
    assert list_boards() == ["esp32-generic-4mb", "esp32s3-generic-8mb"]


def test_esp32_generic_4mb() -> None:
    b = load_board("esp32-generic-4mb")
    assert (b.name, b.chip, b.chip_id, b.flash_size) == ("esp32-generic-4mb", "esp32", 0, 4 << 20)
    assert (b.bootloader_offset, b.partition_table_offset) == (0x1000, 0x8000)
    assert b.partitions_path == REPO / "partitions.csv"
    assert [(p.name, p.offset, p.size) for p in b.ota_slots] == [("ota_0", 0x10000, 0x180000),
                                                                 ("ota_1", 0x190000, 0x180000)]
    assert b.slot_size == 0x180000
    assert b.otadata is not None and (b.otadata.offset, b.otadata.size) == (0xD000, 0x2000)
    assert b.has_ota
    b.require_ota()
    assert [p.name for p in b.table] == ["nvs", "otadata", "phy_init", "ota_0", "ota_1", "vfs"]
    assert b.micropython_board == "ESP32_GENERIC" and b.micropython_variant == "OTA"


def test_esp32s3_generic_8mb() -> None:
    b = load_board("esp32s3-generic-8mb")
    assert (b.chip, b.chip_id, b.flash_size, b.bootloader_offset) == ("esp32s3", 9, 8 << 20, 0)
    assert [(p.name, p.offset, p.size) for p in b.ota_slots] == [("ota_0", 0x10000, 0x270000),
                                                                 ("ota_1", 0x280000, 0x270000)]
    assert b.slot_size == 0x270000
    assert b.table.find("vfs") is not None and b.table.find("vfs").end == 8 << 20  # type: ignore[union-attr]


def test_load_by_path() -> None:
    b = load_board(str(REPO / "boards" / "esp32-generic-4mb.json"))
    assert b.name == "esp32-generic-4mb"


def _copy_boards(tmp_path: Path) -> Path:
    d = tmp_path / "boards"
    d.mkdir()
    shutil.copy(REPO / "boards" / "esp32s3-generic-8mb.json", d)
    shutil.copy(REPO / "boards" / "esp32s3-generic-8mb.csv", d)
    return d


def _write(d: Path, name: str, csv: str, changes: dict[str, object] | None = None) -> None:
    doc = json.loads((REPO / "boards" / "esp32-generic-4mb.json").read_text())
    doc.update({"name": name, "partitions": f"{name}.csv"})
    doc.update(changes or {})
    (d / f"{name}.json").write_text(json.dumps(doc))
    (d / f"{name}.csv").write_text(csv)


def test_env_dir_and_unknown_board(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = _copy_boards(tmp_path)
    monkeypatch.setenv("MPOTA_BOARDS_DIR", str(d))
    assert list_boards() == ["esp32s3-generic-8mb"]
    with pytest.raises(BoardError) as info:
        load_board("esp32-generic-4mb")
    assert str(info.value) == f"unknown board 'esp32-generic-4mb' (known: esp32s3-generic-8mb in {d})"


def test_board_without_ota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # MicroPython's non-OTA ESP32_GENERIC layout (partitions-4MiB.csv).
    d = _copy_boards(tmp_path)
    monkeypatch.setenv("MPOTA_BOARDS_DIR", str(d))
    _write(d, "plain", "nvs, data, nvs, 0x9000, 0x6000,\nphy_init, data, phy, 0xf000, 0x1000,\n"
                       "factory, app, factory, 0x10000, 0x1F0000,\nvfs, data, fat, 0x200000, 0x200000,\n")
    b = load_board("plain")
    assert not b.has_ota and b.ota_slots == () and b.slot_size == 0 and b.otadata is None
    with pytest.raises(BoardError, match=r"board plain: its partition table has no OTA slots .*factory"):
        b.require_ota()


@pytest.mark.parametrize("changes,message", [
    ({"chip": "esp8266"}, "unknown chip 'esp8266'"),
    ({"chip_id": 9}, "chip_id 9 does not match chip esp32"),
    ({"bootloader_offset": 0}, "bootloader_offset 0x0 is wrong for esp32"),
    ({"flash_size": 1000}, "flash_size must be a positive number of MiB"),
    ({"flash_size": "4MB"}, "'flash_size' must be an integer"),
    ({"partition_table_offset": 0x8100}, "partition_table_offset 0x8100 must be sector aligned"),
    ({"name": "other"}, "its name is 'other', expected 'b'"),
])
def test_bad_board_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, changes: dict[str, object],
                        message: str) -> None:
    d = _copy_boards(tmp_path)
    monkeypatch.setenv("MPOTA_BOARDS_DIR", str(d))
    _write(d, "b", (REPO / "partitions.csv").read_text(), changes)
    with pytest.raises(BoardError) as info:
        load_board("b")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bad_board_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = _copy_boards(tmp_path)
    monkeypatch.setenv("MPOTA_BOARDS_DIR", str(d))
    _write(d, "big", (REPO / "boards" / "esp32s3-generic-8mb.csv").read_text())  # 8 MiB layout, 4 MiB board
    with pytest.raises(BoardError, match=r"^board big.json: big.csv line 7 \(ota_1\): "
                                         r"ends at 0x4f0000, past the flash size 0x400000"):
        load_board("big")
    (d / "broken.json").write_text("{not json")
    with pytest.raises(BoardError, match="board broken.json: not valid JSON"):
        load_board("broken")
    (d / "missing.json").write_text(json.dumps({"name": "missing", "chip": "esp32"}))
    with pytest.raises(BoardError, match="board missing.json: missing key 'chip_id'"):
        load_board("missing")
    with pytest.raises(BoardError, match="board file .*nowhere.json not found"):
        load_board(str(tmp_path / "nowhere.json"))
