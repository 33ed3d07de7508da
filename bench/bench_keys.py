"""Heap of a keys walk (issue 21): update() on a board that must first walk the feed's keys chain,
next to the same update on a board that already trusts the newest keys, by bench_heap's measure.

bench_heap's measure (its functions, not a copy): the smallest MicroPython unix-port `-X heapsize`
with which the script completes (bisection to HEAP_STEP, confirmed upwards over STABLE), the
device package as .mpy, on a fresh simulated board per probe, minus the floor of an empty script
on the same board. Both boards run bench_heap's update script against one loopback feed:

- normal: seeded (`mpota deploy --keys-doc`) with the feed's newest keys version: the channel and
  the manifest, two P-256 verifies, then the image;
- walk: seeded with version 1 of a 2-of-3 root while the channel (signed by a rollout key that only
  version 4 lists) names keys version 4: the channel is refused (unknown key), its keys_version
  read, keys/2..4.json fetched and each checked (v2 and v3 rotate the root: two old and two new
  root signatures each, v4 two root signatures), stored and used, the channel checked again, then
  the manifest and the image as on the normal board.

The image is smaller than bench_heap's 1.5 MB (default 256 KB): the floor is set by the check's and
the transfer's working set, not by the image's length (a streamed transfer), and each probe moves
the whole image. Also printed: the largest live heap at a connection during the walk and during the
normal update (bench_heap's phase marks, one run each with an ample heap; the walk's marks list is
longer, which its later marks include).

The floors vary by a few hundred bytes between runs (fresh keys each run: signature lengths, the
keys documents' sizes; progress reports by time). Where the walk's heap went (mpota.keydoc):
the config module loaded a second time by mpota.keystore (~5.5 KB), mpota.dsse left in RAM by
the refused channel, the envelope held by the caller's frame through both verifies, the 4 KiB
block buffer held across the fetches (+9.5 KB over the normal update), then fragmentation (a
contiguous block per envelope and per verify's scratch): the walk now reads each envelope into one
2 KiB buffer made before its first fetch and lends it to P-256 once parsed.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.bench_heap import _BARE, _EMPTY, _PHASES, _UPDATE, HEAP_STEP, STABLE, _floor

IMAGE_BYTES = 256 * 1024
_ROOTS = ("rootA", "rootB", "rootC", "rootD", "rootE", "rootF")


def _chain(tmp: Path, feed: Any, keys: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """keys/1..4.json in the feed (as tests/test_keys_rotation.py's skipped-two-root-rotations case);
    returns (v1, v4) as dicts, the seeds of the walking and the normal board."""
    from host_tools import keyring
    from host_tools.keydoc import KeysDoc, RoleKeys
    from host_tools.keys import generate_key, load_private_key

    for name in (*_ROOTS, "rollout2"):
        path = tmp / "keys" / f"{name}.key"
        generate_key(path, "root" if name.startswith("root") else "rollout")
        keys.paths[name] = path
        keys.keys[name] = load_private_key(path)

    def doc(version: int, root: tuple[str, ...], rollout: str = "rollout") -> KeysDoc:
        return KeysDoc("bench", version, {
            "root": RoleKeys(2, [keys.public_hex(n) for n in root]),
            "release": RoleKeys(1, [keys.public_hex("release")]),
            "rollout": RoleKeys(1, [keys.public_hex(rollout)])})

    def add(d: KeysDoc, *signers: str) -> None:
        keyring.add(feed.root, d, [keys.keys[n] for n in signers])

    v1 = doc(1, ("rootA", "rootB", "rootC"))
    add(v1, "rootA", "rootB")
    add(doc(2, ("rootA", "rootD", "rootE")), "rootA", "rootB", "rootD")
    add(doc(3, ("rootD", "rootE", "rootF")), "rootD", "rootE")
    v4 = doc(4, ("rootD", "rootE", "rootF"), "rollout2")
    add(v4, "rootE", "rootF")
    return v1.to_dict(), v4.to_dict()


def run(image_bytes: int = IMAGE_BYTES) -> dict[str, Any]:
    from sim.feedkit import Board, Feed, Keys, device_config, factory_config, image, serve

    with tempfile.TemporaryDirectory(prefix="mpota-bench-keys-") as tmp_s:
        tmp = Path(tmp_s)
        keys = Keys(tmp / "keys")
        feed = Feed(tmp / "feed", keys)
        seed_walk, seed_new = _chain(tmp, feed, keys)
        feed.add_release("1.1.0", image("1.1.0", size=image_bytes))
        feed.set_channel("1.1.0", key="rollout2", doc={**feed.channel_doc("1.1.0"), "keys_version": 4})
        running = image("1.0.0")
        with serve(feed.root) as srv:
            base = device_config(srv, keys, timeout_ms=10000, **factory_config(running, "1.0.0"))
            cfgs = {"normal": {**base, "trust": seed_new}, "walk": {**base, "trust": seed_walk}}
            count = [0]
            probes: list[tuple[str, int, bool]] = []

            def board(which: str) -> Any:
                count[0] += 1
                srv.reset()
                return Board(tmp / f"b{count[0]}", running, cfgs[which], device="mpy")

            def ok_for(body: str, which: str) -> Any:
                def ok(heap: int) -> bool:
                    srv.requests.clear()
                    out = board(which).run(body, "micropython", heapsize=str(heap), timeout=300)
                    good = (out.kind == "exit" and '"outcome": "ok"' in out.stdout
                            and "MemoryError" not in out.stdout + out.stderr)
                    if body.endswith(_UPDATE):  # every report reached the server
                        good = good and [e for e, _ in srv.events()][-1:] == ["installed"]
                        walked = [r.path for r in srv.requests if r.path.startswith("/keys/")]
                        good = good and walked == ([] if which == "normal" else
                                                   ["/keys/2.json", "/keys/3.json", "/keys/4.json"])
                    probes.append((which if body.endswith(_UPDATE) else "empty", heap, good))
                    return good
                return ok

            hi = 1 << 20
            ok_empty = ok_for(_BARE, "walk")
            ok_app = ok_for(_EMPTY, "walk")
            ok_normal = ok_for(_UPDATE, "normal")
            ok_walk = ok_for(_UPDATE, "walk")
            if not (ok_app(hi) and ok_normal(hi) and ok_walk(hi)):
                raise SystemExit("bench_keys: the scripts fail even with a 1 MB heap")
            empty = _floor(ok_empty, 2048, hi)
            app = _floor(ok_app, empty - HEAP_STEP, hi)
            normal = _floor(ok_normal, app - HEAP_STEP, hi)
            walk = _floor(ok_walk, app - HEAP_STEP, hi)
            phases = {w: board(w).run(_PHASES, "micropython", heapsize=str(hi), timeout=300).result()["marks"]
                      for w in ("normal", "walk")}
    peaks = {w: max(m, key=lambda x: x[1]) for w, m in phases.items()}
    return {"image_bytes": image_bytes, "empty_floor": empty, "app_floor": app, "normal_floor": normal,
            "walk_floor": walk, "normal_kb": round((normal - empty) / 1024, 1),
            "walk_kb": round((walk - empty) / 1024, 1), "walk_over_normal": walk - normal,
            "met": walk <= normal, "probes": probes, "step": HEAP_STEP, "stable": STABLE, "phases": phases,
            "peaks": {w: [p[0], round(p[1] / 1024, 1), p[2]] for w, p in peaks.items()}}


def main() -> None:
    r = run()
    print(json.dumps(r), file=sys.stderr)
    pn, pw = r["peaks"]["normal"], r["peaks"]["walk"]
    print(f"keys walk heap (MicroPython, .mpy, simulated board, bench_heap's measure, same run) above an "
          f"empty board ({r['empty_floor']} B floor), update() of {r['image_bytes'] // 1024} KB: walking "
          f"keys v1->v4 (two root rotations, 10 P-256 verifies) first {r['walk_kb']} KB vs a board already "
          f"on v4 {r['normal_kb']} KB: {r['walk_over_normal']:+d} B "
          f"({'within' if r['met'] else 'NOT within'} the normal update's floor); largest live heap at a "
          f"connection: walk {pw[1]} KB ({pw[0]}; {pw[2]}) vs normal {pn[1]} KB ({pn[0]}; {pn[2]}) "
          f"(step {r['step']} B, floors stable over +{r['stable']} B)")


if __name__ == "__main__":
    main()
