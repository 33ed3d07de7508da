# ECDSA P-256 (secp256r1) signature verification with SHA-256, in pure MicroPython.
# verify(pubkey, message, signature) / verify_digest(pubkey, digest, signature) -> bool:
# any malformed key or signature is simply "not valid" (False); only MemoryError propagates.
# verify_any(pairs, digest, scratch, threshold=1) -> bool: pairs (pubkey, signature) verify
# for at least `threshold` distinct public keys (signatures DER or raw r||s).
# decode_der_signature(der) -> 64-byte r||s or None, for DER-encoded signatures.
# Speed (big-int `%` dominates on MicroPython): Jacobian coordinates with lazy reduction
# (one `%` per sum of products), interleaved wNAF of u1*G + u2*Q with a constant affine
# table of odd multiples of G, s^-1 by extended Euclid, and no field inversion at all:
# the result's x is compared as X == r * Z^2 (mod p).
# Heap (unix port, .mpy): about 5 KB for the loaded module, about 5 KB more while verifying
# (big-int temporaries; the tables live in a scratch buffer the caller may lend).
import hashlib

try:
    from micropython import const
except ImportError:  # CPython without the fakes' micropython module (e.g. host tools)

    def const(x):  # type: ignore[misc]
        return x


_P = const(0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF)
_N = const(0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551)
_B = const(0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B)
_WQ = const(5)  # wNAF width for the public key: table of 8 odd multiples, built per verify
_WG = const(6)  # wNAF width for G: table _GTAB of 16 odd multiples, affine, constant
_QT = const(160 << (_WQ - 2))  # bytes of the public-key table (8 entries of 5 x 32 bytes)
_DIGITS = const(257)           # bytes of one wNAF digit string
SCRATCH = const(_QT + 2 * _DIGITS)  # scratch bytes one verify needs (1794)

