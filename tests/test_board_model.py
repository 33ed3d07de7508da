"""The simulated ESP32 board (sim/fakes + sim/board.py) behaves like the real one.

Each test runs device-side scripts on the board under CPython and under the MicroPython
unix port (the ``interp`` fixture) and checks the outcome from outside: flash bytes read
by the harness, otadata entries, NVS contents, how the run ended.
"""

from __future__ import annotations

import hashlib
import json
import struct
from typing import Any

import pytest

from host_tools.imagebuild import build_app_image
from sim.board import DEEPSLEEP_RESET, PWRON_RESET, SOFT_RESET, WDT_RESET, RunResult, SimBoard
from sim.images import build_sim_image

OTA_0 = 0x10000
OTA_1 = 0x190000
SLOT = 0x180000

PRELUDE = """
import esp32, machine, json
P = esp32.Partition
def out(**kw):
    print("R " + json.dumps(kw))
def err(fn, *args):
    try:
        fn(*args)
    except OSError as e:
        return e.args[0]
    return None
"""


def run(board: SimBoard, interp: str, body: str, **kw: Any) -> tuple[RunResult, dict[str, Any]]:
    res = board.run(PRELUDE + body, interp, **kw)
    found: dict[str, Any] = {}
    for line in res.stdout.splitlines():
        if line.startswith("R "):
            found.update(json.loads(line[2:]))
    return res, found


def ok(res: RunResult, kind: str = "exit") -> None:
    assert res.kind == kind, str(res)


# ---- NOR flash semantics ----

def test_write_over_unerased_data_keeps_the_and(sim_board: SimBoard, interp: str) -> None:
    res, r = run(sim_board, interp, """
nxt = P(P.RUNNING).get_next_update()
a = bytearray(4096)
for i in range(4096):
    a[i] = (i * 7) & 0xFF
nxt.writeblocks(0, a)               # erase + program
b = bytearray(4096)
for i in range(4096):
    b[i] = (i * 13 + 5) & 0xFF
nxt.writeblocks(0, b, 0)            # program over unerased data, no erase
back = bytearray(4096)
nxt.readblocks(0, back)
out(back=bytes(back).hex())
""")
    ok(res)
    a = bytes((i * 7) & 0xFF for i in range(4096))
    b = bytes((i * 13 + 5) & 0xFF for i in range(4096))
    expect = bytes(x & y for x, y in zip(a, b, strict=True))
    assert expect != b and expect != a
    assert bytes.fromhex(r["back"]) == expect
    assert sim_board.read(OTA_1, 4096) == expect  # what is in flash, read from outside
    kinds = [k for k, _, _ in res.log[res.boot_ops:]]
    assert kinds == ["erase", "write", "write"]


def test_offset_write_never_erases_and_plain_write_erases_first(sim_board: SimBoard, interp: str) -> None:
    res, r = run(sim_board, interp, """
nxt = P(P.RUNNING).get_next_update()
nxt.writeblocks(1, bytes(4096))            # all zero
nxt.writeblocks(1, b"\\xff" * 16, 100)     # offset write of 0xFF: cannot set bits
x = bytearray(16)
nxt.readblocks(1, x, 100)
out(after_offset=bytes(x).hex())
nxt.writeblocks(1, b"\\xa5" * 4096)        # plain write: erase, then program
nxt.readblocks(1, x, 100)
out(after_plain=bytes(x).hex())
""")
    ok(res)
    assert r["after_offset"] == "00" * 16
    assert r["after_plain"] == "a5" * 16
    ops = res.log[res.boot_ops:]
    assert ops == [("erase", OTA_1 + 4096, 4096), ("write", OTA_1 + 4096, 4096),
                   ("write", OTA_1 + 4096 + 100, 16),
                   ("erase", OTA_1 + 4096, 4096), ("write", OTA_1 + 4096, 4096)]
    assert sim_board.read(OTA_1 + 4096, 4096) == b"\xa5" * 4096


