# The simulated ESP32 board's core: NOR flash kept in <simdir>/flash.bin, the operation
# counter with power-cut injection, the otadata partition (ESP-IDF esp_ota_select_entry_t),
# app image verification (ESP-IDF esp_image_verify) and the second-stage bootloader's slot
# choice with rollback. Runs under CPython and under the MicroPython unix port.
#
# flash.bin holds the bitwise complement of the flash contents, so a sparse file (holes
# read as 0x00) is erased flash (0xFF) and a 4 MiB board costs only what was written.
import struct
import sys

try:
    from micropython import const
except ImportError:  # CPython, loaded by sim/board.py without the fakes on the import path
    def const(x):
        return x

MP = sys.implementation.name == "micropython"

SECTOR = const(4096)

# Exit codes of a run (the harness in sim/board.py maps them to an exit kind).
EXIT_OK = const(0)
EXIT_CRASH = const(1)      # uncaught exception in the script: the board sits in the REPL
EXIT_RESET = const(85)     # machine.reset()
EXIT_POWERCUT = const(86)  # injected power cut
EXIT_WATCHDOG = const(87)  # WDT not fed in time (caught at a call into the board)
EXIT_PANIC = const(88)     # firmware crash (sim flag crash=boot, or panic()): the chip resets itself
EXIT_NOBOOT = const(89)    # no bootable app: a real bootloader resets forever
EXIT_DEEPSLEEP = const(90)  # machine.deepsleep(): wakes with DEEPSLEEP_RESET

KINDS = {
    EXIT_OK: "exit", EXIT_CRASH: "crash", EXIT_RESET: "reset", EXIT_POWERCUT: "powercut",
    EXIT_WATCHDOG: "watchdog", EXIT_PANIC: "panic", EXIT_NOBOOT: "noboot", EXIT_DEEPSLEEP: "deepsleep",
}

# operation kinds in ops.log
OP_CODES = {"write": 1, "erase": 2, "commit": 3, "file": 4}  # file: simfs, with run.json fs_cuts

# esp_err_t values. MicroPython's check_esp_err raises OSError(-err, esp_err_to_name(err)).
ESP_FAIL = const(-1)
ESP_ERR_INVALID_ARG = const(0x102)
ESP_ERR_INVALID_STATE = const(0x103)
ESP_ERR_INVALID_SIZE = const(0x104)
ESP_ERR_NOT_FOUND = const(0x105)
ESP_ERR_NVS_NOT_FOUND = const(0x1102)
ESP_ERR_NVS_TYPE_MISMATCH = const(0x1103)
ESP_ERR_NVS_NOT_ENOUGH_SPACE = const(0x1105)
ESP_ERR_NVS_INVALID_NAME = const(0x1106)
ESP_ERR_NVS_KEY_TOO_LONG = const(0x1109)
ESP_ERR_NVS_INVALID_LENGTH = const(0x110C)
ESP_ERR_NVS_VALUE_TOO_LONG = const(0x110E)
ESP_ERR_OTA_VALIDATE_FAILED = const(0x1503)

_NAMES = {
    ESP_FAIL: "ESP_FAIL", ESP_ERR_INVALID_ARG: "ESP_ERR_INVALID_ARG",
    ESP_ERR_INVALID_STATE: "ESP_ERR_INVALID_STATE", ESP_ERR_INVALID_SIZE: "ESP_ERR_INVALID_SIZE",
    ESP_ERR_NOT_FOUND: "ESP_ERR_NOT_FOUND", ESP_ERR_NVS_NOT_FOUND: "ESP_ERR_NVS_NOT_FOUND",
    ESP_ERR_NVS_TYPE_MISMATCH: "ESP_ERR_NVS_TYPE_MISMATCH",
    ESP_ERR_NVS_NOT_ENOUGH_SPACE: "ESP_ERR_NVS_NOT_ENOUGH_SPACE",
    ESP_ERR_NVS_INVALID_NAME: "ESP_ERR_NVS_INVALID_NAME",
    ESP_ERR_NVS_KEY_TOO_LONG: "ESP_ERR_NVS_KEY_TOO_LONG",
    ESP_ERR_NVS_INVALID_LENGTH: "ESP_ERR_NVS_INVALID_LENGTH",
    ESP_ERR_NVS_VALUE_TOO_LONG: "ESP_ERR_NVS_VALUE_TOO_LONG",
    ESP_ERR_OTA_VALIDATE_FAILED: "ESP_ERR_OTA_VALIDATE_FAILED",
}


def esp_error(code):
    return OSError(-code, _NAMES.get(code, "ESP_ERR_0x%x" % code))


