# The keys document a board trusts (docs/FORMATS.md "Keys document"), on its filesystem:
# mpota_keys.json beside the config, the one it took last (written by save(): a temp file
# renamed over the old one, so a power cut leaves the old or the new version), or the one
# `mpota deploy --keys-doc` seeded in /mpota.json ("trust"). Loaded only by mpota.config
# when there is one, and by the keys walk (mpota.keydoc).
import json

from mpota.config import KEYS_FILE


def path(root):
    return root + KEYS_FILE if root.endswith("/") else root + "/" + KEYS_FILE


# A keys document as this board stores it, shaped well enough to use (it was fully checked
# before it was stored or seeded): else False.
def _usable(d):
    from mpota.config import _points

    try:
        if not isinstance(d["fleet"], str) or not isinstance(d["version"], int):
            return False
        for r in ("root", "release", "rollout"):
            role = d["roles"][r]
            t = role["threshold"]
            if not isinstance(t, int) or not 0 < t <= len(role["keys"]) or not _points(role["keys"]):
                return False
        return True
    except Exception:
        return False


# The document this board trusts: the newer of the seed and the stored one (of the seed's
# fleet); None: the bare key lists (version 0). A stored file that does not read as one is
# ignored (the board walks again); a bad seed is a config error.
def trusted(root, seed):
    if seed is not None and not _usable(seed):
        from mpota.config import _fail

        _fail("trust must be a keys document")
    try:
        with open(path(root)) as f:
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
    return trusted(cfg.root, seed)


# Store a checked document as the trusted one.
def save(cfg, doc):
    import os

    p = path(cfg.root)
    with open(p + ".tmp", "w") as f:
        f.write(json.dumps(doc))
    os.rename(p + ".tmp", p)
