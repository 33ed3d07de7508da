# Fake of MicroPython's esp32 module (docs/library/esp32.rst) on the simulated board:
# Partition over the NOR flash model, NVS persisted on commit. simboot installs it.
import simflash as _sf

# The ROM/bootloader side (otadata, image check): C on a board. It stays loaded, so the app's
# heap floors measured above an empty board (bench/bench_heap.py) do not pay for it mid-update.
import simota as _ota
from simflash import esp_error as _err

_NATIVE = 4096
_ENOENT = 2


def _run():
    return _sf.current("esp32")


class Partition:
    BOOT = 0
    RUNNING = 1
    TYPE_APP = 0
    TYPE_DATA = 1

    def __init__(self, id, block_size=4096):
        run = _run()
        if isinstance(id, _sf.Part):  # internal: find() and get_next_update()
            part = id
        elif isinstance(id, int):
            if id == Partition.BOOT:
                part = _ota.boot_partition(run.flash, run.cfg)
            elif id == Partition.RUNNING:
                part = _sf.find_part(run.cfg, label=run.running)
            else:
                raise ValueError
        else:
            if not isinstance(id, str):
                raise TypeError("can't convert %s to str" % type(id).__name__)
            part = _sf.find_part(run.cfg, label=id, ptype=0)
            if part is None:
                part = _sf.find_part(run.cfg, label=id, ptype=1)
        if part is None:
            raise OSError(_ENOENT)
        _init(self, part, block_size)

    @staticmethod
    def find(type=0, subtype=0xFF, label=None, block_size=4096):
        run = _run()
        out = []
        for p in _sf.parts(run.cfg):
            if p.type != type or (subtype != 0xFF and p.subtype != subtype):
                continue
            if label is not None and p.label != label:
                continue
            out.append(_new(p, block_size))
        return out

    def info(self):
        p = self._p
        return (p.type, p.subtype, p.offset, p.size, p.label, bool(p.flags & 1))

    def __repr__(self):
        p = self._p
        return "<Partition type=%u, subtype=%u, address=%u, size=%u, label=%s, encrypted=%u>" % (
            p.type, p.subtype, p.offset, p.size, p.label, p.flags & 1)

    # esp_partition_read / _write / _erase_range bounds: start past the end -> INVALID_ARG,
    # end past the end -> INVALID_SIZE
    def _range(self, off, n):
        size = self._p.size
        if off < 0 or off > size:
            raise _err(_sf.ESP_ERR_INVALID_ARG)
        if off + n > size:
            raise _err(_sf.ESP_ERR_INVALID_SIZE)

    def _erase(self, off, n):
        self._range(off, n)
        if n % _NATIVE:
            raise _err(_sf.ESP_ERR_INVALID_SIZE)
        if off % _NATIVE:
            raise _err(_sf.ESP_ERR_INVALID_ARG)
        _run().flash.erase(self._p.offset + off, n)

    def readblocks(self, block_num, buf, offset=0):
        run = _run()
        off = block_num * self._bs + offset
        n = len(buf)
        self._range(off, n)
        run.flash.readinto(self._p.offset + off, buf)

    def writeblocks(self, block_num, buf, offset=None):
        run = _run()
        bs = self._bs
        off = block_num * bs
        if offset is None:
            # a simple write: erase first (sector by sector when blocks are smaller than a sector)
            if bs >= _NATIVE:
                self._erase(off, len(buf))
            else:
                self._write_small(off, buf)
                return
        else:
            off += offset
        self._range(off, len(buf))
        run.flash.write(self._p.offset + off, buf)

    def _write_small(self, off, buf):
        # MicroPython's read-modify-erase-write through a one-sector cache
        n = len(buf)
        self._range(off, n)
        run = _run()
        base = self._p.offset
        mv = memoryview(buf)
        done = 0
        while done < n:
            sec = (off + done) // _NATIVE * _NATIVE
            cache = bytearray(run.flash.read(base + sec, _NATIVE))
            start = off + done - sec
            k = min(_NATIVE - start, n - done)
            cache[start:start + k] = mv[done:done + k]
            self._erase(sec, _NATIVE)
            run.flash.write(base + sec, cache)
            done += k

    def ioctl(self, cmd, arg):
        _run()
        if cmd in (1, 2, 3):
            return 0
        if cmd == 4:
            return self._p.size // self._bs
        if cmd == 5:
            return self._bs
        if cmd == 6:
            if self._bs < _NATIVE:
                return 0  # erased as part of writeblocks
            self._erase(arg * self._bs, self._bs)
            return 0
        return None

    def set_boot(self):
        run = _run()
        p = self._p
        why = _ota.verify_image(run.flash, p.offset, p.size, run.cfg["chip_id"], run.cfg.get("chip_rev", 0))
        if why is not None:
            run.boot_log.append("set_boot(%s) refused: %s" % (p.label, why))
            raise _err(_sf.ESP_ERR_OTA_VALIDATE_FAILED)
        if p.type != 0:
            raise _err(_sf.ESP_ERR_INVALID_ARG)
        if p.subtype == _sf.SUBTYPE_FACTORY:
            od = _sf.find_part(run.cfg, ptype=1, subtype=_sf.SUBTYPE_DATA_OTA)
            if od is None:
                raise _err(_sf.ESP_ERR_NOT_FOUND)
            run.flash.erase(od.offset, od.size)
            return
        rollback = run.cfg.get("rollback_supported", True)
        _ota.rewrite_ota_data(run.flash, run.cfg, p.subtype - _sf.SUBTYPE_OTA_0, rollback)

    def get_next_update(self):
        run = _run()
        slots = _sf.ota_slots(run.cfg)
        if not slots:
            raise OSError(_ENOENT)
        take = False
        for s in slots:
            if take:
                return _new(s, self._bs)
            if s.label == self._p.label:
                take = True
        return _new(slots[0], self._bs)

    @classmethod
    def mark_app_valid_cancel_rollback(cls):
        run = _run()
        if not run.cfg.get("rollback_supported", True):
            raise _err(_sf.ESP_ERR_NOT_FOUND)  # OSError(-261): built without app rollback
        _ota.mark_valid(run.flash, run.cfg)