# ---- host files (outside the board's filesystem) ----
# On MicroPython the simulator remounts "/" onto <simdir>/fs; host paths then go through an
# unrooted VfsPosix object kept from before the remount (simboot sets RAW).
RAW = None


def hopen(path, mode):
    if RAW is not None:
        return RAW.open(path, mode)
    if not MP and mode in ("r+b", "rb", "wb"):
        return open(path, mode, buffering=0)  # unbuffered: a kill -9 loses nothing written
    return open(path, mode)


def hrename(src, dst):
    if RAW is not None:
        RAW.rename(src, dst)
    elif MP:
        import os
        os.rename(src, dst)
    else:
        import os
        os.replace(src, dst)


def hremove(path):
    try:
        if RAW is not None:
            RAW.remove(path)
        else:
            import os
            os.remove(path)
    except OSError:
        pass


def hread_json(path, default=None):
    import json
    try:
        f = hopen(path, "r")
    except OSError:
        return default
    try:
        return json.loads(f.read())
    finally:
        f.close()


# Write a host file with write(f, obj): temp file + rename, the file is either the old or the new one.
def hwrite(path, write, obj):
    tmp = path + ".tmp"
    f = hopen(tmp, "w")
    try:
        write(f, obj)
    finally:
        f.close()
    hrename(tmp, path)


def _json_to(f, obj):
    import json
    f.write(json.dumps(obj))


def hwrite_json(path, obj):
    hwrite(path, _json_to, obj)


# ---- the run: operation counter, power cuts, how the run ends ----
RUN = None  # this boot's Run, set by simstart


# This boot's Run, for the esp32/machine/network fakes: they only work inside a simulated boot.
def current(module):
    r = RUN
    if r is None:
        raise RuntimeError(module + " fake used outside the simulated board (run sim/fakes/simboot.py)")
    r.alive()
    return r


class Run:
    # One per boot (simstart creates it); sim/board.py inspects flash without one. ``boot`` is
    # what the bootloader phase left in boot.json when it ran in a process of its own.
    def __init__(self, simdir, cfg, run, boot=None):
        self.simdir = simdir
        self.cfg = cfg
        boot = boot or {}
        self.ops = boot.get("ops", 0)
        self.boot_ops = self.ops
        # the operation log goes straight to a file, 9 bytes per operation (<BII: kind, address,
        # length): constant RAM however long the run, and no heap use per operation
        self.logf = hopen(simdir + "/ops.log", "ab" if boot else "wb")
        self._rec = bytearray(9)
        self.last = None
        self.boot_log = boot.get("boot_log", [])
        cut = run.get("cut") or None
        self.cut_op = cut["op"] if cut else -1
        self.cut_after = bool(cut) and cut.get("when", "before") == "after"
        self.fs_cuts = run.get("fs_cuts")  # board paths whose file operations count (simfs)
        self.dead = None
        self.running = boot.get("slot")    # label of the slot the bootloader started
        self.firmware = boot.get("firmware")  # dict from firmware_info()
        self.reset_cause = run.get("reset_cause", 1)
        self.wdt_ms = 0
        self.wdt_fed = 0
        self.wdt_mark = 0
        self.flash = None

    # Every flash write, sector erase and NVS commit is one operation, numbered from 1.
    def op(self, kind, addr, n):
        if self.dead is not None:
            raise SystemExit(self.dead)
        if self.wdt_ms:
            self.wdt_check()
        self.ops += 1
        struct.pack_into("<BII", self._rec, 0, OP_CODES[kind], addr, n)
        self.logf.write(self._rec)
        self.last = kind
        if self.ops == self.cut_op and not self.cut_after:
            self.end(EXIT_POWERCUT, "power cut before %s #%d at 0x%x+%d" % (kind, self.ops, addr, n))

    def op_done(self):
        if self.ops == self.cut_op and self.cut_after:
            self.end(EXIT_POWERCUT, "power cut after %s #%d" % (self.last, self.ops))

    def alive(self):
        if self.dead is not None:
            raise SystemExit(self.dead)
        if self.wdt_ms:
            self.wdt_check()

    def wdt_start(self, timeout_ms):
        import time
        self.wdt_ms = timeout_ms
        self.wdt_fed = time.ticks_ms()
        self.wdt_mark = self.wdt_fed
        self._wdt_file()

    def wdt_feed(self):
        import time
        self.wdt_check()
        now = time.ticks_ms()
        self.wdt_fed = now
        # tell the harness (it resets a board whose process hangs), at most 4 times a period
        if time.ticks_diff(now, self.wdt_mark) > self.wdt_ms // 4:
            self.wdt_mark = now
            self._wdt_file()

    def _wdt_file(self):
        f = hopen(self.simdir + "/wdt.json", "w")
        f.write('{"timeout_ms": %d}' % self.wdt_ms)
        f.close()

    def wdt_check(self):
        import time
        if time.ticks_diff(time.ticks_ms(), self.wdt_fed) > self.wdt_ms:
            self.end(EXIT_WATCHDOG, "watchdog: not fed for %d ms" % self.wdt_ms)

    # End the run as the hardware would: nothing after this point reaches flash.
    def end(self, code, why=""):
        if self.dead is None:
            self.dead = code
            try:
                self.logf.close()
            except Exception:
                pass
            self.write_result(code, why)
            try:
                sys.stdout.flush()
            except Exception:
                pass
        if not MP:
            import os
            try:
                sys.stderr.flush()
            except Exception:
                pass
            os._exit(code)
        raise SystemExit(code)

    def write_result(self, code, why=""):
        fw = self.firmware or {}
        hwrite_json(self.simdir + "/result.json", {
            "kind": KINDS.get(code, "crash"), "code": code, "why": why,
            "ops": self.ops, "boot_ops": self.boot_ops,
            "boot_log": self.boot_log,
            "slot": self.running, "version": fw.get("version"),
            "wdt": self.wdt_ms,
        })


