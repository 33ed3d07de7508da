"""`mpota flash`: write an OTA-ready MicroPython to a board with esptool."""

from __future__ import annotations

import argparse
from typing import Any

from host_tools.boards import load_board
from host_tools.flashing import flash
from host_tools.transport import ProcessTransport


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "flash", help="flash an OTA-ready MicroPython with esptool",
        description="Flash MicroPython onto a board with esptool. FIRMWARE is either MicroPython's OTA "
                    "firmware.bin (combined: bootloader + partition table + app, written at the chip's "
                    "bootloader offset after checking its partition table is the board's) or an app image "
                    "(micropython.bin: written into ota_0 with the board's partition table and a blank "
                    "otadata). All checks run before anything is written.")
    parser.add_argument("firmware", metavar="FIRMWARE", help="firmware.bin (combined) or app image")
    parser.add_argument("--port", "-p", required=True, help="serial port, e.g. /dev/ttyUSB0 (or u0, a0)")
    parser.add_argument("--board", "-b", required=True, help="board name (see boards/) or board JSON path")
    parser.add_argument("--baud", type=int, help="esptool baud rate (e.g. 460800)")
    parser.add_argument("--erase", action="store_true", help="erase all flash first (esptool erase-flash)")
    parser.add_argument("--dry-run", action="store_true", help="print the esptool commands, run nothing")
    parser.set_defaults(func=cmd_flash)


def cmd_flash(args: argparse.Namespace) -> int:
    board = load_board(args.board)
    flash(board, args.port, args.firmware, transport=ProcessTransport(), erase=args.erase, baud=args.baud,
          dry_run=args.dry_run)
    return 0