def test_ioctl_and_explicit_erase(sim_board: SimBoard, interp: str) -> None:
    res, r = run(sim_board, interp, """
nxt = P("ota_1")
nxt.writeblocks(3, bytes(4096))
out(count=nxt.ioctl(4, 0), size=nxt.ioctl(5, 0), init=nxt.ioctl(1, 0), sync=nxt.ioctl(3, 0),
    erase=nxt.ioctl(6, 3))
b = bytearray(8)
nxt.readblocks(3, b)
out(erased=bytes(b).hex(), info=list(nxt.info()))
""")
    ok(res)
    assert r["count"] == SLOT // 4096 and r["size"] == 4096 and r["init"] == 0 and r["sync"] == 0
    assert r["erase"] == 0 and r["erased"] == "ff" * 8
    assert r["info"] == [0, 0x11, OTA_1, SLOT, "ota_1", False]
    assert sim_board.read(OTA_1 + 3 * 4096, 4096) == b"\xff" * 4096


def test_misaligned_and_out_of_range_access_raise(sim_board: SimBoard, interp: str) -> None:
    res, r = run(sim_board, interp, """
nxt = P("ota_1")
last = nxt.ioctl(4, 0) - 1
out(short_plain_write=err(nxt.writeblocks, 0, bytes(100)),
    read_past_end=err(nxt.readblocks, last, bytearray(8192)),
    read_after_end=err(nxt.readblocks, last + 2, bytearray(16)),
    write_past_end=err(nxt.writeblocks, last, bytes(4096), 4000),
    erase_past_end=err(nxt.ioctl, 6, last + 1),
    negative=err(nxt.readblocks, -1, bytearray(16)))
try:
    P("no-such-label")
except OSError as e:
    out(missing=e.args[0])
try:
    P(7)
except ValueError:
    out(bad_id=True)
""")
    ok(res)
    assert r == {
        "short_plain_write": -0x104, "read_past_end": -0x104, "read_after_end": -0x102,
        "write_past_end": -0x104, "erase_past_end": -0x104, "negative": -0x102,
        "missing": 2, "bad_id": True,
    }
    assert res.ops == res.boot_ops  # nothing reached the flash
    assert sim_board.read(OTA_1, 4096) == b"\xff" * 4096


def test_find_and_info_follow_the_partition_table(sim_board: SimBoard, interp: str) -> None:
    res, r = run(sim_board, interp, """
out(apps=[p.info()[4] for p in P.find(P.TYPE_APP)],
    data=[p.info()[4] for p in P.find(P.TYPE_DATA)],
    ota1=[p.info()[4] for p in P.find(P.TYPE_APP, 0x11)],
    nvs=[list(p.info()) for p in P.find(P.TYPE_DATA, label="nvs")],
    running=P(P.RUNNING).info()[4], boot=P(P.BOOT).info()[4],
    next=P(P.RUNNING).get_next_update().info()[4], after1=P("ota_1").get_next_update().info()[4])
""")
    ok(res)
    assert r["apps"] == ["ota_0", "ota_1"] and r["ota1"] == ["ota_1"]
    assert r["data"] == ["nvs", "otadata", "phy_init", "vfs"]
    assert r["nvs"] == [[1, 2, 0x9000, 0x4000, "nvs", False]]
    assert (r["running"], r["boot"], r["next"], r["after1"]) == ("ota_0", "ota_0", "ota_1", "ota_0")


# ---- set_boot validates the image like esp_image_verify ----

def _flip(image: bytes, pos: int) -> bytes:
    b = bytearray(image)
    b[pos] ^= 0x01
    return bytes(b)


def _bad_checksum_good_hash(image: bytes) -> bytes:
    body = bytearray(image[:-32])
    body[100] ^= 0x01  # segment data changes, so the XOR checksum no longer matches
    return bytes(body) + hashlib.sha256(body).digest()


