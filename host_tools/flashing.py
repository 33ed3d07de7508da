"""Flash an OTA-ready MicroPython onto a board with esptool (run as a program: esptool is GPL).

Two kinds of firmware file:
- an **app image** (MicroPython's micropython.bin): we write the board's partition table at its
  offset, a blank otadata (0x2000 of 0xFF, so the bootloader starts from ota_0) and the app into
  ota_0. The board must already have a bootloader (e.g. from an earlier MicroPython flash).
- a **combined image** (MicroPython's OTA-variant firmware.bin: bootloader at the chip's
  bootloader offset, partition table at 0x8000, app at ota_0): written whole at the bootloader
  offset, after checking its partition table is the board's.

Every check (board, image, size, port) runs before anything is written. ``plan_flash`` computes
the exact esptool commands; ``flash`` runs them through a Transport.
"""

from __future__ import annotations

import shlex
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from host_tools import esp_image
from host_tools.boards import Board
from host_tools.errors import MpotaError
from host_tools.fsutil import atomic_write
from host_tools.partitions import (
    TYPE_DATA,
    Partition,
    PartitionError,
    PartitionTable,
    build_binary,
    parse_binary,
)
from host_tools.transport import ToolError, Transport, expand_port, find_tool

OTADATA_BLANK_SIZE = 0x2000


class FlashError(MpotaError):
    """The firmware does not fit the board, or esptool failed."""


@dataclass
class FlashPlan:
    board: Board
    port: str
    firmware: Path
    kind: str  # "app" or "combined"
    commands: list[list[str]] = field(default_factory=list)
    writes: list[tuple[int, Path]] = field(default_factory=list)  # (flash offset, file) in write order
    workdir: Path | None = None
    notes: list[str] = field(default_factory=list)

    def shell(self) -> list[str]:
        return [shlex.join(c) for c in self.commands]


def _esptool_base(esptool: str, board: Board, port: str, baud: int | None) -> list[str]:
    base = [esptool, "--chip", board.chip, "--port", port]
    if baud is not None:
        base += ["--baud", str(baud)]
    return base


def _read(path: Path) -> bytes:
    try:
        return esp_image.read_image_file(path)
    except esp_image.ImageError as exc:
        raise FlashError(str(exc)) from None


def check_firmware(board: Board, firmware: Path) -> tuple[str, bytes, esp_image.ImageReport]:
    """Classify and check the firmware for this board: ("app" | "combined", bytes, report)."""
    board.require_ota()
    data = _read(firmware)
    rep = esp_image.inspect_image(data)
    name = firmware.name
    if rep.chip_id is not None and rep.chip_id != board.chip_id:
        raise FlashError(f"{name} is for {esp_image.chip_name(rep.chip_id)}, but board {board.name} is "
                         f"{board.chip} (chip id {board.chip_id})")
    ota0 = board.ota_slots[0]
    if rep.kind == "combined":
        return "combined", data, _check_combined(board, firmware, data, rep)
    if rep.kind != "app":
        why = rep.errors[0] if rep.errors else f"it is a {rep.kind} image"
        raise FlashError(f"{name} is not an app image for {board.chip}: {why}")
    if rep.errors:
        raise FlashError(f"{name} is not a valid app image: {rep.errors[0]}")
    if len(data) > ota0.size:
        raise FlashError(f"{name} is {len(data)} bytes (0x{len(data):x}), too big for {ota0.name} of board "
                         f"{board.name} (0x{ota0.size:x} bytes)")
    return "app", data, rep


