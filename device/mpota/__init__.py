# mpota: resilient OTA updates for MicroPython on ESP32.
# Imports are lazy (module __getattr__) so `import mpota.p256` needs no hardware module
# and a normal boot pays only for what it uses.

__version__ = "0.1.0"


# hex points -> [(keyid hex, 65-byte point), ...], or None when one is not a point (the config's
# keys and a keys document's, Config.use)
def points(lst):
    import binascii
    import hashlib

    out = []
    for h in lst:
        try:
            pt = binascii.unhexlify(h)
        except Exception:
            return None
        if len(pt) != 65 or pt[0] != 4:
            return None
        out.append((str(binascii.hexlify(hashlib.sha256(pt).digest()), "ascii"), pt))
    return out


# The checked /mpota.json, as mpota.config.Config(data, path) makes it: here rather than in
# mpota.config, whose checking code leaves RAM once the config is made (a method would keep
# that module's globals alive as long as the config lives). (The annotations are for the
# type checker; MicroPython ignores them.)
class Config:
    data: dict
    path: str
    root: str
    device_id: str
    board: str
    channel: str
    group: str
    feed_url: str
    keys: dict
    threshold: dict
    keys_version: int
    keys_file: str
    channel_max: int
    manifest_max: int
    timeout_ms: int
    retries: int
    backoff_ms: int
    max_backoff_ms: int
    min_rate: int
    ntp: bool
    version: str | None

    def __getitem__(self, k):
        return self.data[k]

    def __contains__(self, k):
        return k in self.data

    def get(self, k, default=None):
        return self.data.get(k, default)

    # Trust keys document `t` (checked): its release and rollout keys and thresholds. (No
    # mpota.config code: the keys walk runs with it out of RAM.)
    def use(self, t):
        for role in ("release", "rollout"):
            r = t["roles"][role]
            self.keys[role] = points(r["keys"])
            self.threshold[role] = r["threshold"]
        self.keys_version = t["version"]


def __getattr__(name):
    if name == "Updater":
        from mpota.updater import Updater
        return Updater
    if name == "boot":
        from mpota.trial import boot
        return boot
    if name == "HealthReporter":
        from mpota.health import HealthReporter
        return HealthReporter
    # `from mpota import state` on MicroPython asks here before trying the submodule.
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        return __import__("mpota." + name, None, None, (name,))
    except ImportError:
        raise AttributeError(name)
