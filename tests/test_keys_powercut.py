"""A power cut at every filesystem operation of a keys-version save (mpota.keystore: temp file,
write, close, rename over mpota_keys.json) on the simulated board's filesystem model
(sim/fakes/simfs.py: the file operations under a watched path are power-cut points, a cut leaves
the bytes written so far). After each cut the board trusts the old or the new keys version, read
from an intact file (never a broken one), and its next poll walks on and installs the update.
Both interpreters."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from host_tools import keyring
from host_tools.keydoc import KeysDoc, RoleKeys
from host_tools.keys import generate_key, load_private_key
from sim.feedkit import Board, Feed, Keys, device_config, factory_config, image, serve, update_script

RUNNING, NEW = "1.0.0", "1.1.0"
KEYS_FILE = "mpota_keys.json"
INTERPRETERS = ["cpython", pytest.param("micropython", marks=pytest.mark.mpy)]


def _keys(tmp: Path) -> Keys:
    k = Keys(tmp / "keys")
    for name in ("rootA", "rootB", "rollout2", "rollout3", "rollout4"):
        path = k.paths["release"].parent / f"{name}.key"
        generate_key(path, "root" if name.startswith("root") else "rollout")
        k.paths[name] = path
        k.keys[name] = load_private_key(path)
    return k


def _doc(k: Keys, version: int, rollout: str) -> KeysDoc:
    return KeysDoc("acme", version, {"root": RoleKeys(2, [k.public_hex("rootA"), k.public_hex("rootB")]),
                                     "release": RoleKeys(1, [k.public_hex("release")]),
                                     "rollout": RoleKeys(1, [k.public_hex(rollout)])})


def _publish(feed: Feed, k: Keys, version: int, rollout: str) -> KeysDoc:
    doc = _doc(k, version, rollout)
    keyring.add(feed.root, doc, [k.keys["rootA"], k.keys["rootB"]])
    feed.set_channel(NEW, key=rollout, doc={**feed.channel_doc(NEW), "keys_version": version})
    return doc


def _stored(board_dir: Path) -> int | None:
    """The version in the board's keys file (None: no file); a file that is not a whole keys
    document fails the test."""
    p = board_dir / "fs" / KEYS_FILE
    if not p.exists():
        return None
    doc = json.loads(p.read_text())
    assert set(doc) == {"fleet", "version", "roles"} and doc["fleet"] == "acme", doc
    return int(doc["version"])


@pytest.mark.parametrize("interp", INTERPRETERS)
def test_power_cut_at_every_file_operation_of_a_keys_save(tmp_path: Path, interp: str) -> None:
    from sim.board import SimBoard

    k = _keys(tmp_path)
    feed = Feed(tmp_path / "feed", k)
    feed.add_release(NEW, image(NEW))
    v1 = _doc(k, 1, "rollout")
    keyring.add(feed.root, v1, [k.keys["rootA"], k.keys["rootB"]])
    running = image(RUNNING)
    watch = ["/" + KEYS_FILE]  # the file and its temp file
    with serve(feed.root) as server:
        cfg = device_config(server, k, trust=v1.to_dict(), **factory_config(running, RUNNING))
        board = Board(tmp_path / "ref", running, cfg, "mpy" if interp == "micropython" else "copy",
                      fs_model=True)
        _publish(feed, k, 2, "rollout2")
        assert board.run(update_script("check()"), interp).result()["outcome"] == "ok"
        assert _stored(board.dir) == 2  # the old version: stored, as a board that walked before
        _publish(feed, k, 3, "rollout3")
        _publish(feed, k, 4, "rollout4")  # the poll below saves v3, then v4
        base = tmp_path / "base"
        shutil.copytree(board.dir, base)
        ref = board.run(update_script("check()"), interp, fs_cuts=watch)
        assert ref.result()["outcome"] == "ok" and _stored(board.dir) == 4
        assert board.sim.last is not None
        boot_ops = board.sim.last.boot_ops
        files = [n for n, (kind, _, _) in enumerate(ref.log, 1) if kind == "file" and n > boot_ops]
        assert len(files) >= 8, ref.log  # per save: open the temp file, write, close, rename
        seen = set()
        heap = "2m" if interp == "micropython" else None
        for n in files:
            for when in ("before", "after"):
                d = tmp_path / f"cut-{n}-{when}"
                shutil.copytree(base, d)
                b = SimBoard(d)
                head = "import simboot\nCONFIG = simboot.CONFIG\n"
                cut = b.run(head + update_script("check()"), interp, cut=(n, when), fs_cuts=watch,
                            heapsize=heap)
                assert cut.kind == "powercut", (n, when, cut.kind, cut.stdout[-2000:])
                v = _stored(d)
                assert v in (2, 3, 4), (n, when, v)
                seen.add(v)
                # the next poll: the board reads what it trusts, walks on and installs
                server.requests.clear()
                res = b.run(head + update_script(), interp, heapsize=heap)
                out = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
                assert out and json.loads(out[-1][7:]).get("version") == NEW, (n, when, res.stdout[-2000:])
                assert _stored(d) == 4
                walked = [r.path for r in server.requests if r.path.startswith("/keys/")]
                assert walked == [f"/keys/{i}.json" for i in range(v + 1, 5)], (n, when, v, walked)
                shutil.rmtree(d)
        assert seen == {2, 3, 4}  # cuts early keep v2, between the saves v3, late ones v4
    print(f"{interp}: {2 * len(files)} cut points (before and after {len(files)} file operations)")
