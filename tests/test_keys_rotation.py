"""Keys rotated and revoked over the air, end to end: a simulated board (CPython and the MicroPython
unix port) polls a real signed feed on loopback whose keys document (keys/<N>.json, host_tools.keyring)
changes under it. The board walks the versions the channel names one at a time, stores the one it
took, and from then on trusts only its keys; a normal poll fetches no keys document."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from host_tools import keyring
from host_tools.dsse import envelope_bytes, sign_envelope
from host_tools.keydoc import KEYS_PAYLOAD_TYPE, KeysDoc, RoleKeys
from host_tools.keys import PrivateKey, generate_key, load_private_key
from host_tools.release import cosign_release
from sim.feedkit import (
    Board,
    Feed,
    FeedEnv,
    FeedServer,
    Keys,
    device_config,
    image,
    sign_channel_bytes,
    update_script,
)

RUNNING = "1.0.0"
NEW = "1.1.0"
EXTRA = ("rollout2", "release2", "rootA", "rootB", "rootC", "rootD", "rootE", "rootF")


@pytest.fixture(scope="module")
def keys(keys: Keys) -> Keys:
    # conftest's key set, with more roots, a second release and rollout key
    k = keys
    folder = k.paths["release"].parent
    for name in EXTRA:
        path = folder / f"{name}.key"
        generate_key(path, "root" if name.startswith("root") else name.rstrip("2"))
        k.paths[name] = path
        k.keys[name] = load_private_key(path)
    return k


class Env(FeedEnv):
    def k(self, *names: str) -> list[PrivateKey]:
        return [self.keys.keys[n] for n in names]

    def hexes(self, *names: str) -> list[str]:
        return [self.keys.public_hex(n) for n in names]

    def doc(self, version: int, root: tuple[str, ...] = ("rootA", "rootB", "rootC"), root_t: int = 2,
            release: tuple[str, ...] = ("release",), release_t: int = 1,
            rollout: tuple[str, ...] = ("rollout",), fleet: str = "acme") -> KeysDoc:
        return KeysDoc(fleet, version, {"root": RoleKeys(root_t, self.hexes(*root)),
                                        "release": RoleKeys(release_t, self.hexes(*release)),
                                        "rollout": RoleKeys(1, self.hexes(*rollout))})

    def add_keys(self, doc: KeysDoc, *signers: str, legacy: KeysDoc | None = None) -> None:
        keyring.add(self.feed.root, doc, self.k(*signers), legacy)

    def channel(self, key: str = "rollout", version: str = NEW, **over: Any) -> None:
        """Publish the channel for `version`, signed by `key`, naming the feed's keys version."""
        doc = self.feed.channel_doc(version)
        kv = keyring.current_version(self.feed.root)
        if kv:
            doc["keys_version"] = kv
        doc.update(over)
        path = self.feed.channel_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(sign_channel_bytes(doc, self.keys.keys[key]))
        self.feed.seq = doc["seq"]

    def poll(self, call: str = "check()") -> dict[str, Any]:
        assert self.board is not None
        self.server.requests.clear()
        self.server.reports.clear()
        return self.update(call)

    def fetched(self) -> list[str]:
        return [r.path for r in self.server.requests if r.method == "GET"]

    def stored(self) -> dict[str, Any] | None:
        assert self.board is not None
        p = self.board.sim.fs / "mpota_keys.json"
        return json.loads(p.read_text()) if p.exists() else None


@pytest.fixture
def env(interp: str, keys: Keys, server: FeedServer, tmp_path: Path) -> Env:
    e = Env(Feed(tmp_path / "feed", keys), server, keys, tmp_path, interp, image(RUNNING))
    e.feed.add_release(NEW, image(NEW))
    return e


def offered(res: dict[str, Any]) -> bool:
    return res.get("outcome") == "ok" and res.get("version") == NEW


