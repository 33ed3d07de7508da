"""`mpota partitions build|show`: ESP-IDF partition tables from a board or a CSV."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from host_tools.boards import Board, load_board
from host_tools.commands._options import actions
from host_tools.errors import UsageError
from host_tools.fsutil import atomic_write
from host_tools.partitions import (
    DEFAULT_TABLE_OFFSET,
    PartitionTable,
    build_binary,
    format_table,
    load_table,
    parse_int,
)


def register(sub: Any) -> None:
    psub = actions(sub, "partitions", "build or show ESP-IDF partition tables",
                   "Build or show ESP-IDF partition tables.")

    build = psub.add_parser("build", help="write the binary partition table of a board or CSV",
                            description="Write the ESP-IDF binary partition table (0xC00 bytes, with MD5) "
                                        "for a board name, a board JSON or a partition CSV.")
    build.add_argument("source", metavar="BOARD|CSV")
    build.add_argument("--out", "-o", required=True, metavar="FILE", help="where to write partitions.bin")
    build.add_argument("--flash-size", metavar="SIZE", help="check entries fit (CSV only; e.g. 4M, 0x400000)")
    build.add_argument("--no-md5", action="store_true", help="omit the MD5 entry (ESP-IDF --disable-md5sum)")
    build.set_defaults(func=cmd_build)

    show = psub.add_parser("show", help="print a partition table (binary, CSV, board or firmware.bin)",
                           description="Print a partition table read from a binary table, a CSV, a board, "
                                       "or the table inside a combined flash image (firmware.bin).")
    show.add_argument("source", metavar="BIN|CSV|BOARD|FIRMWARE")
    show.add_argument("--flash-size", metavar="SIZE", help="check entries fit (e.g. 4M, 0x400000)")
    show.add_argument("--csv", action="store_true", help="print as CSV instead of a table")
    show.add_argument("--json", action="store_true", help="print as JSON")
    show.set_defaults(func=cmd_show)


def _flash_size(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        size = parse_int(text.removesuffix("B").removesuffix("b"))
    except ValueError:
        raise UsageError(f"bad --flash-size {text!r} (e.g. 4M or 0x400000)") from None
    if size <= 0:
        raise UsageError(f"bad --flash-size {text!r}")
    return size


def _resolve(source: str, flash_size: int | None) -> tuple[PartitionTable, Board | None]:
    path = Path(source)
    if path.suffix.lower() in (".csv", ".bin") or (path.is_file() and path.suffix != ".json"):
        return load_table(path, flash_size=flash_size, table_offset=DEFAULT_TABLE_OFFSET), None
    board = load_board(source)
    return board.table, board


def cmd_build(args: argparse.Namespace) -> int:
    table, board = _resolve(args.source, _flash_size(args.flash_size))
    data = build_binary(table, md5=not args.no_md5)
    atomic_write(args.out, data)
    what = f"board {board.name}" if board else table.source
    print(f"wrote {args.out}: {len(table)} partitions from {what}, {len(data)} bytes"
          + ("" if args.no_md5 else ", MD5 entry"))
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    table, board = _resolve(args.source, _flash_size(args.flash_size))
    if args.csv:
        print(table.to_csv(), end="")
        return 0
    if args.json:
        slots, otadata = table.ota_slots, table.otadata
        print(json.dumps({
            "board": board.name if board is not None else None, "source": str(table.source),
            "partitions": [{"name": p.name, "type": p.type_name, "subtype": p.subtype_name,
                            "offset": p.offset, "size": p.size, "flags": p.flags} for p in table.entries],
            "ota_slots": [p.name for p in slots], "otadata": otadata.offset if otadata is not None else None,
            "slot_size": min((p.size for p in slots), default=0)}, indent=2))
        return 0
    if board is not None:
        print(f"board {board.name}: {board.chip}, flash {board.flash_size // (1024 * 1024)} MiB, "
              f"table at 0x{board.partition_table_offset:x}")
    else:
        kind = "binary" if table.unit == "entry" else "CSV"
        md5 = (", MD5 ok" if table.md5 else ", no MD5 entry") if kind == "binary" else ""
        print(f"{table.source}: {kind} table, {len(table)} partitions{md5}")
    print(format_table(table))
    slots = table.ota_slots
    otadata = table.otadata
    if slots and otadata is not None:
        print(f"OTA: {len(slots)} slots ({', '.join(p.name for p in slots)}), largest image "
              f"0x{min(p.size for p in slots):x} bytes, otadata at 0x{otadata.offset:x}")
    else:
        print("OTA: none (no ota_N app partitions: this layout cannot take OTA updates)")
    return 0