# ---- NOR flash ----
# Byte loops over buffers, in place: viper on MicroPython (no heap use, ~13 us per 4 KiB),
# big-int arithmetic on CPython. The flash keeps two small buffers (a write's read-modify-write
# goes through _CHUNK bytes at a time, an erase writes _ZCHUNK zero bytes at a time) and one bit
# per sector: a whole-sector write into a sector erased in this run (the OTA stream's case) is
# the inverted data itself, so it is inverted in place in the caller's buffer, written, and
# inverted back, as fast as one copy. (On a board all of this is C and takes no app heap.)
_CHUNK = const(256)
_ZCHUNK = const(1024)

if MP:
    import micropython

    # buf := ~buf
    @micropython.viper
    def _inv(buf: ptr8, n: int):  # noqa: F821
        for i in range(n):
            buf[i] = buf[i] ^ 0xFF

    # stored := stored | ~data[off:off+n]  (stored holds ~flash, so flash := flash & data)
    @micropython.viper
    def _program(stored: ptr8, data: ptr8, off: int, n: int):  # noqa: F821
        for i in range(n):
            stored[i] = stored[i] | (data[off + i] ^ 0xFF)

    def _rd(f, buf, n):
        return f.readinto(buf, n)

    def _wr(f, buf, n):
        f.write(buf, n)
else:
    def _inv(buf, n):
        mask = (1 << (8 * n)) - 1
        buf[:n] = (int.from_bytes(buf[:n], "little") ^ mask).to_bytes(n, "little")

    def _program(stored, data, off, n):
        mask = (1 << (8 * n)) - 1
        v = int.from_bytes(stored[:n], "little") | (int.from_bytes(data[off:off + n], "little") ^ mask)
        stored[:n] = v.to_bytes(n, "little")

    def _rd(f, buf, n):
        return f.readinto(memoryview(buf)[:n])

    def _wr(f, buf, n):
        f.write(memoryview(buf)[:n])


def _writable(b):
    if isinstance(b, bytearray):
        return True
    if not isinstance(b, memoryview):
        return False
    try:
        b[0] = b[0]  # a memoryview of bytes refuses
        return True
    except TypeError:
        return False