def test_rollout_key_rotation_from_bare_key_lists(env: Env) -> None:
    # a board deployed with bare key lists (version 0) takes v1 signed by its release key and the root
    legacy = KeysDoc.legacy(env.hexes("release"), env.hexes("rollout"))
    env.add_keys(env.doc(1, root=("rootA", "rootB"), root_t=2), "rootA", "rootB", "release", legacy=legacy)
    env.channel("rollout")
    env.make_board()
    assert offered(env.poll())
    assert env.stored() is not None and env.stored()["version"] == 1  # type: ignore[index]
    assert "/keys/1.json" in env.fetched()
    # a normal poll: the channel and the manifest, no keys document and no extra fetch
    assert offered(env.poll())
    assert [p for p in env.fetched() if "keys" in p] == []
    assert len(env.fetched()) == 2

    # the rollout key leaks: v2 drops it, the server signs with the new one
    env.add_keys(env.doc(2, root=("rootA", "rootB"), rollout=("rollout2",)), "rootA", "rootB")
    env.channel("rollout2")
    assert offered(env.poll())
    assert env.stored()["version"] == 2  # type: ignore[index]
    assert [p for p in env.fetched() if "keys" in p] == ["/keys/2.json"]
    assert env.failed_reasons() == []  # the unknown key on the way is not a failure

    # the attacker holding the old key: refused by a board that has polled once since
    env.channel("rollout", seq=env.feed.seq + 1)
    res = env.poll()
    assert res["outcome"] == "error" and res["code"] == "unknown_key", res
    assert env.failed_reasons() == ["unknown_key"]
    assert env.stored()["version"] == 2  # type: ignore[index]


def test_revoked_release_key(env: Env) -> None:
    v1 = env.doc(1)
    env.add_keys(v1, "rootA", "rootB")
    env.channel("rollout")
    env.make_board(trust=v1.to_dict())  # seeded by `mpota deploy --keys-doc`
    assert offered(env.poll())
    assert env.fetched() == [f"/channels/{env.feed.board}/stable.json",
                             f"/releases/{env.feed.board}/{NEW}/manifest.json"]  # the seed is v1

    # the release key leaks: v2 revokes it; a release signed by it is refused from then on
    env.add_keys(env.doc(2, release=("release2",)), "rootB", "rootC")
    env.channel("rollout")
    res = env.poll()
    assert res["outcome"] == "error" and res["code"] == "unknown_key", res
    assert env.stored()["version"] == 2 and env.failed_reasons() == ["unknown_key"]  # type: ignore[index]

    # the same release signed by the new key installs
    env.feed.add_release("1.2.0", image("1.2.0"), key="release2")
    env.channel("rollout", version="1.2.0")
    res = env.poll("update(reset=False)")
    assert res["outcome"] == "ok" and res["version"] == "1.2.0", res


def test_board_that_skipped_two_root_rotations_walks_the_chain(env: Env) -> None:
    v1 = env.doc(1)
    env.add_keys(v1, "rootA", "rootB")
    env.make_board(trust=v1.to_dict())
    # v2: root A,D,E (signed by 2 old: A,B and 2 new: A,D); v3: root D,E,F (by D,E: old and new);
    # v4: a new rollout key, by the v3 root only
    env.add_keys(env.doc(2, root=("rootA", "rootD", "rootE")), "rootA", "rootB", "rootD")
    env.add_keys(env.doc(3, root=("rootD", "rootE", "rootF")), "rootD", "rootE")
    env.add_keys(env.doc(4, root=("rootD", "rootE", "rootF"), rollout=("rollout2",)), "rootE", "rootF")
    env.channel("rollout2")
    assert offered(env.poll())
    assert [p for p in env.fetched() if "keys" in p] == ["/keys/2.json", "/keys/3.json", "/keys/4.json"]
    st = env.stored()
    assert st is not None and st["version"] == 4 and st["roles"]["rollout"]["keys"] == env.hexes("rollout2")


