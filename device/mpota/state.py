# Small persistent device state: one JSON document written in one atomic step
# (an esp32.NVS blob + commit, or a file replaced by rename), so a power cut at any
# instant leaves either the old or the new state, never a mix.
#
# One State per store and process (shared()): boot(), HealthReporter, Updater and every
# reporter of one boot hold the same object, so none of them can save a stale copy over a
# decision another one made. What is read from flash or a file is untrusted: a blob or file
# that does not parse, or a key of the wrong type, falls back to its default (it costs the
# download progress or the records it held, never a boot or an update).
import json

from micropython import const

_NS = "mpota"
_KEY = "state"
_RSEQ = "rseq"     # NVS i32 next to the blob: report seq high-water mark (survives a bad blob)
_MAX = const(2048)  # NVS blob buffer; the state stays far below this
_MAX_FAILED = const(8)
_RSEQ_BLOCK = const(16)  # report seqs reserved per high-water save (one NVS commit per 16 reports)
_DESC = const(0x20)      # esp_app_desc_t in an app image
_DESC_END = const(0xD0)  # ... up to the end of app_elf_sha256 (desc + 144 + 32)


def _default():
    return {
        "seq": {},        # channel name -> highest channel seq accepted
        "floor": 0,       # security floor: highest security_version confirmed here
        "pending": None,  # update awaiting its trial boot (see trial.py)
        "dl": None,       # download in progress, for Range resume
        "failed": [],     # [[version, rollout id], ...] that failed on this board (newest last)
        "rseq": 0,        # report seq high-water mark (server refuses replays)
        "boots": 0,       # boot counter (HealthReporter.boot_count)
        "wdt": 0,         # watchdog resets seen
        "fw": {},         # slot label -> [elf id, version]: firmware mpota confirmed there
    }


class NvsStore:
    key = "nvs"

    def __init__(self, namespace=_NS):
        import esp32

        self._nvs = esp32.NVS(namespace)

    def load(self):
        buf = bytearray(_MAX)
        try:
            n = self._nvs.get_blob(_KEY, buf)
            return json.loads(bytes(buf[:n]))
        except Exception:  # missing (OSError), not JSON, not UTF-8: start afresh
            return None

    def save(self, text, rseq):
        self._nvs.set_blob(_KEY, text)
        self._nvs.set_i32(_RSEQ, rseq)
        self._nvs.commit()  # one commit for both

    def load_rseq(self):
        try:
            return self._nvs.get_i32(_RSEQ)
        except Exception:
            return 0

    def save_rseq(self, n):
        self._nvs.set_i32(_RSEQ, n)
        self._nvs.commit()


class FileStore:
    def __init__(self, path):
        self._path = path
        self.key = path

    def load(self):
        try:
            with open(self._path) as f:
                return json.load(f)
        except Exception:  # OSError, ValueError, UnicodeError
            return None

    def save(self, text, rseq):
        import os

        tmp = self._path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, self._path)  # atomic on LittleFS and POSIX

    # the high-water mark in a file of its own, next to the state file
    def load_rseq(self):
        try:
            with open(self._path + ".rseq") as f:
                return int(f.read())
        except Exception:
            return 0

    def save_rseq(self, n):
        import os

        tmp = self._path + ".rseq.tmp"
        with open(tmp, "w") as f:
            f.write(str(n))
        os.rename(tmp, self._path + ".rseq")


def open_store(root):
    # NVS where the port has it (ESP32, the simulated board); a file elsewhere.
    try:
        import esp32

        if hasattr(esp32, "NVS"):
            return NvsStore()
    except ImportError:
        pass
    return FileStore(root + "/mpota_state.json")


_shared = {}  # type: dict  # store key -> State
queues = {}   # type: dict  # queue file path -> mpota.outbox._Queue (kept here: this module stays loaded)


# The State of this process for the config folder `root` (created on first use).
def shared(root):
    store = open_store(root)
    s = _shared.get(store.key)
    if s is None:
        s = _shared[store.key] = State(store)
    return s


# Forget the shared states (tests that boot several times in one process).
def forget():
    _shared.clear()


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


