# DSSE envelopes on the device: read with a hard size cap, check payloadType, verify
# at least one signature by a configured key of the required role over
# PAE = "DSSEv1 SP len(type) SP type SP len(payload) SP payload", return the exact
# payload bytes (the caller parses them; no canonicalisation on the device).
from micropython import const

RELEASE = "application/vnd.mpota.release+json"
CHANNEL = "application/vnd.mpota.channel+json"
_MAX_SIGS = const(8)


# DSSE's base64: standard or URL-safe alphabet (not both in one string), padded to a
# multiple of 4. a2b_base64 skips stray characters, so the output length must come out exact;
# '=' only as the last one or two characters.
def _b64(s):
    import binascii

    if not isinstance(s, str) or len(s) % 4:
        raise ValueError
    if "-" in s or "_" in s:
        if "+" in s or "/" in s:
            raise ValueError
        s = s.replace("-", "+").replace("_", "/")
    i = s.find("=")
    if i >= 0 and (i < len(s) - 2 or s[-1] != "="):
        raise ValueError
    out = binascii.a2b_base64(s)
    if len(out) != len(s) // 4 * 3 - s.endswith("=") - s.endswith("=="):
        raise ValueError
    return out


# The envelope half of a verify: parse `data`, check its shape, its payloadType, decode the
# payload, hash PAE, and pair each signature with the configured keys it may be by (pair()).
# Signatures stay as decoded (DER or raw r||s; None when not base64). Returns (payload, digest,
# pairs) or raises a MetadataError: malformed for a bad shape (checked before the payloadType),
# unknown_key when no signature may be by a configured key. keys=None returns the
# decoded signatures [(keyid or None, sig), ...] instead of pairs, for pair() later: a keys
# document is checked against two key sets from one parse of its envelope (mpota.keydoc).
# The signature check is mpota.p256.verify_any(pairs, digest): the updater runs it after
# unloading this module, so only one of the two is in RAM at a time.
def open(data, payload_type, keys):
    import hashlib
    import json

    from mpota.errors import MetadataError

    try:
        env = json.loads(data)
    except ValueError:
        raise MetadataError("malformed", "envelope is not JSON")
    if not isinstance(env, dict):
        raise MetadataError("malformed", "envelope is not an object")
    pt = env.get("payloadType")
    sigs = env.get("signatures")
    if not isinstance(pt, str) or not isinstance(sigs, list):
        raise MetadataError("malformed", "envelope lacks payloadType/signatures")
    try:
        payload = _b64(env.get("payload"))
    except ValueError:  # binascii.Error is a ValueError
        raise MetadataError("malformed", "payload is not base64")
    if not sigs or len(sigs) > _MAX_SIGS:
        raise MetadataError("malformed", "%d signatures" % len(sigs))
    for s in sigs:
        if (not isinstance(s, dict) or not isinstance(s.get("sig"), str)
                or not isinstance(s.get("keyid", ""), str)):
            raise MetadataError("malformed", "bad signature entry")
    if pt != payload_type:
        raise MetadataError("payload_type", "payloadType %s, expected %s" % (pt[:60], payload_type))
    env = data = None
    h = hashlib.sha256(("DSSEv1 %d %s %d " % (len(pt), pt, len(payload))).encode())
    h.update(payload)
    out = []
    for s in sigs:
        try:
            sig = _b64(s["sig"])
        except ValueError:
            sig = None
        out.append((s.get("keyid") or None, sig))
    sigs = None
    return payload, h.digest(), out if keys is None else pair(out, keys, payload_type)


# [(point, sig), ...]: each decoded signature (keyid or None, sig) with the keys it may be by
# (keys = [(keyid hex, 65-byte point), ...] of the role): the key its keyid names, or every
# key when it has no keyid (DSSE makes keyid optional; sigstore leaves it empty). A keyid
# naming no configured key is ignored; unknown_key when no signature is left.
def pair(sigs, keys, payload_type):
    pairs = []
    for kid, sig in sigs:
        if kid is not None and not any(k == kid for k, _ in keys):
            continue
        for k, pub in keys:
            if kid is None or k == kid:
                pairs.append((pub, sig))
    if not pairs:
        from mpota.errors import MetadataError

        raise MetadataError("unknown_key", "no signature by a %s key" % (
            "release" if payload_type == RELEASE else "rollout" if payload_type == CHANNEL else "root"))
    return pairs


# Verify envelope bytes `data` in one call (open() + mpota.p256.verify_any): signatures by at
# least `threshold` distinct keys; scratch: an optional buffer for P-256. Returns the payload
# bytes or raises a MetadataError.
def verify(data, payload_type, keys, scratch=None, threshold=1):
    from mpota.errors import MetadataError

    payload, digest, pairs = open(data, payload_type, keys)
    import mpota.p256 as p256

    if not p256.verify_any(pairs, digest, scratch, threshold):
        raise MetadataError("bad_signature", "bad signature")
    return payload


# Parse verified payload bytes into a dict with the expected _type.
def parse(payload, type_):
    import json

    from mpota.errors import MetadataError

    try:
        doc = json.loads(payload)
    except ValueError:
        raise MetadataError("malformed", "payload is not JSON")
    if not isinstance(doc, dict) or doc.get("_type") != type_:
        raise MetadataError("malformed", "not a %s document" % type_)
    return doc
