# The state store of a port without NVS (mpota.state.open_store picks it): the state as a
# JSON file next to the config, replaced by rename so a power cut leaves the old or the new.
import json


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

    # the state file keeps the high-water mark (a port without NVS has no second place)
    def load_rseq(self):
        return 0

    def save_rseq(self, n):
        pass
