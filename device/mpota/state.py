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
_FILE = "/mpota_state.json"  # the state beside the config, on a port without NVS
_MAX = const(2048)  # NVS blob buffer; the state stays far below this
_MAX_FAILED = const(8)
_RSEQ_BLOCK = const(16)  # report seqs reserved per high-water save (one NVS commit per 16 reports)


# The stored document checked (mpota.stateload, in RAM for this call only).
def _checked(data):
    import sys

    from mpota.stateload import clean

    try:
        return clean(data, _default())
    finally:
        del clean
        if sys.implementation.name == "micropython":
            sys.modules.pop("mpota.stateload", None)
            try:
                delattr(sys.modules["mpota"], "stateload")
            except Exception:
                pass


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
        "app": None,      # {root, slot, version, hash}: the confirmed app folder (mpota.appfiles)
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


def open_store(root):
    # NVS where the port has it (ESP32, the simulated board); a file elsewhere.
    try:
        import esp32

        if hasattr(esp32, "NVS"):
            return NvsStore()
    except ImportError:
        pass
    from mpota.filestore import FileStore

    return FileStore(root + _FILE)


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


class State:
    def __init__(self, store):
        self._store = store
        self.data = _checked(store.load())
        r = store.load_rseq()
        if isinstance(r, int) and r > self.data["rseq"]:
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
