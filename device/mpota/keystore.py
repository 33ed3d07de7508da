# The keys document a board trusts (docs/FORMATS.md "Keys document"), on its filesystem:
# mpota_keys.json beside the config (cfg.keys_file), the one it took last (written by save():
# a temp file renamed over the old one, so a power cut leaves the old or the new version), or
# the one `mpota deploy --keys-doc` seeded in /mpota.json ("trust"). Loaded only by
# mpota.config when there is one, and by the keys walk (mpota.keydoc). It does not import
# mpota.config: the walk runs with that module's code out of RAM.
import json


# A keys document as this board stores it, shaped well enough to use (it was fully checked
# before it was stored or seeded): else False.
def _usable(d):
    import binascii

    try:
        if not isinstance(d["fleet"], str) or not isinstance(d["version"], int):
            return False
        for r in ("root", "release", "rollout"):
            role = d["roles"][r]
            ks = role["keys"]
            t = role["threshold"]
            if not isinstance(t, int) or not 0 < t <= len(ks):
                return False
            for k in ks:
                if len(k) != 130 or k[:2] != "04" or len(binascii.unhexlify(k)) != 65:
                    return False
        return True
    except Exception:
        return False


# The document this board trusts: the newer of the seed and the one stored at `path` (of the
# seed's fleet); None: the bare key lists (version 0). A stored file that does not read as one
# is ignored (the board walks again); a bad seed is a config error.
def trusted(path, seed):
    if seed is not None and not _usable(seed):
        from mpota.errors import OTAError

        raise OTAError("config", "config: trust must be a keys document")
    try:
        with open(path) as f:
            got = json.load(f)
    except Exception:  # none stored (OSError), or unreadable
        got = None
    if _usable(got) and (seed is None or got["fleet"] == seed["fleet"] and got["version"] > seed["version"]):
        return got
    return seed


# What the board with config `cfg` trusts now, read again (the config keeps no document in RAM).
def trusted_of(cfg):
    with open(cfg.path) as f:
        seed = json.load(f).get("trust")
    return trusted(cfg.keys_file, seed)


# Store a checked document (as mpota.keydoc.check keeps it) as the trusted one, never a
# half-written file: a temp file renamed over the old one (one write: a file system write is a
# flash program; tests/test_keys_powercut.py cuts power at each operation).
def save(cfg, doc):
    import os

    p = cfg.keys_file
    with open(p + ".tmp", "w") as f:
        f.write(json.dumps(doc))
    os.rename(p + ".tmp", p)
