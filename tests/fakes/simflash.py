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
except ImportError:  # plain CPython without tests/fakes on sys.path
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
OP_CODES = {"write": 1, "erase": 2, "commit": 3}

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
RUN = None  # this boot's Run, set by simboot


# This boot's Run, for the esp32/machine/network fakes: they only work inside a simulated boot.
def current(module):
    r = RUN
    if r is None:
        raise RuntimeError(module + " fake used outside the simulated board (run tests/fakes/simboot.py)")
    r.alive()
    return r


class Run:
    # One per process (simboot creates it); sim/board.py inspects flash without one.
    def __init__(self, simdir, cfg, run):
        self.simdir = simdir
        self.cfg = cfg
        self.ops = 0
        self.boot_ops = 0
        # the operation log goes straight to a file, 9 bytes per operation (<BII: kind, address,
        # length): constant RAM however long the run, and no heap use per operation
        self.logf = hopen(simdir + "/ops.log", "wb")
        self._rec = bytearray(9)
        self.last = None
        self.boot_log = []
        cut = run.get("cut") or None
        self.cut_op = cut["op"] if cut else -1
        self.cut_after = bool(cut) and cut.get("when", "before") == "after"
        self.dead = None
        self.running = None   # label of the slot the bootloader started
        self.firmware = None  # dict from firmware_info()
        self.reset_cause = run.get("reset_cause", 1)
        self.wdt_ms = 0
        self.wdt_fed = 0
        self.wdt_mark = 0
        self.flash = None
        self.on_end = []

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
            for fn in self.on_end:
                try:
                    fn()
                except Exception:
                    pass
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
# big-int arithmetic on CPython.
_ZEROS = bytes(SECTOR)

if MP:
    import micropython

    # buf := ~buf
    @micropython.viper
    def _inv(buf: ptr8, n: int):  # noqa: F821
        for i in range(n):
            buf[i] = buf[i] ^ 0xFF

    # stored := stored | ~data  (stored holds ~flash, so flash := flash & data)
    @micropython.viper
    def _program(stored: ptr8, data: ptr8, n: int):  # noqa: F821
        for i in range(n):
            stored[i] = stored[i] | (data[i] ^ 0xFF)

    # XOR of buf[lo:hi]
    @micropython.viper
    def xor_bytes(buf: ptr8, lo: int, hi: int) -> int:  # noqa: F821
        x = 0
        for i in range(lo, hi):
            x ^= buf[i]
        return x
else:
    def _inv(buf, n):
        mask = (1 << (8 * n)) - 1
        buf[:n] = (int.from_bytes(buf[:n], "little") ^ mask).to_bytes(n, "little")

    def _program(stored, data, n):
        mask = (1 << (8 * n)) - 1
        v = int.from_bytes(stored[:n], "little") | (int.from_bytes(data[:n], "little") ^ mask)
        stored[:n] = v.to_bytes(n, "little")

    def xor_bytes(buf, lo, hi):
        x = int.from_bytes(buf[lo:hi], "little")
        bits = 8
        while (1 << bits) <= x:
            bits *= 2
        while bits > 8:
            bits //= 2
            x = (x >> bits) ^ (x & ((1 << bits) - 1))
        return x


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
        self._scratch = bytearray(SECTOR)
        self._mv = memoryview(self._scratch)
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

    def _load(self, addr, buf, n):
        # stored bytes of [addr, addr+n) into buf; past the end of the file reads as erased
        f = self.f
        f.seek(addr)
        got = f.readinto(buf) or 0
        if got < n:
            buf[got:n] = bytes(n - got)

    def read(self, addr, n):
        buf = bytearray(n)
        self.readinto(addr, buf)
        return bytes(buf)

    def readinto(self, addr, buf):
        n = len(buf)
        self.check(addr, n)
        self._load(addr, buf, n)
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
        if n == SECTOR:
            s = self._mv
        else:
            s = memoryview(self._scratch if n < SECTOR else bytearray(n))[:n]
        self._load(addr, s, n)
        _program(s, data, n)
        self.f.seek(addr)
        self.f.write(s)
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
        while addr < end:
            if run is not None:
                run.op("erase", addr, SECTOR)
            self.f.seek(addr)
            self.f.write(_ZEROS)
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


# ---- otadata: two sectors, one esp_ota_select_entry_t each ----
OTA_NEW = const(0)
OTA_PENDING_VERIFY = const(1)
OTA_VALID = const(2)
OTA_INVALID = const(3)
OTA_ABORTED = const(4)
OTA_UNDEFINED = const(0xFFFFFFFF)
STATE_NAMES = {0: "NEW", 1: "PENDING_VERIFY", 2: "VALID", 3: "INVALID", 4: "ABORTED", 0xFFFFFFFF: "UNDEFINED"}
_NOSEQ = const(0xFFFFFFFF)


def ota_crc(seq):
    import binascii
    return binascii.crc32(struct.pack("<I", seq), 0xFFFFFFFF) & 0xFFFFFFFF