# case: (reason, what the error says (docs/FORMATS.md "Keys document"), the document and its signers)
HOSTILE = {
    "new_root_only": ("unknown_key", "keys: root of trusted v1: no signature by its keys",
                      lambda e: (e.doc(2, root=("rootD", "rootE")), ("rootD", "rootE"))),
    "old_root_only": ("unknown_key", "keys v2: its own new root: no signature by its keys",
                      lambda e: (e.doc(2, root=("rootD", "rootE")), ("rootA", "rootB"))),
    "below_threshold": ("bad_signature", "keys: root of trusted v1: fewer than 2 of its keys",
                        lambda e: (e.doc(2, rollout=("rollout2",)), ("rootA",))),
    "same_key_twice": ("bad_signature", "keys: root of trusted v1: fewer than 2 of its keys",
                       lambda e: (e.doc(2, rollout=("rollout2",)), ("rootA", "rootA"))),
    "other_fleet": ("wrong_target", "keys for fleet other, this is acme",
                    lambda e: (e.doc(2, fleet="other"), ("rootA", "rootB"))),
    "older_version": ("replayed", "keys version 1, 1 already trusted",
                      lambda e: (e.doc(1, rollout=("rollout2",)), ("rootA", "rootB"))),
    "version_gap": ("malformed", "keys version 3, expected 2",
                    lambda e: (e.doc(3, rollout=("rollout2",)), ("rootA", "rootB"))),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_keys_document_refused(env: Env, case: str) -> None:
    code, says, make = HOSTILE[case]
    v1 = env.doc(1)
    env.add_keys(v1, "rootA", "rootB")
    env.make_board(trust=v1.to_dict())
    doc, signers = make(env)
    # written as an attacker or a careless operator would (keyring.add refuses each of them)
    sigs = sign_envelope(KEYS_PAYLOAD_TYPE, doc.to_payload(), env.k(signers[0]))
    for s in signers[1:]:  # the same key twice is two signature entries
        sigs["signatures"] += sign_envelope(KEYS_PAYLOAD_TYPE, doc.to_payload(), env.k(s))["signatures"]
    (env.feed.root / "keys" / "2.json").write_bytes(envelope_bytes(sigs))
    env.channel("rollout", keys_version=2)
    res = env.poll()
    assert res["outcome"] == "error" and res["code"] == code and res["msg"] == says, res
    assert [(e, d.get("reason"), d.get("error")) for e, d in env.server.events()] == [("failed", code, says)]
    assert env.stored() is None  # still the seeded v1


def test_oversize_keys_document_refused(env: Env) -> None:
    v1 = env.doc(1)
    env.add_keys(v1, "rootA", "rootB")
    env.make_board(trust=v1.to_dict())
    (env.feed.root / "keys" / "2.json").write_bytes(b"{" + b" " * 9000 + b"}")
    env.channel("rollout", keys_version=2)
    res = env.poll()
    assert res["outcome"] == "error" and res["code"] == "too_large", res


def test_release_threshold(env: Env) -> None:
    v1 = env.doc(1, release=("release", "release2"), release_t=2)
    env.add_keys(v1, "rootA", "rootB")
    env.channel("rollout")
    env.make_board(trust=v1.to_dict())
    res = env.poll()  # one release signature of the two needed
    assert res["outcome"] == "error" and res["code"] == "bad_signature", res
    # a second engineer cosigns; the channel pins the new manifest bytes
    cosign_release(env.feed.release_dir(NEW), [env.keys.keys["release2"]])
    env.channel("rollout", seq=env.feed.seq + 1)
    res = env.poll("update(reset=False)")
    assert res["outcome"] == "ok" and res["version"] == NEW, res


# --- the host side of a rollout key rotation: the feed and `mpota serve` --------------------

ROLLOUT = {"id": "r-keys", "state": "active", "groups": [], "percentage": 100.0, "window": None}


def test_feed_names_the_keys_version_and_refuses_an_unlisted_key(tmp_path: Path, keys: Keys,
        server: FeedServer) -> None:
    from host_tools.feed import FeedError, read_channel, refresh_channels, write_channel

    feed = Feed(tmp_path / "feed", keys)
    feed.add_release(NEW, image(NEW))
    env = Env(feed, server, keys, tmp_path, "cpython", image(RUNNING))
    ro, ro2 = keys.keys["rollout"], keys.keys["rollout2"]
    write_channel(feed.root, feed.board, "stable", NEW, ROLLOUT, ro)
    assert read_channel(feed.root, feed.board, "stable").keys_version is None  # type: ignore[union-attr]
    env.add_keys(env.doc(1), "rootA", "rootB")
    write_channel(feed.root, feed.board, "stable", NEW, ROLLOUT, ro)
    assert read_channel(feed.root, feed.board, "stable").keys_version == 1  # type: ignore[union-attr]
    with pytest.raises(FeedError, match="not a rollout key of keys v1"):
        write_channel(feed.root, feed.board, "stable", NEW, ROLLOUT, ro2)

    env.add_keys(env.doc(2, rollout=("rollout2",)), "rootA", "rootB")
    before = feed.channel_path().read_bytes()
    with pytest.raises(FeedError, match="not re-signed"):  # signed by a key it is not told about
        refresh_channels(feed.root, ro2, 7 * 86400)
    assert feed.channel_path().read_bytes() == before
    done = refresh_channels(feed.root, ro2, 7 * 86400, previous=[ro.public])  # not due, but rotated
    assert [r.path for r in done] == [f"channels/{feed.board}/stable.json"]
    doc = read_channel(feed.root, feed.board, "stable", [ro2.public])
    assert doc is not None and doc.keys_version == 2 and doc.seq == 3


def test_serve_switches_to_a_new_rollout_key_without_restart(tmp_path: Path, keys: Keys,
        server: FeedServer) -> None:
    import os
    import shutil
    import time

    from host_tools.feed import read_channel
    from host_tools.server.app import ServerConfig
    from host_tools.server.publish import FeedPublisher
    from sim.serverkit import ServerThread

    feed = Feed(tmp_path / "feed", keys)
    feed.add_release(NEW, image(NEW))
    env = Env(feed, server, keys, tmp_path, "cpython", image(RUNNING))
    v1 = env.doc(1)
    env.add_keys(v1, "rootA", "rootB")
    key_file = tmp_path / "server-rollout.pem"
    shutil.copy(keys.paths["rollout"], key_file)
    pub = FeedPublisher(feed.root, key_file, expires_s=3600)
    pub.publish(feed.board, "stable", NEW, dict(ROLLOUT))
    with ServerThread(ServerConfig(feed_dir=feed.root, db_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
                                   tick_s=0.2), pub) as live:
        class Url:  # device_config wants .url/.report_url
            url = live.url + "/"
            report_url = live.url + "/v1/reports"
        board = Board(tmp_path / "board", image(RUNNING), device_config(Url, keys, trust=v1.to_dict()))

        def check() -> dict[str, Any]:
            out = board.run(update_script("check()"), "cpython")
            assert out.returncode == 0, out.stdout + out.stderr
            return out.result()

        assert offered(check())
        # rotate: publish keys v2, then replace the server's key file (mv, as an operator would)
        env.add_keys(env.doc(2, rollout=("rollout2",)), "rootA", "rootC")
        tmp_key = tmp_path / "new.pem"
        shutil.copy(keys.paths["rollout2"], tmp_key)
        os.replace(tmp_key, key_file)
        deadline = time.time() + 20
        doc = None
        while time.time() < deadline:
            try:
                doc = read_channel(feed.root, feed.board, "stable", [keys.keys["rollout2"].public])
                break
            except Exception:
                time.sleep(0.2)
        assert doc is not None and doc.keys_version == 2, "the server did not re-sign with the new key"
        assert offered(check())
    st = json.loads((board.sim.fs / "mpota_keys.json").read_text())
    assert st["version"] == 2


def test_publisher_resigns_only_its_own_documents_after_a_rotation(tmp_path: Path, keys: Keys,
        server: FeedServer) -> None:
    import os
    import shutil

    from host_tools.feed import read_channel
    from host_tools.server.publish import FeedPublisher

    feed = Feed(tmp_path / "feed", keys)
    feed.add_release(NEW, image(NEW))
    env = Env(feed, server, keys, tmp_path, "cpython", image(RUNNING))
    env.add_keys(env.doc(1), "rootA", "rootB")
    key_file = tmp_path / "server-rollout.pem"
    shutil.copy(keys.paths["rollout"], key_file)
    pub = FeedPublisher(feed.root, key_file, expires_s=3600)
    pub.publish(feed.board, "stable", NEW, dict(ROLLOUT))
    # planted with the leaked key, never written by the server
    planted = feed.channel_doc(NEW, channel="beta", seq=1)
    feed.set_channel(NEW, channel="beta", doc=planted)
    env.add_keys(env.doc(2, rollout=("rollout2",)), "rootA", "rootB")
    shutil.copy(keys.paths["rollout2"], tmp_path / "new.pem")
    os.replace(tmp_path / "new.pem", key_file)
    lines = pub.keep_fresh()
    assert any(line.startswith("rollout key changed") for line in lines), lines
    assert any(line.startswith(f"re-signed channels/{feed.board}/stable.json") for line in lines), lines
    assert any("beta.json" in line and "not re-signed" in line for line in lines), lines
    ro2 = keys.keys["rollout2"].public
    stable = read_channel(feed.root, feed.board, "stable", [ro2])
    assert stable is not None and stable.keys_version == 2
    assert read_channel(feed.root, feed.board, "beta", [keys.keys["rollout"].public]) is not None  # untouched
    # a key file that does not load (half written, a typo): the key in use stays
    key_file.write_text("not a key")
    lines = pub.keep_fresh()
    assert pub.key.keyid == keys.keys["rollout2"].keyid
    assert any("rollout key not reloaded" in line for line in lines), lines


def test_walk_buffer_is_room_for_p256() -> None:
    # mpota.keydoc makes its buffer before the walk without loading p256 to read its scratch size
    import re

    from mpota import p256

    src = (Path(__file__).resolve().parent.parent / "device" / "mpota" / "keydoc.py").read_text()
    m = re.search(r"^_BUF = const\((\d+)\)", src, re.M)
    assert m is not None and int(m.group(1)) >= p256.SCRATCH
