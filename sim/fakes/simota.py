# The simulated ESP32's ROM and bootloader side: the otadata partition (ESP-IDF
# esp_ota_select_entry_t), app image verification (esp_image_verify) and the second-stage
# bootloader's slot choice with rollback. On a board this is C (bootloader, esp_ota_ops.c) and
# costs the app no heap; here the esp32 fake keeps it loaded from boot on, so its share is part of
# the empty board that bench_heap subtracts. sim/board.py uses it to inspect a board from CPython.
import struct

from simflash import (
    ESP_ERR_INVALID_ARG,
    ESP_ERR_NOT_FOUND,
    ESP_FAIL,
    MP,
    SECTOR,
    SUBTYPE_DATA_OTA,
    SUBTYPE_FACTORY,
    TYPE_APP,
    TYPE_DATA,
    esp_error,
    find_part,
    ota_slots,
)

try:
    from micropython import const
except ImportError:  # CPython, loaded by sim/board.py without the fakes on the import path
    def const(x):
        return x

if MP:
    import micropython

    # XOR of buf[lo:hi] (buf 4-byte aligned, as a bytearray is): the bytes up to a word
    # boundary, then 32-bit words folded to a byte at the end (XOR is bytewise: the same
    # result as byte by byte, a quarter of the loads), then the tail bytes.
    @micropython.viper
    def xor_bytes(buf: ptr8, lo: int, hi: int) -> int:  # noqa: F821
        x = 0
        while lo < hi and lo & 3:
            x ^= buf[lo]
            lo += 1
        w = ptr32(buf)  # noqa: F821
        i = lo >> 2
        end = hi >> 2
        y = 0
        while i < end:
            y ^= w[i]
            i += 1
        if end << 2 > lo:
            lo = end << 2
        while lo < hi:
            x ^= buf[lo]
            lo += 1
        return (x ^ y ^ (y >> 8) ^ (y >> 16) ^ (y >> 24)) & 0xFF
else:
    def xor_bytes(buf, lo, hi):
        x = int.from_bytes(buf[lo:hi], "little")
        bits = 8
        while (1 << bits) <= x:
            bits *= 2
        while bits > 8:
            bits //= 2
            x = (x >> bits) ^ (x & ((1 << bits) - 1))
        return x


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
    if buf is None:  # the flash's own sector buffer (the C original takes no Python heap at all)
        buf = getattr(flash, "vbuf", None) or bytearray(SECTOR)
    step = len(buf)
    mv = memoryview(buf)
    acc = 0
    p = 0
    last = 0
    while p < length:
        n = min(step, length - p)
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
