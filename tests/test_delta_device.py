"""The device's patch applier (device/mpota/delta.py) against patches detools makes, under CPython and
the MicroPython unix port (tests/delta_runner.py), plus patch attacks: every one ends in BadPatch
(or, for a well-formed patch made for another base, in an image whose hash the updater refuses),
and the running slot is only ever read."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
from pathlib import Path

from detools.common import pack_size

from host_tools.delta import apply_detools, detools_patch
from sim.deviceproc import import_path_env, interpreter_cmd

REPO = Path(__file__).resolve().parent.parent
RUNNER = REPO / "tests" / "delta_runner.py"


def program(seed: int, size: int) -> bytes:
    """Code-like bytes: repeated instruction-ish patterns with addresses, not pure noise."""
    rnd = random.Random(seed)
    ops = [rnd.randbytes(rnd.choice((2, 3, 4))) for _ in range(300)]
    out = bytearray()
    while len(out) < size:
        out += rnd.choice(ops) + (0x40080000 + rnd.randrange(1 << 16)).to_bytes(4, "little")
    return bytes(out[:size])


def release(base: bytes, seed: int, edits: int, shift: int = 0) -> bytes:
    """The next release: a few functions changed, some code inserted (addresses move)."""
    rnd = random.Random(seed)
    new = bytearray(base)
    for _ in range(edits):
        at = rnd.randrange(len(new) - 100)
        new[at:at + rnd.randrange(4, 60)] = rnd.randbytes(rnd.randrange(4, 60))
    if shift:
        at = rnd.randrange(len(new))
        new[at:at] = program(seed + 1, shift)
    return bytes(new)


BASE = program(1, 150_000)
PAIRS = {
    "patch_release": (BASE, release(BASE, 2, 10)),
    "minor_release": (BASE, release(BASE, 3, 200, shift=5000)),
    "grows": (BASE[:40_000], release(BASE, 4, 30, shift=20_000)),
    "shrinks": (BASE, release(BASE, 5, 30)[:90_000]),
    "identical": (BASE, BASE),
    "unrelated": (program(9, 30_000), program(10, 33_333)),
    "one_byte": (b"\x01", b"\x02"),
    "tiny_base": (b"\x00" * 10, program(11, 5000)),
}


def hexsha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def craft(size: int, *chunks: tuple[int, bytes, int, bytes, int], header: int = 0, df: int = 0,
          tail: bytes = b"") -> bytes:
    """A sequential patch by hand: (diff size, diff, extra size, extra, adjustment) per chunk."""
    out = bytes([header]) + pack_size(size) + pack_size(df)
    for dlen, diff, elen, extra, adj in chunks:
        out += pack_size(dlen) + diff + pack_size(elen) + extra + pack_size(adj)
    return out + tail


def cases() -> dict[str, tuple[bytes, bytes, int, str]]:
    """name -> (base, patch, declared size, expected: sha256 hex of the output or 'BadPatch')."""
    out: dict[str, tuple[bytes, bytes, int, str]] = {}
    for name, (base, new) in PAIRS.items():
        p = detools_patch(base, new)
        assert apply_detools(base, p) == new
        out[name] = (base, p, len(new), hexsha(new))
    base, new = PAIRS["minor_release"]
    good = detools_patch(base, new)
    n = len(new)
    bad = "BadPatch"
    out.update({
        # a valid patch for another base: it applies, the result hashes wrong (the updater refuses it)
        "other_base": (release(base, 77, 50), good, n, "other"),
        "truncated_header": (base, good[:1], n, bad),
        "truncated_middle": (base, good[: len(good) // 2], n, bad),
        "truncated_last_byte": (base, good[:-1], n, bad),
        "trailing_byte": (base, good + b"\0", n, bad),
        "declared_size_differs": (base, good, n + 1, bad),
        "heatshrink_header": (base, detools_patch(base, new, "heatshrink"), n, bad),
        "in_place_type": (base, bytes([0x10]) + good[1:], n, bad),
        "data_format": (base, craft(4, (0, b"", 4, b"abcd", 0), df=3), 4, bad),
        "read_past_base": (b"\0" * 100, craft(200, (200, b"\1" * 200, 0, b"", 0)), 200, bad),
        "read_after_adjust_past_base": (b"\0" * 100, craft(20, (10, b"\1" * 10, 0, b"", 85),
                                                           (10, b"\1" * 10, 0, b"", 0)), 20, bad),
        "read_before_base": (b"\0" * 100, craft(20, (10, b"\1" * 10, 0, b"", -20),
                                                (10, b"\1" * 10, 0, b"", 0)), 20, bad),
        "diff_past_image": (b"\0" * 100, craft(10, (20, b"\1" * 20, 0, b"", 0)), 10, bad),
        "extra_past_image": (b"\0" * 100, craft(10, (0, b"", 11, b"x" * 11, 0)), 10, bad),
        "negative_diff_size": (b"\0" * 100, craft(10, (-5, b"", 10, b"x" * 10, 0)), 10, bad),
        "overflowing_size": (b"\0" * 100, bytes([0]) + pack_size(10) + pack_size(0) + b"\xff" * 12, 10, bad),
        "huge_declared_size": (b"\0" * 100, craft(2**40, (0, b"", 4, b"abcd", 0)), 4, bad),
        "empty_patch": (base, b"", n, bad),
        "exact_reads_ok": (b"\x05" * 100, craft(100, (100, b"\1" * 100, 0, b"", 0)), 100,
                           hexsha(b"\x06" * 100)),
        "wraps_mod_256": (b"\xff" * 10, craft(10, (10, b"\x02" * 10, 0, b"", 0)), 10, hexsha(b"\x01" * 10)),
    })
    return out


CASES = cases()


def run_device(interp: str, tmp_path: Path) -> dict[str, str]:
    for name, (base, patch, size, _) in CASES.items():
        (tmp_path / f"{name}.base").write_bytes(base)
        (tmp_path / f"{name}.patch").write_bytes(patch)
        (tmp_path / f"{name}.size").write_text(str(size))
    args = [str(RUNNER), str(tmp_path), *CASES]
    p = subprocess.run(interpreter_cmd(interp, "2M") + args, capture_output=True, text=True, timeout=300,
                       env=import_path_env(interp))
    assert p.returncode == 0, p.stdout + p.stderr
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[7:])  # type: ignore[no-any-return]


def test_applier(interp: str, tmp_path: Path) -> None:
    got = run_device(interp, tmp_path)
    for name, (*_, want) in CASES.items():
        if want == "other":  # applies, but not to the image the manifest hashes
            assert got[name] not in ("BadPatch", hexsha(PAIRS["minor_release"][1])), name
        else:
            assert got[name] == want, name


def test_running_slot_only_read_and_mutations_agree_with_detools() -> None:
    """In-process (CPython): random mutations of a real patch either raise BadPatch or give exactly
    detools' output; the base partition is never written (it has no write method to call)."""
    import mpota.delta as delta
    import mpota.errors as errors
    from delta_runner import Pieces, ReadOnly
    base = program(21, 20_000)
    new = release(base, 22, 40, shift=500)
    good = detools_patch(base, new)
    rnd = random.Random(5)
    outcomes = {"bad": 0, "same": 0}
    for _ in range(300):
        p = bytearray(good)
        for _ in range(rnd.randrange(1, 4)):  # the lengths sit near the start: hit them often
            p[rnd.randrange(48 if rnd.random() < 0.5 else len(p))] = rnd.randrange(256)
        try:
            ref: bytes | None = apply_detools(base, bytes(p))
        except Exception:
            ref = None
        part = ReadOnly(base)
        try:
            r = delta.Patched(Pieces(bytes(p)), part, len(base), len(new))
            buf = bytearray(len(new) + 10)
            n = r.readinto(buf)
            r.finish()
            got: bytes | None = bytes(buf[:n])
        except errors.IntegrityError as e:
            assert e.code == "bad_patch"
            got = None
        if got is None:
            outcomes["bad"] += 1
        else:
            assert got == ref  # whatever we make, detools makes too (and its hash decides)
            outcomes["same"] += 1
    assert outcomes["bad"] > 5 and outcomes["same"] > 5, outcomes