# A loaded document -> a state with every key of the right type (defaults for the rest).
def _clean(data):
    base = _default()
    if not isinstance(data, dict):
        return base
    for k in base:
        v = data.get(k)
        d = base[k]
        if d is None:
            if isinstance(v, dict):
                base[k] = v
        elif type(v) is type(d):  # int (not bool), dict, list
            base[k] = v
    seq = {}
    for c in base["seq"]:
        if _is_int(base["seq"][c]):
            seq[c] = base["seq"][c]
    base["seq"] = seq
    base["failed"] = [e for e in base["failed"]
                      if isinstance(e, list) and len(e) == 2 and isinstance(e[0], str)]
    fw = {}
    for s in base["fw"]:
        e = base["fw"][s]
        if isinstance(e, list) and len(e) == 2 and isinstance(e[0], str) and isinstance(e[1], str):
            fw[s] = e
    base["fw"] = fw
    p = base["pending"]
    if p is not None and not (isinstance(p.get("version"), str) and isinstance(p.get("slot"), str)
                              and _is_int(p.get("attempts", 0))):
        base["pending"] = None
    return base


# The running firmware from its esp_app_desc_t: (version, elf id, chip id, slot label), or
# None when the running slot holds no readable app description. version is "" for
# MicroPython's own ESP32 builds (CONFIG_APP_EXCLUDE_PROJECT_VER_VAR=y); the elf id is the
# first 8 bytes of app_elf_sha256 in hex, which every build differs in.
def running_image():
    try:
        import binascii

        import esp32

        run = esp32.Partition(esp32.Partition.RUNNING)  # type: ignore[arg-type]
        buf = bytearray(_DESC_END)
        run.readblocks(0, buf)
        if buf[0] != 0xE9 or buf[_DESC:_DESC + 4] != b"\x32\x54\xcd\xab":
            return None
        raw = bytes(buf[_DESC + 16:_DESC + 48])
        n = raw.find(b"\0")
        try:
            v = str(raw if n < 0 else raw[:n], "utf-8")
        except Exception:  # not UTF-8: no usable version
            v = ""
        elf = str(binascii.hexlify(buf[_DESC + 144:_DESC + 152]), "ascii")
        return v, elf, buf[12] | buf[13] << 8, run.info()[4]
    except Exception:
        return None


class State:
    def __init__(self, store):
        self._store = store
        self.data = _clean(store.load())
        r = store.load_rseq()
        if _is_int(r) and r > self.data["rseq"]:
            self.data["rseq"] = r
        self._top = self.data["rseq"]  # seqs up to here are reserved in the store
        self.booted = None  # the BootResult of this process's boot() (trial.py)
        self.queue = None   # the report queue of this process (outbox.py)

    def __getitem__(self, key):
        return self.data[key]

    def __setitem__(self, key, value):
        self.data[key] = value

    # Every save also reserves the next report seqs when few are left, so a boot that saves
    # its state anyway (boot(), the updater) needs no commit of its own for its reports.
    def save(self):
        d = self.data
        r = d["rseq"]
        if self._top < r + _RSEQ_BLOCK // 2:
            self._top = r + _RSEQ_BLOCK
        d["rseq"] = self._top
        try:
            text = json.dumps(d)
        finally:
            d["rseq"] = r
        self._store.save(text, self._top)

    def is_failed(self, version, rollout):
        for v, r in self.data["failed"]:
            if v == version and (rollout is None or r == rollout):
                return True
        return False

    def add_failed(self, version, rollout):
        failed = [e for e in self.data["failed"] if e[0] != version]
        failed.append([version, rollout])
        self.data["failed"] = failed[-_MAX_FAILED:]

    # A new report seq, never issued before: the high-water mark is stored (on its own, not
    # with the rest of the state) before a seq above it is handed out.
    def next_report_seq(self):
        r = self.data["rseq"] + 1
        if r > self._top:
            self._store.save_rseq(r + _RSEQ_BLOCK - 1)
            self._top = r + _RSEQ_BLOCK - 1
        self.data["rseq"] = r
        return r

    # The running firmware's version: its app description's; else what mpota recorded when
    # it confirmed this very build in this slot; else the factory version the config states
    # (`version`, for the build `version_elf` names when given); else None (unknown: the
    # updater then matches the running image's hash against the signed manifest).
    def version(self, cfg, fw=-1):
        if fw == -1:
            fw = running_image()
        if fw is not None:
            if fw[0]:
                return fw[0]
            rec = self.data["fw"].get(fw[3])
            if rec and rec[0] == fw[1]:
                return rec[1]
        v = cfg.get("version")
        if not isinstance(v, str) or not v:
            return None
        want = cfg.get("version_elf")
        if isinstance(want, str) and want and (fw is None or want[:16].lower() != fw[1]):
            return None
        return v

    # Remember the version of the build in `fw` (running_image()); the caller saves.
    def record(self, fw, version):
        if fw is not None and not fw[0]:
            self.data["fw"][fw[3]] = [fw[1], version]
