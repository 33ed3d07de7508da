# /mpota.json (written by `mpota deploy`): loaded once, validated, keys decoded to bytes.
# Every other device file (state, report queue) lives in the same folder as the config.
from micropython import const

# Size caps in one place (after python-tuf's UpdaterConfig): documents are refused while
# being read as soon as they pass these.
CHANNEL_MAX = const(8192)
MANIFEST_MAX = const(16384)
CONFIG_MAX = const(8192)

_ROLES = ("release", "rollout")
_GROUP_MAX = const(32)


# A device group's name: the host's fleet.GROUP_NAME rule ([A-Za-z0-9][A-Za-z0-9._-]{0,31}),
# written out for MicroPython's re, which has no counted repeats.
def group_ok(name):
    if not 0 < len(name) <= _GROUP_MAX:
        return False
    for i, c in enumerate(name):
        if not ("a" <= c <= "z" or "A" <= c <= "Z" or "0" <= c <= "9" or (i and c in "._-")):
            return False
    return True


def _fail(msg):
    from mpota.errors import OTAError

    raise OTAError("config", "config: " + msg)


def _list(v):
    return v if isinstance(v, list) else []


def _str(d, name, default=None):
    v = d.get(name, default)
    if not isinstance(v, str) or not v:
        _fail("%s must be a non-empty string" % name)
    return v


def _int(d, name, default, lo, hi):
    v = d.get(name, default)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        _fail("%s must be an integer in %d..%d" % (name, lo, hi))
    return v


def _hex(v):
    if not isinstance(v, str) or not 16 <= len(v) <= 64:
        return False
    for c in v.lower():
        if not ("0" <= c <= "9" or "a" <= c <= "f"):
            return False
    return True


def _keys(d, role):
    ks = d.get("keys")
    lst = _list(ks.get(role) if isinstance(ks, dict) else None)
    if not lst:
        _fail("keys.%s must list at least one public key" % role)
    from mpota import points

    out = points(lst)
    if out is None:
        _fail("keys.%s: not a 65-byte uncompressed P-256 point in hex" % role)
    return out


KEYS_FILE = "mpota_keys.json"  # the keys document the board took last (mpota.keystore)


def _exists(path):
    import os

    try:
        os.stat(path)
        return True
    except OSError:
        return False


def _drop(name):
    import sys

    sys.modules.pop("mpota." + name, None)
    try:
        delattr(sys.modules["mpota"], name)
    except Exception:  # AttributeError; KeyError on MicroPython
        pass


# The checked config: a mpota.Config (the class lives in the package, so that this module's
# checking code leaves RAM once the config is made: a method would keep its globals alive).
def Config(data, path):
    import mpota

    cfg = mpota.Config()
    if not isinstance(data, dict):
        _fail("not a JSON object")
    cfg.data = data
    cfg.path = path
    i = path.rfind("/")
    cfg.root = path[:i] if i > 0 else ("/" if i == 0 else ".")
    cfg.device_id = _str(data, "device_id")
    cfg.board = _str(data, "board")
    cfg.channel = _str(data, "channel", "stable")
    cfg.group = _str(data, "group", "general")
    if not group_ok(cfg.group):
        _fail("group must be 1-32 letters, digits, '.', '_' or '-' (not first)")
    cfg.feed_url = _str(data, "feed_url")
    if not (cfg.feed_url.startswith("http://") or cfg.feed_url.startswith("https://")):
        _fail("feed_url must be an http(s) URL")
    if not cfg.feed_url.endswith("/"):
        cfg.feed_url += "/"
    r = data.get("report_url")
    if r is not None and not isinstance(r, str):
        _fail("report_url must be a string")
    t = data.get("token")
    if t is not None and not isinstance(t, str):
        _fail("token must be a string")
    # https trust (mpota.http): the server's CA or self-signed certificate, PEM; and whether
    # the token may cross plain http (only when the config says so, for a lab or the demo)
    ca = data.get("tls_ca")
    if ca is not None and (not isinstance(ca, str) or "-----BEGIN CERTIFICATE-----" not in ca):
        _fail("tls_ca must be a PEM certificate")
    if not isinstance(data.get("allow_http", False), bool):
        _fail("allow_http must be true or false")
    cfg.keys = {}
    for role in _ROLES:
        cfg.keys[role] = _keys(data, role)
    # the keys document trusted now (mpota.keystore) replaces the bare lists: version 0
    cfg.threshold = {"release": 1, "rollout": 1}
    cfg.keys_version = 0
    cfg.keys_file = cfg.root + KEYS_FILE if cfg.root.endswith("/") else cfg.root + "/" + KEYS_FILE
    seed = data.pop("trust", None)
    if seed is not None or _exists(cfg.keys_file):
        import mpota.keystore as keystore  # in RAM for this only

        t = keystore.trusted(cfg.keys_file, seed)
        _drop("keystore")
        if t is not None:
            cfg.use(t)
    cfg.channel_max = CHANNEL_MAX
    cfg.manifest_max = MANIFEST_MAX
    # Tunables (defaults suit a board on Wi-Fi).
    cfg.timeout_ms = _int(data, "timeout_ms", 10000, 10, 600000)
    cfg.retries = _int(data, "retries", 5, 0, 100)
    cfg.backoff_ms = _int(data, "backoff_ms", 1000, 0, 600000)
    cfg.max_backoff_ms = _int(data, "max_backoff_ms", 60000, 0, 3600000)
    # Slow-retrieval guard: an image transfer that brings fewer than min_rate bytes/s over
    # a 10 s window is cut (a timeout, retried with Range like a drop); 0: off.
    cfg.min_rate = _int(data, "min_rate", 1024, 0, 100000000)
    # Freeze protection: set the clock by NTP (ntptime) before a check when it is not set,
    # so an expired channel document is recognised; false where NTP is unwanted.
    cfg.ntp = data.get("ntp", True)
    if not isinstance(cfg.ntp, bool):
        _fail("ntp must be true or false")
    # The factory firmware's version, for a build whose app_desc carries none (mpota.firmware),
    # with the app_elf_sha256 (hex) of that build.
    v = data.get("version")
    if v is not None and not isinstance(v, str):
        _fail("version must be a string")
    cfg.version = v
    elf = data.get("version_elf")
    if elf is not None and not _hex(elf):
        _fail("version_elf must be the build's app_elf_sha256 in hex")
    # The chip, when the running slot's app_desc cannot be read (mpota.updater).
    if "chip" in data:
        from mpota.imagehdr import CHIPS

        if data["chip"] not in CHIPS.values():
            _fail("chip must be an ESP32 chip name such as esp32 or esp32s3")
    # The built-in broker check (mpota.health): host and port of the MQTT broker.
    if "mqtt_host" in data:
        _str(data, "mqtt_host")
    if "mqtt_port" in data:
        _int(data, "mqtt_port", 1883, 1, 65535)
    import mpota.http as http

    http.trust(data)
    return cfg


def load(path="/mpota.json"):
    import json
    import os

    try:
        if os.stat(path)[6] > CONFIG_MAX:
            _fail("too large")
        with open(path) as f:
            text = f.read()
    except OSError:
        _fail("cannot read " + path)
    try:
        data = json.loads(text)
    except ValueError:
        _fail("not JSON")
    return Config(data, path)