def _check_combined(board: Board, firmware: Path, data: bytes,
                    rep: esp_image.ImageReport) -> esp_image.ImageReport:
    name = firmware.name
    if rep.bootloader_offset != board.bootloader_offset:
        raise FlashError(f"{name} is a combined image for bootloader offset "
                         f"0x{rep.bootloader_offset or 0:x}, but {board.chip} boots from "
                         f"0x{board.bootloader_offset:x}")
    base = _file_base(board, rep)
    pt_file = board.partition_table_offset - base
    try:
        embedded = parse_binary(data[pt_file : pt_file + 0xC00], source=f"{name} partition table",
                                flash_size=board.flash_size, table_offset=board.partition_table_offset,
                                check=False)
    except PartitionError as exc:
        raise FlashError(f"{name}: cannot read its partition table at 0x{board.partition_table_offset:x}: "
                         f"{exc}") from None
    diff = embedded.same_layout(board.table)
    if diff is not None and implicit_vfs(board, embedded) is not None:
        diff = None  # MicroPython >= 1.26 tables leave vfs out and create it at boot on the same region
    if diff is not None:
        ota = "no OTA slots" if not embedded.ota_slots else f"{len(embedded.ota_slots)} OTA slots"
        build = (f"MicroPython's {board.micropython_board}-OTA firmware"
                 if board.micropython_variant == "OTA" and board.micropython_board
                 else "a MicroPython build with this layout")
        raise FlashError(f"{name}: its partition table ({ota}) differs from board {board.name}'s "
                         f"({diff}); flash {build} (see mpota partitions show {board.name}), or its "
                         f"app image alone")
    app = rep.app
    if app is None or rep.app_file_offset is None:
        raise FlashError(f"{name}: the combined image holds no app image")
    if app.errors:
        raise FlashError(f"{name}: the app in {rep.app_partition} is not valid: {app.errors[0]}")
    slot = board.table.find(rep.app_partition or "")
    app_len = len(data) - rep.app_file_offset
    if slot is None or app_len > slot.size:
        raise FlashError(f"{name}: the app ({app_len} bytes) is too big for {rep.app_partition} "
                         f"(0x{slot.size if slot else 0:x} bytes)")
    end = base + len(data)
    if end > board.flash_size:
        raise FlashError(f"{name} ends at 0x{end:x}, past the board's flash (0x{board.flash_size:x})")
    return rep


def _file_base(board: Board, rep: esp_image.ImageReport) -> int:
    """Flash address of the file's first byte: the bootloader offset for a firmware.bin, 0x0 for
    a full flash dump (which starts with the padding before an ESP32's bootloader at 0x1000)."""
    return rep.flash_offset if rep.flash_offset is not None else board.bootloader_offset


def implicit_vfs(board: Board, embedded: PartitionTable) -> Partition | None:
    """The board's last partition, when it is the filesystem MicroPython creates by itself.

    Since MicroPython 1.26 the port's partition CSVs stop after the last app partition and the
    firmware creates the "vfs" filesystem partition at boot on the rest of the flash. Such a table
    equals the board's table without its final vfs/ffat entry, which must start where the last
    embedded entry ends and run to the end of the flash.
    """
    entries = board.table.entries
    if len(entries) != len(embedded.entries) + 1 or entries[:-1] != embedded.entries:
        return None
    last = entries[-1]
    start = max(p.end for p in embedded.entries)
    if last.name in ("vfs", "ffat") and last.type == TYPE_DATA and last.offset == start \
            and last.end == board.flash_size:
        return last
    return None


