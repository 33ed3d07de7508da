"""ECDSA P-256/SHA-256 verify: device/mpota/p256.py on the MicroPython unix port vs `ecdsa` on CPython.

Both sides verify the same signatures (8 keys, messages of 100-400 bytes, made by the `ecdsa`
package) on the same machine, each timed as the best of several rounds (the machine is shared;
the minimum is the least disturbed figure). The device side runs the module compiled by mpy-cross,
as deployed, and each call parses the 65-byte key and hashes the message, as the updater's call does.
The `ecdsa` side is timed two ways, key parsed per call (`VerifyingKey.from_string` + `verify`) and
key object reused; the ratio is taken against the faster of the two. Target (issue 4): <= 3.5x.
"""

from __future__ import annotations

import hashlib
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MICROPYTHON = Path(sys.executable).with_name("micropython")
MPY_CROSS = Path(sys.executable).with_name("mpy-cross")
KEYS = 8
ROUNDS = 7
TARGET = 3.5

_DEVICE_SCRIPT = r"""
import sys, time, binascii
sys.path.insert(0, sys.argv[1])
import mpota.p256 as p256
cases = []
with open(sys.argv[2]) as f:
    for line in f:
        pub, msg, sig = line.split()
        cases.append((binascii.unhexlify(pub), binascii.unhexlify(msg), binascii.unhexlify(sig)))
rounds = int(sys.argv[3])
for pub, msg, sig in cases:
    if not p256.verify(pub, msg, sig) or p256.verify(pub, msg + b"x", sig):
        raise SystemExit("wrong verdict")
best = None
for _ in range(rounds):
    t = time.ticks_us()
    for pub, msg, sig in cases:
        p256.verify(pub, msg, sig)
    us = time.ticks_diff(time.ticks_us(), t) / len(cases)
    if best is None or us < best:
        best = us
print(best)
"""


def make_cases(n: int = KEYS) -> list[tuple[bytes, bytes, bytes]]:
    from ecdsa import NIST256p, SigningKey

    cases = []
    for i in range(n):
        seed = int.from_bytes(hashlib.sha256(b"mpota bench key %d" % i).digest(), "big")
        sk = SigningKey.from_secret_exponent(seed % (NIST256p.order - 1) + 1, curve=NIST256p)
        msg = hashlib.sha256(b"msg %d" % i).digest() * (3 + i % 10)
        sig = sk.sign_deterministic(msg, hashfunc=hashlib.sha256)
        cases.append((b"\x04" + sk.get_verifying_key().to_string(), msg, sig))
    return cases


def device_us_per_verify(cases: list[tuple[bytes, bytes, bytes]], rounds: int = ROUNDS) -> float:
    with tempfile.TemporaryDirectory(prefix="bench_p256_") as tmp:
        lib = Path(tmp) / "lib"
        (lib / "mpota").mkdir(parents=True)
        for mod in ("__init__", "p256"):
            src = REPO / "device" / "mpota" / f"{mod}.py"
            dst = lib / "mpota" / f"{mod}.mpy"
            subprocess.run([str(MPY_CROSS), "-o", str(dst), str(src)], check=True, capture_output=True)
        data = Path(tmp) / "cases.txt"
        data.write_text("".join(f"{p.hex()} {m.hex()} {s.hex()}\n" for p, m, s in cases))
        script = Path(tmp) / "bench.py"
        script.write_text(_DEVICE_SCRIPT)
        proc = subprocess.run(
            [str(MICROPYTHON), "-X", "heapsize=1M", str(script), str(lib), str(data), str(rounds)],
            capture_output=True, text=True, timeout=600,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"MicroPython run failed: {proc.stderr.strip() or proc.stdout.strip()}")
        return float(proc.stdout.strip().splitlines()[-1])


def ecdsa_us_per_verify(cases: list[tuple[bytes, bytes, bytes]], rounds: int = ROUNDS) -> tuple[float, float]:
    from ecdsa import NIST256p, VerifyingKey

    def per_call() -> None:
        for pub, msg, sig in cases:
            VerifyingKey.from_string(pub, curve=NIST256p).verify(sig, msg, hashfunc=hashlib.sha256)

    keys = [VerifyingKey.from_string(pub, curve=NIST256p) for pub, _, _ in cases]

    def reused() -> None:
        for vk, (_, msg, sig) in zip(keys, cases, strict=True):
            vk.verify(sig, msg, hashfunc=hashlib.sha256)

    out = []
    for fn in (per_call, reused):
        fn()  # warm up
        best = float("inf")
        for _ in range(rounds):
            t = time.perf_counter()
            fn()
            best = min(best, (time.perf_counter() - t) / len(cases) * 1e6)
        out.append(best)
    return out[0], out[1]


def run() -> dict[str, Any]:
    import ecdsa

    cases = make_cases()
    device = device_us_per_verify(cases)
    per_call, reused = ecdsa_us_per_verify(cases)
    baseline = min(per_call, reused)
    return {
        "device_ms": device / 1000,
        "ecdsa_ms": baseline / 1000,
        "ecdsa_per_call_ms": per_call / 1000,
        "ecdsa_reused_key_ms": reused / 1000,
        "ratio": device / baseline,
        "target": TARGET,
        "keys": len(cases),
        "rounds": ROUNDS,
        "ecdsa_version": ecdsa.__version__,
        "python": platform.python_version(),
    }


def main() -> None:
    r = run()
    print(
        f"p256 verify: {r['device_ms']:.2f} ms on the MicroPython unix port (.mpy) vs "
        f"{r['ecdsa_ms']:.2f} ms ecdsa {r['ecdsa_version']} on CPython {r['python']} "
        f"(key per call {r['ecdsa_per_call_ms']:.2f} / reused {r['ecdsa_reused_key_ms']:.2f}): "
        f"{r['ratio']:.2f}x (target <= {r['target']}x; {r['keys']} keys, best of {r['rounds']} rounds)"
    )


if __name__ == "__main__":
    main()