# G, 3G, 5G, ..., 31G: 64 bytes each (x || y, big-endian); tests recompute it independently.
_GTAB = (
    b"\x6b\x17\xd1\xf2\xe1\x2c\x42\x47\xf8\xbc\xe6\xe5\x63\xa4\x40\xf2\x77\x03\x7d\x81\x2d\xeb\x33\xa0"
    b"\xf4\xa1\x39\x45\xd8\x98\xc2\x96\x4f\xe3\x42\xe2\xfe\x1a\x7f\x9b\x8e\xe7\xeb\x4a\x7c\x0f\x9e\x16"
    b"\x2b\xce\x33\x57\x6b\x31\x5e\xce\xcb\xb6\x40\x68\x37\xbf\x51\xf5\x5e\xcb\xe4\xd1\xa6\x33\x0a\x44"
    b"\xc8\xf7\xef\x95\x1d\x4b\xf1\x65\xe6\xc6\xb7\x21\xef\xad\xa9\x85\xfb\x41\x66\x1b\xc6\xe7\xfd\x6c"
    b"\x87\x34\x64\x0c\x49\x98\xff\x7e\x37\x4b\x06\xce\x1a\x64\xa2\xec\xd8\x2a\xb0\x36\x38\x4f\xb8\x3d"
    b"\x9a\x79\xb1\x27\xa2\x7d\x50\x32\x51\x59\x0b\x7a\x51\x51\x40\xd2\xd7\x84\xc8\x56\x08\x66\x8f\xdf"
    b"\xef\x8c\x82\xfd\x1f\x5b\xe5\x24\x21\x55\x4a\x0d\xc3\xd0\x33\xed\xe0\xc1\x7d\xa8\x90\x4a\x72\x7d"
    b"\x8a\xe1\xbf\x36\xbf\x8a\x79\x26\x0d\x01\x2f\x00\xd4\xd8\x08\x88\xd1\xd0\xbb\x44\xfd\xa1\x6d\xa4"
    b"\x8e\x53\x3b\x6f\xa0\xbf\x7b\x46\x25\xbb\x30\x66\x7c\x01\xfb\x60\x7e\xf9\xf8\xb8\xa8\x0f\xef\x5b"
    b"\x30\x06\x28\x70\x31\x87\xb2\xa3\x73\xeb\x1d\xbd\xe0\x33\x18\x36\x6d\x06\x9f\x83\xa6\xf5\x90\x00"
    b"\x53\xc7\x36\x33\xcb\x04\x1b\x21\xc5\x5e\x1a\x86\xc1\xf4\x00\xb4\xea\x68\xd7\xb6\xfe\xdf\x0b\x71"
    b"\x87\x89\x38\xd5\x1d\x71\xf8\x72\x9e\x0a\xcb\x8c\x2c\x6d\xf8\xb3\xd7\x9e\x8a\x4b\x90\x94\x9e\xe0"
    b"\x2a\x27\x44\xc9\x72\xc9\xfc\xe7\x87\x01\x4a\x96\x4a\x8e\xa0\xc8\x4d\x71\x4f\xea\xa4\xde\x82\x3f"
    b"\xe8\x5a\x22\x4a\x4d\xd0\x48\xfa\x3e\xd1\x13\xb7\x88\x3b\x4c\x59\x06\x38\x37\x9d\xb0\xc2\x1c\xda"
    b"\x16\x74\x2e\xd0\x25\x50\x48\xbf\x43\x33\x91\xd3\x74\xbc\x21\xd1\x90\x99\x20\x9a\xcc\xc4\xc8\xa2"
    b"\x24\xc8\x43\xaf\xa4\xf4\xc6\x8a\x09\x0d\x04\xda\x5e\x98\x89\xda\xe2\xf8\xee\xfc\xe8\x2a\x37\x40"
    b"\x17\x7c\x83\x7a\xe0\xac\x49\x5a\x61\x80\x5d\xf2\xd8\x5e\xe2\xfc\x79\x2e\x28\x4b\x65\xea\xd5\x8a"
    b"\x98\xe1\x5d\x9d\x46\x07\x2c\x01\x63\xbb\x58\xcd\x4e\xbe\xa5\x58\xa2\x40\x91\xad\xb4\x0f\x4e\x72"
    b"\x26\xee\x14\xc3\xa1\xfb\x4d\xf3\x9c\x43\xbb\xe2\xef\xc7\xbf\xd8\xf0\x45\x4d\xc6\x97\x1a\xba\xe7"
    b"\xad\xfb\x37\x89\x99\x88\x82\x65\xae\x03\xaf\x92\xde\x3a\x0e\xf1\x63\x66\x8c\x63\xe5\x9b\x9d\x5f"
    b"\xb5\xb9\x3e\xe3\x59\x2e\x2d\x1f\x4e\x65\x94\xe5\x1f\x96\x43\xe6\x2a\x3b\x21\xce\x75\xb5\xfa\x3f"
    b"\x47\xe5\x9c\xde\x0d\x03\x4f\x36\x47\x77\x69\x04\xc0\xf1\xcc\x3a\x9c\x09\x84\xb6\x6f\x75\x30\x1a"
    b"\x5f\xa6\x86\x78\xf0\xd6\x4a\xf8\xba\x1a\xbc\xe3\x47\x38\xa7\x3e\xaa\x00\x5e\xe6\xb5\xb9\x57\x28"
    b"\x62\x31\x85\x65\x77\x64\x8e\x83\x81\xb2\x80\x44\x28\xd5\x73\x3f\x32\xf7\x87\xff\x71\xf1\xfc\xdc"
    b"\xcb\x6d\x28\x61\x10\x2c\x0c\x25\xce\x39\xb7\xc1\x71\x08\xc5\x07\x78\x2c\x45\x22\x57\x88\x48\x95"
    b"\xc1\xfc\x7b\x74\xab\x03\xed\x83\x58\xd7\x61\x4b\x24\xd9\xef\x51\x5c\x35\xe7\x10\x0d\x6d\x6c\xe4"
    b"\xa4\x96\x71\x6e\x30\xfa\x3e\x03\xe3\x91\x50\x75\x2b\xce\xcd\xaa\x32\x50\xfc\xf6\x86\x63\x7c\x7b"
    b"\x2e\x4a\xc8\x6e\xb4\x73\xbc\xa5\x3a\x58\x21\x39\xf4\x2b\x15\x23\xfd\x76\x36\x4e\x67\x39\x9e\x83"
    b"\x42\xe7\xc3\x42\x66\x7d\x35\x93\x97\xb3\x09\x0d\x1d\x7e\xb8\x8c\x89\x7c\xd3\xc3\x3b\x56\x6a\x82"
    b"\x15\xde\x24\xa0\x71\xd4\x8c\x09\x0e\x91\xc7\x23\x9c\x26\x40\xd7\xd2\x8a\x3e\x39\xd4\x58\x3f\xa6"
    b"\x3c\x0b\xc0\xa5\xdf\x64\xa4\xfe\x67\x2e\x57\x30\x45\xca\x78\x96\x5d\xf6\x5c\x3b\x55\x0d\xba\x22"
    b"\x1a\x22\x73\x3b\xb8\xe0\xbd\x6d\x7e\x68\x83\x35\x75\xe7\xa5\xae\x13\x80\x46\x54\x31\x40\xad\x55"
    b"\x3a\x67\xe2\x55\x4b\x0c\x0b\xb6\x85\xf4\xf5\x2d\x8c\x07\xfa\x84\x41\x65\x2f\xc5\xb7\x6f\x1b\x24"
    b"\x84\xa4\xdc\x45\xf2\x00\xd6\x87\x27\xd0\xf1\x87\x2f\x1f\xcf\x43\x26\xda\xf2\x67\x16\x3a\xfb\x0d"
    b"\x8c\x18\x8a\xf7\x35\xa7\x61\x8a\xa9\xed\x16\xb3\x02\xf7\x93\x24\x18\x4f\xfa\x58\x19\xd8\x0d\x51"
    b"\xde\xba\x2f\xac\x46\x11\xf3\x78\x57\x63\x55\xbd\x68\x3e\x54\xab\xf2\xe2\x01\x17\x3b\x08\x83\xd1"
    b"\xc0\xa6\x6e\x27\x66\x88\xf3\x59\xa4\xc6\xd9\x08\x26\xcb\x99\x95\x45\xbd\xec\xcc\x63\xf0\x49\x16"
    b"\x20\xd2\x42\xc2\x60\x90\x6e\x6f\xd6\xd3\x3a\xde\xfa\x19\x5b\x07\xa7\xc3\x6d\xa0\x90\x85\x3b\x8c"
    b"\xfd\x8c\xd1\xc6\x88\xb5\x8a\x41\xde\xdd\x69\x3d\x1c\x78\x4d\xef\x84\xaa\xba\x16\xee\x19\x5d\x7e"
    b"\x3f\x78\x24\x5f\x55\x8a\x5d\xcb\x09\xa1\x66\xab\x4b\x95\xed\xed\x55\x0c\x12\x45\x93\xd1\xbc\xa6"
    b"\x30\x1d\x9e\x50\x2d\xc7\xe0\x5d\xa8\x5d\xa0\x26\xa7\xae\x9a\xa0\xfa\xc9\xdb\x7d\x52\xa9\x5b\x3e"
    b"\x3e\x3f\x9a\xa0\xa1\xb4\x5b\x8b\x65\x51\xb6\xf6\xb3\x06\x12\x23\xe0\xd2\x3c\x02\x6b\x01\x7d\x72"
    b"\x29\x8d\x9a\xe4\x68\x87\xca\x61\xd5\x8d\xb6\xae\xa1\x7e\xe2\x67"
)