def _init(self, part, block_size):
    if block_size <= 0 or block_size & (block_size - 1):
        raise ValueError("invalid block size")
    self._p = part
    self._bs = block_size


def _new(part, block_size):
    return Partition(part, block_size)


# ---- NVS: values kept per namespace, persisted to <simdir>/nvs.json on commit ----
# On a board NVS lives in flash and its commits run in C: the fake keeps blobs as bytes
# (not hex text) and streams the file out in small pieces, so that the heap the device
# code is measured with (bench/bench_heap.py) carries as little of the fake as it can.
_I32 = "i"
_BLOB = "b"
_store = None
_ENTRY = 32


def _nvs_data():
    global _store
    if _store is None:
        run = _run()
        _store = _sf.hread_json(run.simdir + "/nvs.json", {})
        for ns in _store.values():
            for k in ns:
                if k[0] == _BLOB:
                    ns[k] = bytes.fromhex(ns[k])
    return _store


# nvs.json (blobs as hex), written a few dozen bytes at a time (through simflash.hwrite:
# temp file + rename).
def _nvs_to(f, data):
    import binascii
    import json

    f.write("{")
    sep = ""
    for name, ns in data.items():
        f.write(sep + json.dumps(name) + ": {")
        sep2 = ""
        for k, v in ns.items():
            f.write(sep2 + json.dumps(k) + ": ")
            if k[0] == _BLOB:
                f.write('"')
                for i in range(0, len(v), 32):
                    f.write(binascii.hexlify(v[i : i + 32]).decode())
                f.write('"')
            else:
                f.write(str(v))
            sep2 = ", "
        f.write("}")
        sep = ", "
    f.write("}")


