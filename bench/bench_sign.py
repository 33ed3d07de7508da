"""Time to sign a 1.5 MB app image into a release folder (mpota sign), plain and compressed, and to verify it.

The whole path is timed: image parse + validation, SHA-256, (zlib level 9 with a 1 KiB window and a
round-trip decode), manifest, DSSE signature, atomic writes. Best of several runs.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from host_tools.imagebuild import build_app_image
from host_tools.keys import generate_key, load_private_key
from host_tools.release import sign_release, verify_release

TARGET = 1_500_000
RUNS = 5


def _image() -> bytes:
    # Half filler (incompressible), half zeros (like unused space in real firmware): a realistic ratio.
    base = len(build_app_image("esp32", "1.0.0", code_size=0))
    code_len = (TARGET - base) // 4 * 4
    half = code_len // 2
    filler = build_app_image("esp32", "1.0.0", code_size=half)[0x10020 : 0x10020 + half]
    code = filler + bytes(code_len - half)
    return build_app_image("esp32", "1.0.0", "bench", 1, code=code)


def run() -> dict[str, object]:
    image = _image()
    out: dict[str, object] = {"image_bytes": len(image)}
    with tempfile.TemporaryDirectory(prefix="mpota-bench-sign-") as tmp:
        d = Path(tmp)
        (d / "app.bin").write_bytes(image)
        generate_key(d / "key", "release")
        key = load_private_key(d / "key", "release")
        for label, compress in (("plain", False), ("zlib", True)):
            best_sign = best_verify = float("inf")
            for i in range(RUNS):
                rel = d / f"{label}-{i}"
                t0 = time.perf_counter()
                info = sign_release(d / "app.bin", key, "esp32-generic-4mb", "1.0.0", out_dir=rel,
                                    compress=compress)
                t1 = time.perf_counter()
                verify_release(rel, [key.public])
                t2 = time.perf_counter()
                best_sign, best_verify = min(best_sign, t1 - t0), min(best_verify, t2 - t1)
            out[f"{label}_sign_s"] = round(best_sign, 4)
            out[f"{label}_verify_s"] = round(best_verify, 4)
            out[f"{label}_transfer_bytes"] = info.manifest.firmware.transfer_size
    return out


def line(r: dict[str, object]) -> str:
    return (
        f"sign: {int(str(r['image_bytes'])) / 1e6:.2f} MB app image signed in {r['plain_sign_s']} s "
        f"(verify {r['plain_verify_s']} s); with zlib w10 {r['zlib_sign_s']} s "
        f"({int(str(r['zlib_transfer_bytes'])) / 1e6:.2f} MB on the wire, verify {r['zlib_verify_s']} s); "
        f"best of {RUNS}"
    )


if __name__ == "__main__":
    res = run()
    if "--json" in sys.argv:
        print(json.dumps(res, indent=1))
    print(line(res))
