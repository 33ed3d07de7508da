"""`mpota flash`: exact esptool invocations and files (recording transport), every refusal before any
write, and the real esptool accepting our argv."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

import pytest
from helpers import free_port, run_cli

from host_tools.boards import Board, load_board
from host_tools.errors import MpotaError
from host_tools.flashing import FlashError, flash
from host_tools.imagebuild import build_app_image, build_combined_image
from host_tools.partitions import parse_csv
from host_tools.transport import CommandResult, ProcessTransport, RecordingTransport, find_tool

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
ESPTOOL = find_tool("esptool")
B4 = load_board("esp32-generic-4mb")
B8 = load_board("esp32s3-generic-8mb")
# MicroPython >= 1.26: ports/esp32/partitions-4MiB-ota.csv and partitions-8MiBplus-ota.csv end after
# ota_1; the firmware creates "vfs" on the rest of the flash at boot.
MP126_4MB_CSV = ("nvs, data, nvs, 0x9000, 0x4000,\notadata, data, ota, 0xd000, 0x2000,\n"
                 "phy_init, data, phy, 0xf000, 0x1000,\nota_0, app, ota_0, 0x10000, 0x180000,\n"
                 "ota_1, app, ota_1, 0x190000, 0x180000,\n")
MP126_8MB_CSV = ("nvs, data, nvs, 0x9000, 0x4000,\notadata, data, ota, 0xd000, 0x2000,\n"
                 "phy_init, data, phy, 0xf000, 0x1000,\nota_0, app, ota_0, 0x10000, 0x270000,\n"
                 "ota_1, app, ota_1, 0x280000, 0x270000,\n")
SMALL_SLOTS_CSV = ("nvs, data, nvs, 0x9000, 0x4000,\notadata, data, ota, 0xd000, 0x2000,\n"
                   "phy_init, data, phy, 0xf000, 0x1000,\nota_0, app, ota_0, 0x10000, 0x100000,\n"
                   "ota_1, app, ota_1, 0x110000, 0x100000,\n")
NON_OTA_CSV = ("nvs, data, nvs, 0x9000, 0x6000,\nphy_init, data, phy, 0xf000, 0x1000,\n"
               "factory, app, factory, 0x10000, 0x1F0000,\nvfs, data, fat, 0x200000, 0x200000,\n")


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("images")
    app = build_app_image("esp32", "1.24.0", "micropython")
    app_s3 = build_app_image("esp32s3", "1.24.0", "micropython")
    files = {
        "app": app,
        "app_s3": app_s3,
        "combined": build_combined_image("esp32", app, B4.table.to_binary(), 0x1000),
        "combined_s3": build_combined_image("esp32s3", app_s3, B8.table.to_binary(), 0x0),
        "combined_plain": build_combined_image("esp32", app, parse_csv(NON_OTA_CSV).to_binary(), 0x1000),
        "mp126": build_combined_image("esp32", app, parse_csv(MP126_4MB_CSV).to_binary(), 0x1000),
        "mp126_s3": build_combined_image("esp32s3", app_s3, parse_csv(MP126_8MB_CSV).to_binary(), 0x0),
        "small_slots": build_combined_image("esp32", app, parse_csv(SMALL_SLOTS_CSV).to_binary(), 0x1000),
        "big": build_app_image("esp32", "1.24.0", "micropython", code_size=0x180000),
        "junk": os.urandom(4096),
        # MicroPython's own builds: no version, no project name in esp_app_desc_t
        "stock": build_combined_image("esp32", build_app_image("esp32", build="1.24.1"), B4.table.to_binary(),
                                      0x1000),
    }
    out = {}
    for name, data in files.items():
        out[name] = d / f"{name}.bin"
        out[name].write_bytes(data)
    return out


def test_app_image_writes_table_blank_otadata_and_ota0(images: dict[str, Path], port: str,
                                                       tmp_path: Path) -> None:
    t = RecordingTransport()
    lines: list[str] = []
    flash(B4, port, images["app"], transport=t, baud=460800, workdir=tmp_path, echo=lines.append)
    pt, od = str(tmp_path / "partitions-esp32-generic-4mb.bin"), str(tmp_path / "otadata-blank.bin")
    assert t.calls == [[ESPTOOL, "--chip", "esp32", "--port", port, "--baud", "460800", "write-flash",
                        "0x8000", pt, "0xd000", od, "0x10000", str(images["app"])]]
    assert t.files[pt] == (DATA / "partitions-esp32-generic-4mb.bin").read_bytes()
    assert t.files[od] == b"\xff" * 0x2000
    assert t.files[str(images["app"])] == images["app"].read_bytes()
    assert t.ports == [port]
    assert lines[-1] == f"flashed app.bin to esp32-generic-4mb on {port}"


def test_combined_image_with_erase(images: dict[str, Path], port: str) -> None:
    t = RecordingTransport()
    flash(B4, port, images["combined"], transport=t, erase=True, echo=lambda s: None)
    base = [ESPTOOL, "--chip", "esp32", "--port", port]
    assert t.calls == [base + ["erase-flash"], base + ["write-flash", "0x1000", str(images["combined"])]]


def test_combined_s3_at_offset_zero(images: dict[str, Path], port: str) -> None:
    t = RecordingTransport()
    flash(B8, port, images["combined_s3"], transport=t, echo=lambda s: None)
    assert t.calls == [[ESPTOOL, "--chip", "esp32s3", "--port", port, "write-flash", "0x0",
                        str(images["combined_s3"])]]


@pytest.mark.parametrize("board,name,vfs", [(B4, "mp126", "0x310000..0x400000"),
                                             (B8, "mp126_s3", "0x4f0000..0x800000")])
def test_micropython_126_table_without_vfs_is_accepted(images: dict[str, Path], port: str, board: Board,
                                                       name: str, vfs: str) -> None:
    t = RecordingTransport()
    lines: list[str] = []
    flash(board, port, images[name], transport=t, echo=lines.append)
    assert t.calls == [[ESPTOOL, "--chip", board.chip, "--port", port, "write-flash",
                        f"0x{board.bootloader_offset:x}", str(images[name])]]
    assert f"its table has no vfs entry: MicroPython creates vfs at boot on {vfs}, as the board defines it" \
        in lines


def test_dry_run_prints_exact_commands_and_keeps_files(images: dict[str, Path], tmp_path: Path) -> None:
    t = RecordingTransport(port_check=None)
    lines: list[str] = []
    plan = flash(B8, "/dev/ttyACM0", images["app_s3"], transport=t, dry_run=True, echo=lines.append)
    assert t.calls == [] and t.ports == []
    assert plan.workdir is not None
    pt = plan.workdir / "partitions-esp32s3-generic-8mb.bin"
    try:
        assert pt.read_bytes() == (DATA / "partitions-esp32s3-generic-8mb.bin").read_bytes()
        assert (plan.workdir / "otadata-blank.bin").read_bytes() == b"\xff" * 0x2000
        assert lines[-1] == (f"{ESPTOOL} --chip esp32s3 --port /dev/ttyACM0 write-flash 0x8000 {pt} "
                             f"0xd000 {plan.workdir / 'otadata-blank.bin'} 0x10000 {images['app_s3']}")
        assert f"# generated files are in {plan.workdir}" in lines
    finally:
        shutil.rmtree(plan.workdir)


def test_dry_run_of_combined_leaves_no_temp_dir(images: dict[str, Path]) -> None:
    lines: list[str] = []
    plan = flash(B4, "u0", images["combined"], transport=RecordingTransport(), dry_run=True,
                 erase=True, echo=lines.append)
    assert plan.workdir is not None and not plan.workdir.exists()
    base = f"{ESPTOOL} --chip esp32 --port /dev/ttyUSB0"
    assert lines[-2:] == [f"{base} erase-flash", f"{base} write-flash 0x1000 {images['combined']}"]


def _refused(board: Board, port: str, firmware: Path, match: str, **kw: bool) -> None:
    t = RecordingTransport()
    with pytest.raises(MpotaError, match=match) as info:
        flash(board, port, firmware, transport=t, echo=lambda s: None, **kw)
    assert "\n" not in str(info.value)
    assert t.calls == []


def test_refusals_before_anything_is_written(images: dict[str, Path], port: str, tmp_path: Path) -> None:
    _refused(B4, port, images["app_s3"], r"app_s3.bin is for esp32s3, but board esp32-generic-4mb is esp32")
    _refused(B8, port, images["combined"],
             r"combined.bin is for esp32, but board esp32s3-generic-8mb is esp32s3")
    _refused(B4, port, images["junk"], r"junk.bin is not an app image for esp32")
    _refused(B4, port, images["big"], r"big.bin is \d+ bytes \(0x[0-9a-f]+\), too big for ota_0 of board "
                                      r"esp32-generic-4mb \(0x180000 bytes\)")
    _refused(B4, port, images["combined_plain"], r"combined_plain.bin: its partition table \(no OTA slots\) "
                                                 r"differs from board esp32-generic-4mb's \(entry 1: nvs")
    _refused(B4, port, images["small_slots"], r"small_slots.bin: its partition table \(2 OTA slots\) differs "
                                              r"from board esp32-generic-4mb's \(entry 4: ota_0 app/ota_0 "
                                              r"0x10000\+0x100000 vs ota_0 app/ota_0 0x10000\+0x180000\)")
    _refused(B4, port, images["app"], r"--erase would erase the bootloader", erase=True)
    _refused(B4, port, tmp_path / "missing.bin", r"cannot read image .*missing.bin: No such file")
    _refused(B4, str(tmp_path / "ttyUSB9"), images["app"], r"serial port .*ttyUSB9 does not exist")
    _refused(B4, str(images["junk"]), images["app"], r"junk.bin is not a serial port")


def test_busy_port_is_refused(images: dict[str, Path], port: str) -> None:
    fd = os.open(port, os.O_RDWR | os.O_NOCTTY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what pyserial's exclusive=True does
        _refused(B4, port, images["app"], r"serial port /dev/pts/\d+ is busy")
    finally:
        os.close(fd)


def test_board_without_ota_is_refused(images: dict[str, Path], port: str, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "boards"
    d.mkdir()
    doc = json.loads((REPO / "boards" / "esp32-generic-4mb.json").read_text())
    doc.update(name="plain", partitions="plain.csv")
    (d / "plain.json").write_text(json.dumps(doc))
    (d / "plain.csv").write_text(NON_OTA_CSV)
    monkeypatch.setenv("MPOTA_BOARDS_DIR", str(d))
    _refused(load_board("plain"), port, images["app"], r"board plain: its partition table has no OTA slots")


def test_esptool_failure_is_one_line(images: dict[str, Path], port: str) -> None:
    t = RecordingTransport(lambda argv: CommandResult(tuple(argv), 2))
    with pytest.raises(FlashError, match=r"^esptool failed while erasing \(exit status 2\)"):
        flash(B4, port, images["combined"], transport=t, erase=True, echo=lambda s: None)
    assert len(t.calls) == 1  # stopped after the failed erase



def test_real_esptool_accepts_our_commands(images: dict[str, Path], tmp_path: Path) -> None:
    # Plan against a socket:// port nobody listens on: esptool parses every argument (a bad one
    # prints "Usage:"), then fails to connect.
    url = f"socket://127.0.0.1:{free_port()}"
    plans = [flash(B4, url, images["app"], transport=RecordingTransport(), dry_run=True, baud=115200,
                   workdir=tmp_path, echo=lambda s: None),
             flash(B4, url, images["combined"], transport=RecordingTransport(), dry_run=True, erase=True,
                   workdir=tmp_path, echo=lambda s: None)]
    for plan in plans:
        for cmd in plan.commands:
            r = ProcessTransport().run(cmd, capture=True, timeout=60)
            out = r.stdout + r.stderr
            assert r.returncode != 0
            assert "Usage:" not in out and "No such command" not in out, out
            assert "Could not open socket://127.0.0.1" in out, out



def test_cli_dry_run_and_errors(images: dict[str, Path], tmp_path: Path) -> None:
    r = run_cli("flash", "--port", "/dev/ttyUSB7", "--board", "esp32-generic-4mb", str(images["combined"]),
                "--dry-run", "--erase", "--baud", "921600")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-2:] == [
        f"{ESPTOOL} --chip esp32 --port /dev/ttyUSB7 --baud 921600 erase-flash",
        f"{ESPTOOL} --chip esp32 --port /dev/ttyUSB7 --baud 921600 write-flash 0x1000 {images['combined']}"]
    r = run_cli("flash", "--port", "/dev/ttyUSB7", "--board", "esp32-wroom-9", str(images["app"]))
    assert r.returncode == 1
    assert r.stderr.startswith("mpota: error: unknown board 'esp32-wroom-9' (known: esp32-generic-4mb, ")
    assert r.stderr.count("\n") == 1
    r = run_cli("flash", "--port", str(tmp_path / "nope"), "--board", "esp32-generic-4mb", str(images["app"]))
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == (f"mpota: error: serial port {tmp_path / 'nope'} does not exist (is the board "
                        f"plugged in? try: ls /dev/ttyUSB* /dev/ttyACM*)\n")


def test_full_flash_dump_from_zero_is_written_at_zero(images: dict[str, Path], port: str,
                                                       tmp_path: Path) -> None:
    # A dump read from 0x0 (esptool read-flash 0 ...) starts with the 0x1000 of padding before
    # the ESP32 bootloader: it must go back at 0x0, not at the bootloader offset.
    dump = tmp_path / "dump.bin"
    dump.write_bytes(b"\xff" * 0x1000 + images["combined"].read_bytes())
    t = RecordingTransport(port_check=lambda p: None)
    flash(B4, port, dump, transport=t, echo=lambda s: None)
    assert t.calls[-1][-2:] == ["0x0", str(dump)]


def test_stock_firmware_is_flashed_with_a_note_about_its_version(images: dict[str, Path], port: str) -> None:
    lines: list[str] = []
    flash(B4, port, images["stock"], transport=RecordingTransport(), echo=lines.append)
    assert any("its app carries no version" in ln and "mpota deploy" in ln for ln in lines), lines
    lines.clear()
    flash(B4, port, images["combined"], transport=RecordingTransport(), echo=lines.append)
    assert not any("carries no version" in ln for ln in lines), lines
