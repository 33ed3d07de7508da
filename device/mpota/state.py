# Small persistent device state: one JSON document written in one atomic step
# (an esp32.NVS blob + commit, or a file replaced by rename), so a power cut at any
# instant leaves either the old or the new state, never a mix.
import json

from micropython import const

_NS = "mpota"
_KEY = "state"
_MAX = const(2048)  # NVS blob buffer; the state stays far below this
_MAX_FAILED = const(8)


def _default():
    return {
        "seq": {},        # channel name -> highest channel seq accepted
        "floor": 0,       # security floor: highest security_version confirmed here
        "pending": None,  # update awaiting its trial boot (see trial.py)
        "dl": None,       # download in progress, for Range resume
        "failed": [],     # [[version, rollout id], ...] that failed on this board (newest last)
        "rseq": 0,        # last report sequence number issued (server refuses replays)
        "boots": 0,       # boot counter (HealthReporter.boot_count)
        "wdt": 0,         # watchdog resets seen
    }


class NvsStore:
    def __init__(self, namespace=_NS):
        import esp32

        self._nvs = esp32.NVS(namespace)

    def load(self):
        buf = bytearray(_MAX)
        try:
            n = self._nvs.get_blob(_KEY, buf)
        except OSError:
            return None
        return json.loads(bytes(buf[:n]))

    def save(self, text):
        self._nvs.set_blob(_KEY, text)
        self._nvs.commit()


class FileStore:
    def __init__(self, path):
        self._path = path

    def load(self):
        try:
            with open(self._path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def save(self, text):
        import os

        tmp = self._path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, self._path)  # atomic on LittleFS and POSIX


def open_store(root):
    # NVS where the port has it (ESP32, the simulated board); a file elsewhere.
    try:
        import esp32

        if hasattr(esp32, "NVS"):
            return NvsStore()
    except ImportError:
        pass
    return FileStore(root + "/mpota_state.json")


class State:
    def __init__(self, store):
        self._store = store
        data = store.load()
        base = _default()
        if isinstance(data, dict):
            for k in base:
                if k in data:
                    base[k] = data[k]
        self.data = base

    def __getitem__(self, key):
        return self.data[key]

    def __setitem__(self, key, value):
        self.data[key] = value

    def save(self):
        self._store.save(json.dumps(self.data))

    def is_failed(self, version, rollout):
        for v, r in self.data["failed"]:
            if v == version and (rollout is None or r == rollout):
                return True
        return False

    def add_failed(self, version, rollout):
        failed = [e for e in self.data["failed"] if e[0] != version]
        failed.append([version, rollout])
        self.data["failed"] = failed[-_MAX_FAILED:]

    def next_report_seq(self):
        self.data["rseq"] += 1
        return self.data["rseq"]