def plan_flash(board: Board, port: str, firmware: str | Path, *, workdir: Path, erase: bool = False,
               baud: int | None = None, esptool: str | None = None) -> FlashPlan:
    """Check everything and write the generated files into workdir; returns the esptool commands."""
    fw = Path(firmware)
    port = expand_port(port)
    kind, data, rep = check_firmware(board, fw)
    if erase and kind == "app":
        raise FlashError(f"--erase would erase the bootloader, and {fw.name} is an app image without one: "
                         f"flash MicroPython's combined OTA firmware.bin with --erase instead")
    tool = esptool or find_tool("esptool")
    base = _esptool_base(tool, board, port, baud)
    plan = FlashPlan(board=board, port=port, firmware=fw, kind=kind, workdir=workdir)
    if erase:
        plan.commands.append(base + ["erase-flash"])
    otadata = board.otadata
    assert otadata is not None  # require_ota checked it
    if kind == "app":
        pt = workdir / f"partitions-{board.name}.bin"
        od = workdir / "otadata-blank.bin"
        atomic_write(pt, build_binary(board.table))
        atomic_write(od, b"\xff" * OTADATA_BLANK_SIZE)
        ota0 = board.ota_slots[0]
        plan.writes = [(board.partition_table_offset, pt), (otadata.offset, od), (ota0.offset, fw)]
        plan.notes.append(f"app image -> {ota0.name} at 0x{ota0.offset:x}; partition table at "
                          f"0x{board.partition_table_offset:x}; blank otadata at 0x{otadata.offset:x} "
                          f"(the board keeps its bootloader)")
    else:
        at = _file_base(board, rep)
        plan.writes = [(at, fw)]
        start = otadata.offset - at
        if data[start : start + otadata.size] != b"\xff" * otadata.size:
            plan.notes.append(f"{fw.name} carries otadata content at 0x{otadata.offset:x}: the board boots "
                              f"whichever slot it selects")
        plan.notes.append(f"combined image (bootloader + partition table + app) at "
                          f"0x{at:x}; its partition table matches {board.name}")
        pt_file = board.partition_table_offset - at
        embedded = parse_binary(data[pt_file : pt_file + 0xC00], check=False)
        vfs = implicit_vfs(board, embedded)
        if vfs is not None:
            plan.notes.append(f"its table has no {vfs.name} entry: MicroPython creates {vfs.name} at boot on "
                              f"0x{vfs.offset:x}..0x{vfs.end:x}, as the board defines it")
    app = rep.app if kind == "combined" else rep
    desc = app.app_desc if app is not None else None
    if desc is not None and not desc.version:
        plan.notes.append("its app carries no version (esp_app_desc_t, as in MicroPython's own builds): "
                          "`mpota deploy` records the version it runs in /mpota.json (MicroPython's own, or "
                          "--firmware-version)")
    args: list[str] = []
    for offset, path in plan.writes:
        args += [f"0x{offset:x}", str(path)]
    plan.commands.append(base + ["write-flash"] + args)
    return plan


def flash(board: Board, port: str, firmware: str | Path, *, transport: Transport, erase: bool = False,
          baud: int | None = None, dry_run: bool = False, workdir: Path | None = None,
          echo: Callable[[str], None] = print) -> FlashPlan:
    """Check, then run (or with dry_run print) the esptool commands. Raises FlashError/PortError."""
    port = expand_port(port)
    own_dir = workdir is None
    wd = workdir or Path(tempfile.mkdtemp(prefix="mpota-flash-"))
    plan: FlashPlan | None = None
    try:
        plan = plan_flash(board, port, firmware, workdir=wd, erase=erase, baud=baud)
        if dry_run:
            for note in plan.notes:
                echo(f"# {note}")
            if any(p.parent == wd for _, p in plan.writes):
                echo(f"# generated files are in {wd}")
            for line in plan.shell():
                echo(line)
            return plan
        transport.check_port(port)
        for note in plan.notes:
            echo(note)
        for cmd in plan.commands:
            echo("$ " + shlex.join(cmd))
            result = transport.run(cmd)
            if result.returncode != 0:
                what = "erasing" if "erase-flash" in cmd else "writing"
                raise FlashError(f"esptool failed while {what} (exit status {result.returncode}); "
                                 f"check the port and boot mode, then run mpota flash again")
        echo(f"flashed {plan.firmware.name} to {board.name} on {port}")
        return plan
    except ToolError as exc:
        raise FlashError(str(exc)) from None
    finally:
        generated = plan is not None and any(p.parent == wd for _, p in plan.writes)
        if own_dir and not (dry_run and generated):
            shutil.rmtree(wd, ignore_errors=True)