class Entry:
    def __init__(self, raw):
        self.seq, self.label, self.state, self.crc = struct.unpack("<I20sII", raw)

    def pack(self):
        return struct.pack("<I20sII", self.seq, self.label, self.state, self.crc)

    # bootloader_common_ota_select_invalid / _valid
    def invalid(self):
        return self.seq == _NOSEQ or self.state == OTA_INVALID or self.state == OTA_ABORTED

    def valid(self):
        return not self.invalid() and self.crc == ota_crc(self.seq)

    def blank_or_bad(self):
        return self.seq == _NOSEQ or self.crc != ota_crc(self.seq)


def read_otadata(flash, cfg):
    od = find_part(cfg, ptype=TYPE_DATA, subtype=SUBTYPE_DATA_OTA)
    if od is None:
        return None, None
    return od, [Entry(flash.read(od.offset + i * SECTOR, 32)) for i in (0, 1)]


def write_entry(flash, od, i, e):
    e.crc = ota_crc(e.seq)
    flash.erase(od.offset + i * SECTOR, SECTOR)
    flash.write(od.offset + i * SECTOR, e.pack())


def select_otadata(two, valid):
    # bootloader_common_select_otadata(..., max=true)
    if valid[0] and valid[1]:
        return 0 if two[0].seq >= two[1].seq else 1
    if valid[0]:
        return 0
    if valid[1]:
        return 1
    return -1


def active_otadata(two):
    return select_otadata(two, [two[0].valid(), two[1].valid()])


# esp_ota_get_boot_partition
def boot_partition(flash, cfg):
    od, two = read_otadata(flash, cfg)
    slots = ota_slots(cfg)
    if od is None or not slots or (two[0].invalid() and two[1].invalid()):
        return default_boot_partition(cfg)
    a = active_otadata(two)
    if a < 0:
        return default_boot_partition(cfg)
    return slots[(two[a].seq - 1) % len(slots)]


def default_boot_partition(cfg):
    p = find_part(cfg, ptype=TYPE_APP, subtype=SUBTYPE_FACTORY)
    if p is None:
        slots = ota_slots(cfg)
        p = slots[0] if slots else None
    return p


# esp_rewrite_ota_data (what esp_ota_set_boot_partition does after validating the image)
def rewrite_ota_data(flash, cfg, slot_index, rollback):
    od, two = read_otadata(flash, cfg)
    if od is None:
        raise esp_error(ESP_ERR_NOT_FOUND)
    count = len(ota_slots(cfg))
    if slot_index >= count:
        raise esp_error(ESP_ERR_INVALID_ARG)
    a = active_otadata(two)
    if a >= 0:
        seq = two[a].seq
        i = 0
        while seq > (slot_index + 1) % count + i * count:
            i += 1
        nxt = (~a) & 1
        new_seq = (slot_index + 1) % count + i * count
    else:
        nxt = 0
        new_seq = slot_index + 1
    e = two[nxt]
    e.seq = new_seq
    e.state = OTA_NEW if rollback else OTA_UNDEFINED
    write_entry(flash, od, nxt, e)


# esp_ota_mark_app_valid_cancel_rollback
def mark_valid(flash, cfg):
    od, two = read_otadata(flash, cfg)
    if od is None:
        raise esp_error(ESP_ERR_NOT_FOUND)
    a = active_otadata(two)
    if a < 0 or not ota_slots(cfg):
        raise esp_error(ESP_FAIL)  # "Running firmware is factory"
    if two[a].state != OTA_VALID:
        two[a].state = OTA_VALID
        write_entry(flash, od, a, two[a])


# ---- app image verification (esp_image_verify, ESP_IMAGE_VERIFY) ----
_MAPPED = {
    # chip id -> flash-mapped (DROM, IROM) address windows; their segments must keep
    # load address % 64 KiB == file offset % 64 KiB so the MMU can map them
    0: ((0x3F400000, 0x3F800000), (0x400C2000, 0x40C00000)),
    9: ((0x3C000000, 0x3E000000), (0x42000000, 0x44000000)),
}


def _mapped(chip_id, addr):
    for lo, hi in _MAPPED.get(chip_id, ()):
        if lo <= addr < hi:
            return True
    return False