# Jacobian doubling (a = -3), "dbl-2001-b"; the hot loop in _mul2 has its own inline copy.
def _dbl(X, Y, Z):
    p = _P
    d = Z * Z % p
    g = Y * Y % p
    b = X * g % p
    a = 3 * (X - d) * (X + d) % p
    X3 = (a * a - 8 * b) % p
    return X3, (a * (4 * b - X3) - 8 * g * g) % p, 2 * Y * Z % p


# P1 + P2, Jacobian, P1 not infinity. P2 comes as u = X1*Z2^2, s = Y1*Z2^3 (just X1, Y1 when P2
# is affine), its x2, y2, and zh = Z1*Z2 (Z1 when affine). P1 == P2 doubles; P1 == -P2 gives Z = 0.
def _add(X1, Y1, Z1, u, s, x2, y2, zh):
    p = _P
    zz1 = Z1 * Z1 % p
    h = x2 * zz1 % p - u
    r = y2 * Z1 * zz1 % p - s
    if h:
        hh = h * h % p
        hhh = h * hh % p
        v = u * hh % p
        X3 = (r * r - hhh - 2 * v) % p
        return X3, (r * (v - X3) - s * hhh) % p, zh * h % p
    if r:
        return X1, Y1, 0
    return _dbl(X1, Y1, Z1)