def _entries(data):
    # NVS entries used (32 bytes each): one per namespace, one per i32, blob index + data + header
    n = 0
    for ns in data.values():
        n += 1
        for k, v in ns.items():
            if k[0] == _I32:
                n += 1
            else:
                n += 2 + (len(v) + _ENTRY - 1) // _ENTRY
    return n


def _capacity(run):
    p = _sf.find_part(run.cfg, ptype=1, subtype=_sf.SUBTYPE_DATA_NVS)
    pages = (p.size // 4096) if p is not None else 6
    return max(pages - 1, 1) * 126  # one page stays free for garbage collection


class NVS:
    def __init__(self, namespace):
        _run()
        if not isinstance(namespace, str):
            raise TypeError
        if len(namespace) > 15:
            raise _err(_sf.ESP_ERR_NVS_KEY_TOO_LONG)
        self._ns = namespace

    def _space(self):
        data = _nvs_data()
        ns = data.get(self._ns)
        if ns is None:
            ns = {}
            data[self._ns] = ns
        return ns

    def _key(self, key):
        if not isinstance(key, str):
            raise TypeError
        if len(key) > 15:
            raise _err(_sf.ESP_ERR_NVS_KEY_TOO_LONG)
        if not key:
            raise _err(_sf.ESP_ERR_NVS_INVALID_NAME)
        return key

    def _set(self, tk, value):
        run = _run()
        ns = self._space()
        old = ns.get(tk)
        ns[tk] = value
        if _entries(_nvs_data()) > _capacity(run):
            if old is None:
                del ns[tk]
            else:
                ns[tk] = old
            raise _err(_sf.ESP_ERR_NVS_NOT_ENOUGH_SPACE)

    def set_i32(self, key, value):
        if not isinstance(value, int):
            raise TypeError
        if value < -0x80000000 or value > 0x7FFFFFFF:
            raise OverflowError("overflow converting long int to machine word")
        self._set(_I32 + self._key(key), value)

    def get_i32(self, key):
        _run()
        v = self._space().get(_I32 + self._key(key))
        if v is None:
            raise _err(_sf.ESP_ERR_NVS_NOT_FOUND)
        return v

    def set_blob(self, key, value):
        if isinstance(value, str):
            value = value.encode()  # str has the buffer protocol on MicroPython
        self._set(_BLOB + self._key(key), bytes(value))

    def get_blob(self, key, value):
        _run()
        v = self._space().get(_BLOB + self._key(key))
        if v is None:
            raise _err(_sf.ESP_ERR_NVS_NOT_FOUND)
        if len(v) > len(value):
            raise _err(_sf.ESP_ERR_NVS_INVALID_LENGTH)
        value[:len(v)] = v
        return len(v)

    def erase_key(self, key):
        _run()
        ns = self._space()
        k = self._key(key)
        found = False
        for tk in (_I32 + k, _BLOB + k):
            if tk in ns:
                del ns[tk]
                found = True
        if not found:
            raise _err(_sf.ESP_ERR_NVS_NOT_FOUND)

    def commit(self):
        run = _run()
        p = _sf.find_part(run.cfg, ptype=1, subtype=_sf.SUBTYPE_DATA_NVS)
        data = _nvs_data()
        run.op("commit", p.offset if p is not None else 0, _entries(data) * _ENTRY)
        _sf.hwrite(run.simdir + "/nvs.json", _nvs_to, data)
        run.op_done()


# ---- simulator extras (not on a real board) ----
# The running firmware: {"slot", "version", "project_name", "secure_version", "flags"}, where
# flags come from the image's "MPOTA-SIM:k=v,...;" marker (sim/images.py).
def sim_firmware():
    return _run().firmware


# A firmware crash (Guru Meditation): the chip resets itself, reset_cause() is SOFT_RESET.
def sim_panic(msg="panic"):
    print("Guru Meditation Error: %s" % msg)
    _run().end(_sf.EXIT_PANIC, msg)
