# The stored state document is untrusted (a bit flip in NVS, a file written by something
# else): clean() keeps each key only when it has the right type, so a damaged state costs
# what it held (download progress, records), never a boot or an update. Loaded by
# mpota.state while it reads the store, then dropped.


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


# A loaded document -> a state with every key of the right type (`base`, the defaults, for
# the rest).
def clean(data, base):
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