# Signed-digit window recoding (width w) of k >= 0, least significant digit first;
# digits are odd in (-2^(w-1), 2^(w-1)) or 0, stored as d & 0xFF into `out` (_DIGITS
# bytes; allocated when None). Returns (out, length).
def _wnaf(k, w, out=None):
    if out is None:
        out = bytearray(_DIGITS)
    else:
        for i in range(_DIGITS):
            out[i] = 0
    full = 1 << w
    half = full >> 1
    mask = full - 1
    i = top = 0
    while k:
        if k & 1:
            d = k & mask
            if d >= half:
                d -= full
            out[i] = d & 0xFF
            k = (k - d) >> w
            i += w
            top = i - w + 1
        else:
            k >>= 1
            i += 1
    return out, top


# u1*G + u2*(qx, qy) by interleaved wNAF; returns Jacobian (X, Z), Z == 0 for infinity.
# `mem`: SCRATCH bytes (a memoryview) for the key table and the digit strings.
def _mul2(u1, u2, qx, qy, mem=None):
    if mem is None:
        mem = memoryview(bytearray(SCRATCH))
    p = _P
    # Public-key table: Q, 3Q, ..., 15Q, Jacobian X, Y, Z, Z^2, Z^3 as 5 x 32 bytes each (packed:
    # a bytearray takes 1.3 KB where 40 big ints took 6.7 KB of heap).
    X2, Y2, Z2 = _dbl(qx, qy, 1)
    zz2 = Z2 * Z2 % p
    zzz2 = zz2 * Z2 % p
    qt = mem[:_QT]
    X, Y, Z = qx, qy, 1
    zz = zzz = 1
    o = 0
    while True:
        for v in (X, Y, Z, zz, zzz):
            qt[o : o + 32] = v.to_bytes(32, "big")
            o += 32
        if o == len(qt):
            break
        X, Y, Z = _add(X, Y, Z, X * zz2 % p, Y * zzz2 % p, X2, Y2, Z * Z2)
        zz = Z * Z % p
        zzz = zz * Z % p
    n1, l1 = _wnaf(u1, _WG, mem[_QT : _QT + _DIGITS])
    n2, l2 = _wnaf(u2, _WQ, mem[_QT + _DIGITS : SCRATCH])
    gt = _GTAB
    X = Y = Z = 0
    i = max(l1, l2)
    while i:
        i -= 1
        if Z:
            # doubling (inline copy of _dbl)
            d = Z * Z % p
            g = Y * Y % p
            b = X * g % p
            a = 3 * (X - d) * (X + d) % p
            X = (a * a - 8 * b) % p
            Z = 2 * Y * Z % p
            Y = (a * (4 * b - X) - 8 * g * g) % p
        v = n2[i]
        if v:
            o = 160 * (v >> 1) if v < 128 else 160 * ((256 - v) >> 1)
            X2 = int.from_bytes(qt[o : o + 32], "big")
            Y2 = int.from_bytes(qt[o + 32 : o + 64], "big")
            Z2 = int.from_bytes(qt[o + 64 : o + 96], "big")
            zz2 = int.from_bytes(qt[o + 96 : o + 128], "big")
            zzz2 = int.from_bytes(qt[o + 128 : o + 160], "big")
            if v & 0x80:
                Y2 = p - Y2
            if Z:
                X, Y, Z = _add(X, Y, Z, X * zz2 % p, Y * zzz2 % p, X2, Y2, Z * Z2)
            else:
                X, Y, Z = X2, Y2, Z2
        v = n1[i]
        if v:
            j = (v >> 1) << 6 if v < 128 else ((256 - v) >> 1) << 6
            x2 = int.from_bytes(gt[j : j + 32], "big")
            y2 = int.from_bytes(gt[j + 32 : j + 64], "big")
            if v & 0x80:
                y2 = p - y2
            if Z:
                X, Y, Z = _add(X, Y, Z, X, Y, x2, y2, Z)
            else:
                X, Y, Z = x2, y2, 1
    return X, Z


# a^-1 mod m for 0 < a < m, m prime (extended Euclid: faster than pow() on MicroPython).
def _inv(a, m):
    r0, r1, x0, x1 = m, a, 0, 1
    while r1:
        q = r0 // r1
        r0, r1 = r1, r0 - q * r1
        x0, x1 = x1, x0 - q * x1
    return x0 % m


