"""Board registry: boards/<name>.json -> Board (chip, flash size, partition table, OTA slots).

The boards folder is $MPOTA_BOARDS_DIR, or the one installed with mpota (host_tools.bundled).
A board JSON holds: name, description, chip, chip_id, flash_size, bootloader_offset,
partition_table_offset, partitions (a CSV path relative to the JSON), micropython_board,
micropython_variant.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from host_tools.bundled import data_path
from host_tools.errors import MpotaError
from host_tools.partitions import Partition, PartitionError, PartitionTable, load_table

# ESP-IDF esp_chip_id_t (the image header's chip id) and the offset the ROM loads the bootloader from.
CHIP_IDS: dict[str, int] = {
    "esp32": 0, "esp32s2": 2, "esp32c3": 5, "esp32s3": 9, "esp32c2": 12, "esp32c6": 13,
    "esp32h2": 16, "esp32p4": 18, "esp32c61": 20, "esp32c5": 23,
}
BOOTLOADER_OFFSETS: dict[str, int] = {
    "esp32": 0x1000, "esp32s2": 0x1000, "esp32c3": 0x0, "esp32s3": 0x0, "esp32c2": 0x0,
    "esp32c6": 0x0, "esp32h2": 0x0, "esp32p4": 0x2000, "esp32c61": 0x0, "esp32c5": 0x2000,
}

_REQUIRED: dict[str, type] = {
    "name": str, "chip": str, "chip_id": int, "flash_size": int, "bootloader_offset": int,
    "partition_table_offset": int, "partitions": str,
}


class BoardError(MpotaError):
    """Unknown board, or a board definition that is inconsistent."""


@dataclass(frozen=True)
class Board:
    name: str
    chip: str
    chip_id: int
    flash_size: int
    bootloader_offset: int
    partition_table_offset: int
    table: PartitionTable
    ota_slots: tuple[Partition, ...]
    slot_size: int  # the smallest OTA slot: the largest image every slot can take (0 without OTA)
    otadata: Partition | None
    description: str = ""
    micropython_board: str = ""
    micropython_variant: str = ""
    path: Path | None = None
    partitions_path: Path | None = None

    @property
    def has_ota(self) -> bool:
        return len(self.ota_slots) >= 2 and self.otadata is not None

    def require_ota(self) -> None:
        """Raise BoardError unless the table has two or more OTA slots and otadata."""
        if not self.has_ota:
            found = ", ".join(p.name for p in self.table.entries if p.is_app) or "none"
            raise BoardError(f"board {self.name}: its partition table has no OTA slots (needs otadata and "
                             f"ota_0/ota_1 app partitions; app partitions: {found}) - a non-OTA MicroPython "
                             f"layout cannot take updates")


def boards_dir() -> Path:
    env = os.environ.get("MPOTA_BOARDS_DIR")
    if env:
        return Path(env)
    return data_path("boards")


def list_boards(directory: Path | None = None) -> list[str]:
    """Names of the boards in the boards folder, sorted."""
    folder = directory or boards_dir()
    try:
        return sorted(p.stem for p in folder.glob("*.json") if p.is_file())
    except OSError:
        return []


def _looks_like_path(name_or_path: str) -> bool:
    return name_or_path.endswith(".json") or os.sep in name_or_path or "/" in name_or_path


def load_board(name_or_path: str | os.PathLike[str]) -> Board:
    """A board by name (boards/<name>.json) or by path to a board JSON."""
    text = os.fspath(name_or_path)
    if _looks_like_path(text):
        path = Path(text)
        if not path.is_file():
            raise BoardError(f"board file {path} not found")
    else:
        path = boards_dir() / f"{text}.json"
        if not path.is_file():
            known = list_boards()
            raise BoardError(f"unknown board {text!r} (known: {', '.join(known) if known else 'none'} "
                             f"in {boards_dir()})")
        board = _load_json(path)
        if board.name != text:
            raise BoardError(f"board {path.name}: its name is {board.name!r}, expected {text!r}")
        return board
    return _load_json(path)


def _load_json(path: Path) -> Board:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise BoardError(f"cannot read board {path}: {exc.strerror}") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BoardError(f"board {path.name}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise BoardError(f"board {path.name}: expected a JSON object")
    return board_from_dict(doc, path)


def board_from_dict(doc: dict[str, Any], path: Path) -> Board:
    where = f"board {path.name}"
    for key, kind in _REQUIRED.items():
        if key not in doc:
            raise BoardError(f"{where}: missing key {key!r}")
        value = doc[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BoardError(f"{where}: {key!r} must be {'a string' if kind is str else 'an integer'}")
    chip = doc["chip"]
    if chip not in CHIP_IDS:
        raise BoardError(f"{where}: unknown chip {chip!r} (known: {', '.join(CHIP_IDS)})")
    if doc["chip_id"] != CHIP_IDS[chip]:
        raise BoardError(f"{where}: chip_id {doc['chip_id']} does not match chip {chip} "
                         f"(ESP-IDF chip id {CHIP_IDS[chip]})")
    if doc["bootloader_offset"] != BOOTLOADER_OFFSETS[chip]:
        raise BoardError(f"{where}: bootloader_offset 0x{doc['bootloader_offset']:x} is wrong for {chip} "
                         f"(the ROM loads it from 0x{BOOTLOADER_OFFSETS[chip]:x})")
    flash_size = doc["flash_size"]
    if flash_size <= 0 or flash_size % (1024 * 1024):
        raise BoardError(f"{where}: flash_size must be a positive number of MiB in bytes, got {flash_size}")
    pt_offset = doc["partition_table_offset"]
    if pt_offset % 0x1000 or not doc["bootloader_offset"] < pt_offset < flash_size:
        raise BoardError(f"{where}: partition_table_offset 0x{pt_offset:x} must be sector aligned, above "
                         f"the bootloader and inside the flash")
    csv_path = (path.parent / doc["partitions"]).resolve()
    try:
        table = load_table(csv_path, flash_size=flash_size, table_offset=pt_offset)
    except PartitionError as exc:
        raise BoardError(f"{where}: {exc}") from None
    slots = tuple(table.ota_slots)
    return Board(
        name=doc["name"],
        chip=chip,
        chip_id=doc["chip_id"],
        flash_size=flash_size,
        bootloader_offset=doc["bootloader_offset"],
        partition_table_offset=pt_offset,
        table=table,
        ota_slots=slots,
        slot_size=min((p.size for p in slots), default=0),
        otadata=table.otadata,
        description=str(doc.get("description", "")),
        micropython_board=str(doc.get("micropython_board", "")),
        micropython_variant=str(doc.get("micropython_variant", "")),
        path=path,
        partitions_path=csv_path,
    )