BAD_IMAGES = {
    "bad_checksum": (lambda img: _bad_checksum_good_hash(img), "checksum mismatch"),
    "bad_sha256": (lambda img: _flip(img, len(img) - 5), "SHA-256 mismatch"),
    "wrong_chip_id": (lambda img: build_app_image("esp32s3", "2.0.0"), "chip id 9, this chip is 0"),
    "truncated": (lambda img: img[: len(img) // 2], "segment 1 has invalid length 4294967295"),
    "truncated_tail": (lambda img: img[:-40], "checksum mismatch"),
    "missing_hash": (lambda img: img[:-32], "SHA-256 mismatch"),
    "bad_magic": (lambda img: b"\x00" + img[1:], "bad magic"),
    "too_big_for_slot": (lambda img: _huge_segment(img), "extends past the partition end"),
}


def _huge_segment(image: bytes) -> bytes:
    b = bytearray(image)
    struct.pack_into("<I", b, 24 + 4, 0x200000)  # first segment claims 2 MiB
    return bytes(b)


@pytest.mark.parametrize("case", sorted(BAD_IMAGES))
def test_set_boot_refuses_a_bad_image_and_changes_nothing(sim_board: SimBoard, interp: str,
                                                          case: str) -> None:
    ok(sim_board.run("pass", interp))  # first boot writes otadata for the factory image
    before = sim_board.otadata()
    make, reason = BAD_IMAGES[case]
    good = build_app_image("esp32", "2.0.0")
    sim_board.flash_slot("ota_1", make(good))
    res, r = run(sim_board, interp, """
out(err=err(P("ota_1").set_boot), boot=P(P.BOOT).info()[4])
""")
    ok(res)
    assert r == {"err": -5379, "boot": "ota_0"}
    assert any(reason in line for line in res.boot_log), res.boot_log
    assert res.ops == 0  # not one flash write or erase
    assert sim_board.otadata() == before
    assert sim_board.next_boot_slot() == "ota_0"


def test_set_boot_accepts_a_genuine_image_and_writes_otadata(sim_board: SimBoard, interp: str) -> None:
    sim_board.flash_slot("ota_1", build_app_image("esp32", "2.0.0", secure_version=3))
    res, r = run(sim_board, interp, """
out(err=err(P("ota_1").set_boot), boot=P(P.BOOT).info()[4], running=P(P.RUNNING).info()[4])
""")
    ok(res)
    assert r == {"err": None, "boot": "ota_1", "running": "ota_0"}
    od = sim_board.otadata()
    assert (od[0]["seq"], od[0]["state_name"]) == (1, "VALID")  # written by the first boot
    assert (od[1]["seq"], od[1]["state_name"], od[1]["slot"]) == (2, "NEW", "ota_1")
    assert res.log[res.boot_ops:] == [("erase", 0xE000, 4096), ("write", 0xE000, 32)]


def test_otadata_entry_bytes_match_esp_idf_layout(sim_board: SimBoard, interp: str) -> None:
    ok(sim_board.run("pass", interp))
    # esp_ota_select_entry_t {ota_seq, seq_label[20], ota_state, crc}; crc = crc32(seq) as
    # ESP-IDF's otatool computes it: 0x4743989a for seq 1 (fixed vector, not our code)
    assert sim_board.read(0xD000, 32) == struct.pack("<I20sII", 1, b"\xff" * 20, 2, 0x4743989A)
    assert sim_board.read(0xD000 + 32, 4096 - 32) == b"\xff" * (4096 - 32)
    assert sim_board.read(0xE000, 4096) == b"\xff" * 4096


def test_esp32s3_board_boots_its_image_and_refuses_an_esp32_one(make_board: Any, interp: str) -> None:
    board = make_board("esp32s3-generic-8mb", version="3.0.0")
    board.flash_slot("ota_1", build_app_image("esp32", "3.1.0"))
    res, r = run(board, interp, """
out(running=P(P.RUNNING).info()[4], size=P(P.RUNNING).info()[3], err=err(P("ota_1").set_boot),
    fw=esp32.sim_firmware()["version"])
""")
    ok(res)
    assert r == {"running": "ota_0", "size": 0x270000, "err": -5379, "fw": "3.0.0"}
    board.flash_slot("ota_1", build_app_image("esp32s3", "3.1.0"))
    res, r = run(board, interp, "out(err=err(P('ota_1').set_boot))\nmachine.reset()\n")
    ok(res, "reset")
    assert r == {"err": None}
    res, r = run(board, interp, "out(fw=esp32.sim_firmware()['version'], slot=P(P.RUNNING).info()[4])")
    assert r == {"fw": "3.1.0", "slot": "ota_1"}


# ---- trial boot and rollback ----

TRIAL = """
fw = esp32.sim_firmware()
out(slot=fw["slot"], version=fw["version"], cause=machine.reset_cause())
if ARG == "install":
    P("ota_1").set_boot()
    machine.reset()
if ARG == "confirm":
    P.mark_app_valid_cancel_rollback()
machine.reset()
"""


def _trial(board: SimBoard, interp: str, arg: str) -> tuple[RunResult, dict[str, Any]]:
    return run(board, interp, f"ARG = {arg!r}\n" + TRIAL)


def test_unconfirmed_trial_boot_rolls_back_on_the_next_reset(sim_board: SimBoard, interp: str) -> None:
    sim_board.flash_slot("ota_1", build_app_image("esp32", "2.0.0"))
    res, r = _trial(sim_board, interp, "install")
    ok(res, "reset")
    assert (r["slot"], r["version"], r["cause"]) == ("ota_0", "1.0.0", PWRON_RESET)
    assert sim_board.ota_state("ota_1") == "NEW"

    res, r = _trial(sim_board, interp, "none")  # trial boot; resets without confirming
    ok(res, "reset")
    assert (r["slot"], r["version"], r["cause"]) == ("ota_1", "2.0.0", SOFT_RESET)
    assert any("NEW -> PENDING_VERIFY" in line for line in res.boot_log)

    res, r = _trial(sim_board, interp, "none")
    assert (r["slot"], r["version"]) == ("ota_0", "1.0.0")
    assert any("PENDING_VERIFY -> ABORTED" in line for line in res.boot_log)
    assert sim_board.ota_state("ota_1") == "ABORTED"
    assert sim_board.next_boot_slot() == "ota_0"


def test_confirmed_trial_boot_stays(sim_board: SimBoard, interp: str) -> None:
    sim_board.flash_slot("ota_1", build_app_image("esp32", "2.0.0"))
    ok(_trial(sim_board, interp, "install")[0], "reset")
    res, r = _trial(sim_board, interp, "confirm")
    assert r["slot"] == "ota_1"
    assert sim_board.ota_state("ota_1") == "VALID"
    for _ in range(2):
        res, r = _trial(sim_board, interp, "none")
        ok(res, "reset")
        assert (r["slot"], r["version"]) == ("ota_1", "2.0.0")
    assert sim_board.ota_state("ota_1") == "VALID"


def test_power_cut_during_trial_also_rolls_back(sim_board: SimBoard, interp: str) -> None:
    sim_board.flash_slot("ota_1", build_app_image("esp32", "2.0.0"))
    ok(_trial(sim_board, interp, "install")[0], "reset")
    # the trial boot's bootloader writes PENDING_VERIFY (erase, write); the app then writes a
    # block: cut power before that write
    res, r = run(sim_board, interp, "P('ota_1').get_next_update().writeblocks(100, bytes(4096))\n", cut=4)
    ok(res, "powercut")
    assert res.slot == "ota_1" and res.boot_ops == 2
    res, r = run(sim_board, interp, "out(slot=P(P.RUNNING).info()[4], cause=machine.reset_cause())")
    assert r == {"slot": "ota_0", "cause": PWRON_RESET}


def test_crash_loop_firmware_rolls_back(sim_board: SimBoard, interp: str) -> None:
    sim_board.flash_slot("ota_1", build_sim_image("esp32", "2.0.0", flags="crash=boot,health=fail"))
    assert sim_board.firmware("ota_1")["flags"] == {"crash": "boot", "health": "fail"}
    ok(_trial(sim_board, interp, "install")[0], "reset")
    script = PRELUDE + "out(slot=P(P.RUNNING).info()[4], cause=machine.reset_cause())"
    runs = sim_board.boot_until_settled(script, interpreter=interp)
    assert [x.kind for x in runs] == ["panic", "exit"]
    assert "Guru Meditation" in runs[0].stdout
    assert runs[1].slot == "ota_0" and runs[1].reset_cause == SOFT_RESET
    assert sim_board.ota_state("ota_1") == "ABORTED"


def test_without_rollback_support_the_new_image_is_kept(make_board: Any, interp: str) -> None:
    board = make_board(rollback_supported=False)
    board.flash_slot("ota_1", build_app_image("esp32", "2.0.0"))
    res, r = run(board, interp, "out(err=err(P.mark_app_valid_cancel_rollback))\nP('ota_1').set_boot()\n")
    ok(res)
    assert r == {"err": -261}
    assert board.ota_state("ota_1") == "UNDEFINED"
    for _ in range(2):
        res, r = run(board, interp, "out(slot=P(P.RUNNING).info()[4])\nmachine.reset()\n")
        assert r == {"slot": "ota_1"}


def test_bootloader_never_starts_an_image_that_fails_verification(sim_board: SimBoard, interp: str) -> None:
    image = build_app_image("esp32", "2.0.0")
    sim_board.flash_slot("ota_1", image)
    ok(_trial(sim_board, interp, "install")[0], "reset")
    sim_board.flash_slot("ota_1", _flip(image, 0x12000))  # a bit rots after set_boot()
    res, r = run(sim_board, interp, "out(slot=P(P.RUNNING).info()[4], fw=esp32.sim_firmware()['version'])")
    ok(res)
    assert r == {"slot": "ota_0", "fw": "1.0.0"}
    assert "ota_1 is not bootable: checksum mismatch (computed 0x" in "\n".join(res.boot_log)
    # as ESP-IDF: the entry was marked PENDING_VERIFY before the load failed; the next boot aborts it
    assert sim_board.ota_state("ota_1") == "PENDING_VERIFY"
    ok(sim_board.run("pass", interp))
    assert sim_board.ota_state("ota_1") == "ABORTED"


def test_no_bootable_app(sim_board: SimBoard, interp: str) -> None:
    sim_board.erase_partition("ota_0")
    res = sim_board.run("print('never')", interp)
    ok(res, "noboot")
    assert "never" not in res.stdout and "No bootable app" in res.stdout


# ---- power cuts ----

CUT_SCRIPT = """
nxt = P("ota_1")
nxt.writeblocks(0, b"\\x5a" * 4096)           # erase, write
nxt.writeblocks(0, b"\\x0f" * 8, 100)         # write over 0x5a: 0x0a
nv = esp32.NVS("t")
nv.set_i32("k", 7)
nv.commit()
print("done")
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_power_cut_leaves_exactly_the_bytes_it_should(sim_board: SimBoard, interp: str, when: str) -> None:
    ok(sim_board.run("pass", interp))  # boot once: later boots make no otadata writes
    pattern = bytes(range(256)) * 16
    sim_board.flash_slot("ota_1", pattern)

    dry = sim_board.run(PRELUDE + CUT_SCRIPT, interp)
    ok(dry)
    assert dry.boot_ops == 0
    assert dry.log == [("erase", OTA_1, 4096), ("write", OTA_1, 4096), ("write", OTA_1 + 100, 8),
                       ("commit", 0x9000, 64)]
    erased = b"\xff" * 4096
    written = b"\x5a" * 4096
    anded = written[:100] + b"\x0a" * 8 + written[108:]
    # flash contents and NVS after power is cut before/after each operation
    expect = {
        ("before", 1): (pattern, {}), ("after", 1): (erased, {}),
        ("before", 2): (erased, {}), ("after", 2): (written, {}),
        ("before", 3): (written, {}), ("after", 3): (anded, {}),
        ("before", 4): (anded, {}), ("after", 4): (anded, {"t": {"k": 7}}),
    }
    for op in range(1, 5):
        sim_board.flash_slot("ota_1", pattern)
        (sim_board.simdir / "nvs.json").unlink(missing_ok=True)
        res = sim_board.run(PRELUDE + CUT_SCRIPT, interp, cut=(op, when))
        ok(res, "powercut")
        assert res.ops == op and "done" not in res.stdout
        data, nvs = expect[(when, op)]
        assert sim_board.read(OTA_1, 4096) == data, (when, op)
        assert sim_board.nvs() == nvs
        # the board boots again from what is on flash
        check = ("b = bytearray(4096)\nP('ota_1').readblocks(0, b)\n"
                 f"out(same=bytes(b) == bytes.fromhex({data.hex()!r}), cause=machine.reset_cause())\n")
        res, r = run(sim_board, interp, check)
        ok(res)
        assert r == {"same": True, "cause": PWRON_RESET}


# ---- NVS ----

def test_nvs_semantics(sim_board: SimBoard, interp: str) -> None:
    res, r = run(sim_board, interp, """
nv = esp32.NVS("app")
out(missing_i32=err(nv.get_i32, "nope"), missing_blob=err(nv.get_blob, "nope", bytearray(4)),
    erase_missing=err(nv.erase_key, "nope"))
nv.set_i32("n", -5)
nv.set_blob("b", b"\\x01\\x02\\x03")
nv.set_blob("s", "text")
small = bytearray(2)
big = bytearray(8)
out(n=nv.get_i32("n"), blen=nv.get_blob("b", big), b=bytes(big[:3]).hex(),
    too_small=err(nv.get_blob, "b", small), type_is_part_of_the_key=err(nv.get_i32, "b"))
nv.commit()
nv.set_i32("lost", 1)          # never committed
other = esp32.NVS("other")
out(other_ns=err(other.get_i32, "n"))
machine.reset()
""")
    ok(res, "reset")
    assert r == {"missing_i32": -0x1102, "missing_blob": -0x1102, "erase_missing": -0x1102, "n": -5,
                 "blen": 3, "b": "010203", "too_small": -0x110C, "type_is_part_of_the_key": -0x1102,
                 "other_ns": -0x1102}
    assert sim_board.nvs() == {"app": {"n": -5, "b": b"\x01\x02\x03", "s": b"text"}}
    res, r = run(sim_board, interp, """
nv = esp32.NVS("app")
out(lost=err(nv.get_i32, "lost"), n=nv.get_i32("n"))
nv.erase_key("n")
nv.commit()
out(after=err(nv.get_i32, "n"))
""")
    ok(res)
    assert r == {"lost": -0x1102, "n": -5, "after": -0x1102}
    assert sim_board.nvs() == {"app": {"b": b"\x01\x02\x03", "s": b"text"}}


def test_nvs_runs_out_of_space(sim_board: SimBoard, interp: str) -> None:
    res, r = run(sim_board, interp, """
nv = esp32.NVS("big")
nv.set_blob("a", bytes(4000))
nv.set_blob("b", bytes(4000))
out(third=err(nv.set_blob, "c", bytes(4000)), long_key=err(nv.set_i32, "k" * 16, 1))
""")
    ok(res)
    assert r == {"third": -0x1105, "long_key": -0x1109}


# ---- machine, network, filesystem ----

def test_reset_causes_and_machine_basics(sim_board: SimBoard, interp: str) -> None:
    body = "out(cause=machine.reset_cause(), uid=machine.unique_id().hex(), freq=machine.freq())\n"
    res, r = run(sim_board, interp, body + "machine.reset()\nprint('not reached')\n")
    ok(res, "reset")
    assert res.returncode == 85 and "not reached" not in res.stdout
    assert r["cause"] == PWRON_RESET and len(r["uid"]) == 12 and r["freq"] == 160000000
    res, r = run(sim_board, interp, body + "P('ota_1').writeblocks(0, bytes(4096))\n", cut=1)
    ok(res, "powercut")
    assert res.returncode == 86 and r["cause"] == SOFT_RESET
    res, r = run(sim_board, interp, body + "machine.deepsleep(10)\n")
    ok(res, "deepsleep")
    assert r["cause"] == PWRON_RESET and res.rebooted
    res, r = run(sim_board, interp, body)
    assert r["cause"] == DEEPSLEEP_RESET


def test_swallowed_reset_does_not_let_code_touch_flash(sim_board: SimBoard, interp: str) -> None:
    res, r = run(sim_board, interp, """
try:
    machine.reset()
except BaseException:
    pass
out(still_running=True)
try:
    P("ota_1").writeblocks(0, bytes(4096))
except BaseException:
    pass
""")
    ok(res, "reset")
    assert sim_board.read(OTA_1, 16) == b"\xff" * 16
    assert res.ops == res.boot_ops


def test_watchdog_not_fed_resets_the_board(sim_board: SimBoard, interp: str) -> None:
    res, r = run(sim_board, interp, """
import time
wdt = machine.WDT(timeout=300)
wdt.feed()
time.sleep_ms(100)
wdt.feed()
out(fed=True)
time.sleep_ms(450)
wdt.feed()
print("not reached")
""")
    ok(res, "watchdog")
    assert r == {"fed": True} and "not reached" not in res.stdout
    res, r = run(sim_board, interp, "out(cause=machine.reset_cause())")
    assert r == {"cause": WDT_RESET}


def test_watchdog_catches_a_hung_app(sim_board: SimBoard, interp: str) -> None:
    hang = PRELUDE + "wdt = machine.WDT(timeout=200)\nwhile True:\n    pass\n"
    res = sim_board.run(hang, interp, timeout=20)
    ok(res, "watchdog")
    assert res.elapsed < 5
    res, r = run(sim_board, interp, "out(cause=machine.reset_cause())")
    assert r == {"cause": WDT_RESET}


def test_hang_without_watchdog_is_a_timeout(sim_board: SimBoard, interp: str) -> None:
    res = sim_board.run("while True:\n    pass\n", interp, timeout=1)
    ok(res, "timeout")


def test_wifi_up_and_down(sim_board: SimBoard, interp: str) -> None:
    body = """
import network, socket
w = network.WLAN(network.STA_IF)
addr = ("127.0.0.1", 9)
try:
    addr = socket.getaddrinfo("127.0.0.1", 9)[0][-1]
    dns = "ok"
except OSError as e:
    dns = e.args[0]
s = socket.socket()
try:
    s.connect(addr)
    conn = "ok"
except OSError as e:
    conn = e.args[0]
s.close()
out(up=w.isconnected(), ip=w.ifconfig()[0], status=w.status(), dns=dns, conn=conn)
"""
    res, r = run(sim_board, interp, body, wifi="down")
    ok(res)
    assert r == {"up": False, "ip": "0.0.0.0", "status": 201, "dns": -202, "conn": 113}
    res, r = run(sim_board, interp, body)
    ok(res)
    assert r["up"] is True and r["ip"] == "10.0.0.2" and r["status"] == 1010
    assert r["dns"] == "ok" and r["conn"] != 113


def test_filesystem_root_is_the_board_fs(sim_board: SimBoard, interp: str) -> None:
    res, r = run(sim_board, interp, """
import os, simboot
with open(simboot.ROOT + "/note.txt", "w") as f:
    f.write("hi")
os.rename(simboot.ROOT + "/note.txt", simboot.ROOT + "/note2.txt")
out(ls=sorted(os.listdir(simboot.ROOT + "/")), cfg=simboot.CONFIG)
""")
    ok(res)
    assert r["ls"] == ["lib", "note2.txt"]
    assert (sim_board.fs / "note2.txt").read_text() == "hi"
    assert r["cfg"].endswith("/mpota.json") and (interp == "cpython" or r["cfg"] == "/mpota.json")


def test_uncaught_exception_is_a_crash(sim_board: SimBoard, interp: str) -> None:
    res = sim_board.run("raise ValueError('boom')", interp)
    ok(res, "crash")
    assert res.returncode == 1 and "boom" in res.stderr and not res.rebooted


def test_device_package_is_importable_from_lib(make_board: Any, interp: str) -> None:
    board = make_board(device="mpy" if interp == "micropython" else "copy")
    res, r = run(board, interp, "import mpota\nout(v=mpota.__version__, f=mpota.__file__)")
    ok(res)
    assert r["v"]
    assert r["f"].endswith(".mpy" if interp == "micropython" else "__init__.py")


def test_flash_operations_use_no_micropython_heap(sim_board: SimBoard) -> None:
    # On a board Partition and WDT are C: reading and writing blocks costs the app no heap.
    # The fakes must not either, or heap floors measured on the simulator would be wrong.
    res, r = run(sim_board, "micropython", """
import micropython, gc
p = P("ota_1")
buf = bytearray(4096)
wdt = machine.WDT(timeout=5000)
def work(p, buf, wdt):
    i = 0
    while i < 16:
        p.writeblocks(i, buf)
        p.readblocks(i, buf)
        p.writeblocks(i, buf, 0)
        p.readblocks(i, buf, 100)
        p.ioctl(6, i)
        wdt.feed()
        i += 1
work(p, buf, wdt)
gc.collect()
micropython.heap_lock()
try:
    work(p, buf, wdt)
    locked = "ok"
except MemoryError:
    locked = "allocated"
micropython.heap_unlock()
import simboot
out(locked=locked, board_heap=simboot.BOARD_HEAP)
""", heapsize="120k")
    ok(res)
    assert r["locked"] == "ok"
    assert 0 < r["board_heap"] < 80000
    assert res.ops == 2 + 2 * 16 * 4  # boot otadata write, then erase+write+write+erase per round