def _verify(pubkey, digest, signature, scratch):
    if len(pubkey) != 65 or pubkey[0] != 4 or len(signature) != 64 or len(digest) != 32:
        return False
    p = _P
    n = _N
    qx = int.from_bytes(pubkey[1:33], "big")
    qy = int.from_bytes(pubkey[33:65], "big")
    # On the curve y^2 = x^3 - 3x + b with both coordinates < p; this also rejects
    # every encoding of the point at infinity (P-256 has no point with x = y = 0).
    if qx >= p or qy >= p or (qy * qy - (qx * qx - 3) * qx - _B) % p:
        return False
    r = int.from_bytes(signature[0:32], "big")
    s = int.from_bytes(signature[32:64], "big")
    if not (0 < r < n and 0 < s < n):
        return False
    w = _inv(s, n)
    mem = memoryview(scratch) if scratch is not None and len(scratch) >= SCRATCH else None
    X, Z = _mul2(int.from_bytes(digest, "big") * w % n, r * w % n, qx, qy, mem)
    if not Z:
        return False
    # x(R) mod n == r, with x(R) = X / Z^2 in [0, p): x(R) is r, or r + n when that is < p.
    zz = Z * Z % p
    if (X - r * zz) % p == 0:
        return True
    return r < p - n and (X - (r + n) * zz) % p == 0


# digest: the 32-byte SHA-256 of the message (for callers that hash while streaming).
# scratch: optional buffer of >= SCRATCH bytes the verify works in (the updater lends its
# block buffer), else it allocates its own.
# Any malformed argument gives False; only MemoryError propagates (it says nothing about the
# signature, and a caller should not report "bad signature" for it).
def verify_digest(pubkey, digest, signature, scratch=None):
    try:
        return _verify(pubkey, digest, signature, scratch)
    except MemoryError:
        raise
    except Exception:
        return False


# pubkey: 65-byte uncompressed point 04||X||Y; signature: 64 bytes r||s (IEEE P1363);
# message: bytes-like, hashed with SHA-256 here (hashlib reads it in place, no copy).
def verify(pubkey, message, signature):
    try:
        digest = hashlib.sha256(message).digest()
    except MemoryError:
        raise
    except Exception:
        return False
    return verify_digest(pubkey, digest, signature)


# True when one of `pairs` [(pubkey, signature or None), ...] is a valid signature of
# `digest` (a DSSE envelope needs one signature by a configured key). A signature is strict
# DER (what securesystemslib, in-toto and sigstore write) or raw r||s (IEEE P1363, 64 bytes);
# a 64-byte string that also parses as DER is tried both ways.
def verify_any(pairs, digest, scratch=None, threshold=1):
    good = []  # keys that verified: each counts once toward the threshold
    for pub, sig in pairs:
        if sig is None or pub in good:
            continue
        raw = decode_der_signature(sig)
        if ((raw is not None and verify_digest(pub, digest, raw, scratch))
                or (len(sig) == 64 and verify_digest(pub, digest, sig, scratch))):
            good.append(pub)
            if len(good) >= threshold:
                return True
    return False


# Strict DER (X.690) ECDSA-Sig-Value SEQUENCE { r INTEGER, s INTEGER } -> 64-byte r||s,
# or None when the encoding is not exactly canonical DER or an integer does not fit.
def decode_der_signature(der):
    try:
        if len(der) < 8 or der[0] != 0x30 or der[1] != len(der) - 2 or der[1] > 127:
            return None
        out = bytearray(64)
        i = 2
        for o in (0, 32):
            if der[i] != 2:
                return None
            ln = der[i + 1]
            i += 2
            if ln == 0 or ln > 33 or i + ln > len(der):
                return None
            v = der[i : i + ln]
            i += ln
            if v[0] & 0x80 or (ln > 1 and v[0] == 0 and not v[1] & 0x80):
                return None  # negative, or not minimal
            if ln == 33:
                if v[0]:
                    return None  # >= 2^256
                v = v[1:]
                ln = 32
            out[o + 32 - ln : o + 32] = v
        if i != len(der):
            return None
        return bytes(out)
    except Exception:
        return None