# Returns None when the image in [offset, offset+size) is bootable on this chip, else the reason.
def verify_image(flash, offset, size, chip_id, chip_rev=0, buf=None):
    if size < 24:
        return "partition too small"
    hdr = flash.read(offset, 24)
    if hdr[0] != 0xE9:
        return "bad magic 0x%02x" % hdr[0]
    nseg = hdr[1]
    if nseg > 16:
        return "too many segments (%d)" % nseg
    img_chip, min_rev, max_rev = struct.unpack_from("<HxHH", hdr, 12)
    if img_chip != chip_id:
        return "chip id %d, this chip is %d" % (img_chip, chip_id)
    if chip_rev < min_rev or chip_rev > max_rev:
        return "chip revision v%d.%d outside v%d.%d..v%d.%d" % (
            chip_rev // 100, chip_rev % 100, min_rev // 100, min_rev % 100, max_rev // 100, max_rev % 100)
    hash_appended = hdr[23] == 1
    pos = 24
    hdr_xor = 0
    for i in range(nseg):
        if pos + 8 > size:
            return "segment %d header past the partition end" % i
        sh = flash.read(offset + pos, 8)
        load, n = struct.unpack("<II", sh)
        for b in sh:
            hdr_xor ^= b
        data = pos + 8
        if n % 4 or n >= 0x1000000:
            return "segment %d has invalid length %d" % (i, n)
        if data + n > size:
            return "segment %d extends past the partition end" % i
        if _mapped(chip_id, load) and (data % 0x10000) != (load % 0x10000):
            return "segment %d load address 0x%08x does not match data offset 0x%x" % (i, load, data)
        pos = data + n
    image_len = pos
    length = (image_len + 1 + 15) & ~15  # padded so the checksum byte ends a 16-byte block
    total = length + (32 if hash_appended else 0)
    if total > size:
        return "image (%d bytes) does not fit the partition" % total
    import hashlib
    h = hashlib.sha256()
    if buf is None:  # the flash's scratch sector: esp_image_verify costs no Python heap
        buf = getattr(flash, "_scratch", None) or bytearray(SECTOR)
    mv = memoryview(buf)
    acc = 0
    p = 0
    last = 0
    while p < length:
        n = min(SECTOR, length - p)
        chunk = mv[:n]
        flash.readinto(offset + p, chunk)
        h.update(chunk)
        lo = max(p, 24)
        hi = min(p + n, image_len)
        if lo < hi:
            acc ^= xor_bytes(buf, lo - p, hi - p)
        if p + n == length:
            last = chunk[n - 1]
        p += n
    checksum = 0xEF ^ acc ^ hdr_xor
    if checksum != last:
        return "checksum mismatch (computed 0x%02x, image has 0x%02x)" % (checksum, last)
    if hash_appended:
        if h.digest() != flash.read(offset + length, 32):
            return "SHA-256 mismatch"
    return None


# app_desc and sim flags of the image in a slot (what esp_ota_get_partition_description reads)
def firmware_info(flash, part):
    head = flash.read(part.offset, SECTOR)
    info = {"slot": part.label, "version": None, "project_name": None, "secure_version": None, "flags": {}}
    if head[0] != 0xE9 or struct.unpack_from("<I", head, 32)[0] != 0xABCD5432:
        return info
    info["secure_version"] = struct.unpack_from("<I", head, 36)[0]
    info["version"] = _cstr(head[48:80])
    info["project_name"] = _cstr(head[80:112])
    i = head.find(b"MPOTA-SIM:")
    if i >= 0:
        j = head.find(b";", i)
        if j > i:
            for item in head[i + 10:j].decode().split(","):
                if item:
                    k, _, v = item.partition("=")
                    info["flags"][k.strip()] = v.strip() if _ else "1"
    return info


def _cstr(b):
    i = b.find(b"\0")
    return bytes(b if i < 0 else b[:i]).decode()


# ---- the second-stage bootloader (bootloader_utility_get_selected_boot_partition +
# bootloader_utility_load_boot_image, with CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE) ----
def bootloader(flash, cfg, log):
    rollback = cfg.get("rollback_supported", True)
    slots = ota_slots(cfg)
    od, two = read_otadata(flash, cfg)
    initial = False
    if od is None or not slots:
        index = -1
    else:
        if rollback:
            for i in (0, 1):
                if two[i].state == OTA_PENDING_VERIFY:
                    log.append("otadata[%d] seq %d (%s) PENDING_VERIFY -> ABORTED" % (
                        i, two[i].seq, slots[(two[i].seq - 1) % len(slots)].label))
                    two[i].state = OTA_ABORTED
                    write_entry(flash, od, i, two[i])
        if two[0].invalid() and two[1].invalid():
            index = 0
            if two[0].blank_or_bad() and two[1].blank_or_bad():
                initial = True
        else:
            a = active_otadata(two)
            if a >= 0:
                index = (two[a].seq - 1) % len(slots)
                if rollback and two[a].state == OTA_NEW:
                    log.append("otadata[%d] seq %d (%s) NEW -> PENDING_VERIFY" % (
                        a, two[a].seq, slots[index].label))
                    two[a].state = OTA_PENDING_VERIFY
                    write_entry(flash, od, a, two[a])
            else:
                index = -1
    # from the chosen slot down to the factory app (-1), then up through the other slots
    order = list(range(index, -2, -1)) + list(range(index + 1, len(slots)))
    factory = find_part(cfg, ptype=TYPE_APP, subtype=SUBTYPE_FACTORY)
    buf = None
    for i in order:
        part = factory if i < 0 else slots[i]
        if part is None:
            continue
        why = verify_image(flash, part.offset, part.size, cfg["chip_id"], cfg.get("chip_rev", 0), buf)
        if why is None:
            if initial and i >= 0:
                e = two[0]
                e.seq = i + 1
                e.state = OTA_VALID
                write_entry(flash, od, 0, e)
                log.append("blank otadata: set otadata[0] seq %d VALID" % e.seq)
            log.append("boot %s" % part.label)
            return part
        log.append("%s is not bootable: %s" % (part.label, why))
    return None
