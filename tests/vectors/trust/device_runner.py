# The device side of the trust corpus: runs under MicroPython (unix port) and CPython.
#   micropython device_runner.py corpus.json   (device/ and sim/fakes on MICROPYPATH or PYTHONPATH)
# For each case, the steps the updater takes on the bytes it fetched: size cap, DSSE verify
# (mpota.dsse + mpota.p256), parse, mpota.trust up to the offer; for each keys case,
# mpota.keydoc.step along its chain; prints "RESULT " + {name: verdict}.
import binascii
import hashlib
import json
import sys

import mpota.config as config
import mpota.dsse as dsse
import mpota.errors as errors
import mpota.trust as trust


def keys(hexes):
    out = []
    for h in hexes:
        pt = binascii.unhexlify(h)
        out.append((str(binascii.hexlify(hashlib.sha256(pt).digest()), "ascii"), pt))
    return out


def now_of(text):
    return None if text is None else (text[:19], int(text[11:13]) * 60 + int(text[14:16]))


def verdict(case, ks):
    d = case["device"]
    now = now_of(d["now"])
    data = case["channel"].encode()
    if len(data) > config.CHANNEL_MAX:
        raise errors.MetadataError("too_large", "channel")
    doc = dsse.parse(dsse.verify(data, dsse.CHANNEL, ks["rollout"], None, d["rollout_threshold"]), "channel")
    ch = trust.channel(doc, d["board"], d["channel"], d["seen_seq"], now)
    if not trust.wanted(ch, d["group"], d["device_id"], d["running"], now):
        return "none"
    data = case["manifest"].encode()
    if len(data) > config.MANIFEST_MAX:
        raise errors.MetadataError("too_large", "manifest")
    if str(binascii.hexlify(hashlib.sha256(data).digest()), "ascii") != ch["release"]["manifest_sha256"]:
        raise errors.MetadataError("manifest_mismatch", "pin")
    m = dsse.parse(dsse.verify(data, dsse.RELEASE, ks["release"], None, d["release_threshold"]), "release")
    trust.manifest(m, ch, d["board"], d["chip"], d["running"], d["floor"], d["slot_size"], now)
    o = trust.offer(ch, m, "https://feed.example/" + ch["release"]["manifest"])
    if o.version != m["version"] or o.manifest_sha256 != ch["release"]["manifest_sha256"]:
        return "offer of another release"
    return "offer"


# A keys case: the chain of next keys documents, each checked against the one trusted before.
def keys_verdict(case):
    import mpota.keydoc as keydoc

    t = case["trusted"]
    trusted = keydoc.legacy(t["legacy"]["release"], t["legacy"]["rollout"]) if "legacy" in t else t
    for text in case["chain"]:
        trusted = keydoc.step(text.encode(), trusted)
    return "v%d" % trusted["version"]


def main():
    with open(sys.argv[1]) as f:
        corpus = json.load(f)
    ks = {r: keys(corpus["keys"][r]) for r in ("release", "rollout")}
    out = {}
    for case in corpus["cases"]:
        try:
            out[case["name"]] = verdict(case, ks)
        except errors.OTAError as e:
            out[case["name"]] = e.code
    for case in corpus["keys_cases"]:
        try:
            out[case["name"]] = keys_verdict(case)
        except errors.OTAError as e:
            out[case["name"]] = e.code
    print("RESULT " + json.dumps(out))


main()