# Optional timing (off by default, so tests stay fast): board.json
#   "flash_timing": {"erase_4k_ms": 45, "program_256_us": 700, "read_mbps": 20}
# makes every sector erase, page program and read take as long as on a real chip. The erase
# and program figures are the typical ones of the Winbond W25Q32JV datasheet (tSE 4 KB sector
# erase 45 ms typ / 400 ms max, tPP page program 0.7 ms typ / 3 ms max; the GigaDevice
# GD25Q32C lists about the same), the flash of most 4 MB ESP32 modules. read_mbps is not a
# datasheet figure but an effective rate in MB/s for esp_partition_read (SPI at 40-80 MHz,
# DIO/QIO: 10-40 MB/s raw). A write sleeps per 256-byte page it touches, an erase per 4 KiB
# sector, a read per byte; integer microseconds, no heap use.
class Flash:
    def __init__(self, path, size, run=None):
        self.f = hopen(path, "r+b")
        self.size = size
        self.run = run
        self._scratch = bytearray(_CHUNK)
        self._zeros = bytes(_ZCHUNK)
        # one sector for set_boot's image check (simota.verify_image), allocated with the board so
        # that an update's set_boot() takes no heap, as in C, and runs at the speed of one pass
        self.vbuf = bytearray(SECTOR) if run is not None else None
        self._fresh = bytearray((size // SECTOR + 7) // 8)  # sectors erased in this run, unwritten
        t = run.cfg.get("flash_timing") if run is not None else None
        self.erase_us = int(t.get("erase_4k_ms", 45) * 1000) if t else 0
        self.page_us = int(t.get("program_256_us", 700)) if t else 0
        self.read_mbps = int(t.get("read_mbps", 20)) if t else 0

    def _wait(self, us):
        import time
        if MP:
            time.sleep_us(us)
        else:
            time.sleep(us / 1000000)

    def close(self):
        self.f.close()

    def check(self, addr, n):
        if addr < 0 or n < 0 or addr + n > self.size:
            raise esp_error(ESP_ERR_INVALID_SIZE)

    def read(self, addr, n):
        buf = bytearray(n)
        self.readinto(addr, buf)
        return bytes(buf)

    def readinto(self, addr, buf):
        n = len(buf)
        self.check(addr, n)
        f = self.f
        f.seek(addr)
        got = f.readinto(buf) or 0
        if got < n:  # past the end of the file reads as erased
            for i in range(got, n):
                buf[i] = 0
        _inv(buf, n)
        if self.read_mbps:
            self._wait(n // self.read_mbps)  # 1 MB/s = 1 byte/us

    # NOR program: bits can only go from 1 to 0, the cell keeps old AND new.
    def write(self, addr, data):
        n = len(data)
        self.check(addr, n)
        if n == 0:
            return
        run = self.run
        if run is not None:
            run.op("write", addr, n)
        f = self.f
        sec = addr // SECTOR
        fresh = self._fresh
        if n == SECTOR and addr % SECTOR == 0 and fresh[sec >> 3] & (1 << (sec & 7)) and _writable(data):
            _inv(data, n)
            try:
                f.seek(addr)
                f.write(data)
            finally:
                _inv(data, n)
        else:
            s = self._scratch
            p = 0
            while p < n:
                k = min(_CHUNK, n - p)
                f.seek(addr + p)
                got = _rd(f, s, k) or 0
                for i in range(got, k):
                    s[i] = 0
                _program(s, data, p, k)
                f.seek(addr + p)
                _wr(f, s, k)
                p += k
        while sec * SECTOR < addr + n:
            fresh[sec >> 3] &= ~(1 << (sec & 7))
            sec += 1
        if self.page_us:
            self._wait(((addr + n - 1) // 256 - addr // 256 + 1) * self.page_us)
        if run is not None:
            run.op_done()

    # Erase whole 4 KiB sectors to 0xFF, one operation (and power-cut point) per sector.
    def erase(self, addr, n):
        if addr % SECTOR or n % SECTOR:
            raise esp_error(ESP_ERR_INVALID_ARG)
        self.check(addr, n)
        run = self.run
        end = addr + n
        f = self.f
        z = self._zeros
        while addr < end:
            if run is not None:
                run.op("erase", addr, SECTOR)
            f.seek(addr)
            for _ in range(SECTOR // _ZCHUNK):
                f.write(z)
            sec = addr // SECTOR
            self._fresh[sec >> 3] |= 1 << (sec & 7)
            if self.erase_us:
                self._wait(self.erase_us)
            if run is not None:
                run.op_done()
            addr += SECTOR


# ---- partitions (from board.json: [label, type, subtype, offset, size, flags]) ----
TYPE_APP = const(0)
TYPE_DATA = const(1)
SUBTYPE_FACTORY = const(0x00)
SUBTYPE_OTA_0 = const(0x10)
SUBTYPE_DATA_OTA = const(0x00)
SUBTYPE_DATA_NVS = const(0x02)


class Part:
    def __init__(self, entry):
        self.label = entry[0]
        self.type = entry[1]
        self.subtype = entry[2]
        self.offset = entry[3]
        self.size = entry[4]
        self.flags = entry[5] if len(entry) > 5 else 0


def parts(cfg):
    out = cfg.get("_parts")
    if out is None:
        out = [Part(e) for e in cfg["partitions"]]
        cfg["_parts"] = out
    return out


def find_part(cfg, label=None, ptype=None, subtype=None):
    for p in parts(cfg):
        if label is not None and p.label != label:
            continue
        if ptype is not None and p.type != ptype:
            continue
        if subtype is not None and subtype != 0xFF and p.subtype != subtype:
            continue
        return p
    return None


def ota_slots(cfg):
    # ota_0, ota_1, ... by subtype, stopping at the first gap (get_ota_partition_count)
    slots = []
    while True:
        p = find_part(cfg, ptype=TYPE_APP, subtype=SUBTYPE_OTA_0 + len(slots))
        if p is None:
            return slots
        slots.append(p)
