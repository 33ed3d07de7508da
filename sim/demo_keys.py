"""The demo's key rotation stage (sim/demo.py runs it between the two rollouts): the fleet's boards
were deployed with bare key lists; root keys (2 of 3, offline) sign keys document v1, every board
takes it on its next poll; the server's rollout key "leaks", v2 replaces it, the running server
switches to the new key file without a restart, every board follows on its next poll, and a
channel document signed by the leaked key is refused by a board and by the host tools."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sim.demo import Demo

BOARD = "esp32-generic-4mb"
CHANNEL = "stable"


def _stored_versions(demo: Demo) -> Counter[Any]:
    import json

    assert demo.fleet is not None
    out: Counter[Any] = Counter()
    for d in demo.fleet.devices:
        p = d.board.fs / "mpota_keys.json"
        out[json.loads(p.read_text())["version"] if p.exists() else 0] += 1
    return out


def _wait_channel(demo: Demo, key_pub: Path, keys_version: int, timeout: float = 20) -> bool:
    """Until the server has re-signed the channel with the key of key_pub, naming keys_version."""
    from host_tools.feed import read_channel
    from host_tools.keys import load_public_key

    pub = load_public_key(str(key_pub))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            doc = read_channel(demo.feed, BOARD, CHANNEL, [pub])
            if doc is not None and doc.keys_version == keys_version:
                return True
        except Exception:  # not (yet) signed by that key
            pass
        time.sleep(0.25)
    return False


def _poll_and_count(demo: Demo, version: int, what: str) -> None:
    assert demo.fleet is not None
    s = demo.fleet.poll_all()
    failed = Counter(str(o.result.get("reason")) for o in s.outcomes if o.result.get("update") == "failed")
    demo.say(f"poll: {s.line()}")
    got = _stored_versions(demo)
    demo.expect(got == Counter({version: demo.n}) and not failed,
                f"all {demo.n} boards {what} (keys v{version} stored), no failed check",
                f"stored {dict(got)}, failed {dict(failed)}")


def rotate_rollout_key(demo: Demo) -> None:
    demo.step("Keys: root keys (2 of 3, offline) sign the fleet's keys document; then the server's rollout "
              "key leaks and is rotated while the server runs, without touching a board")
    keys = demo.work / "keys"
    roots = [keys / f"root-{i}.pem" for i in (1, 2, 3)]
    for r in roots:
        demo.cli("keygen", str(r), "--role", "root", show=False)
    rel, ro = demo.release_key, demo.rollout_key
    demo.cli("keys", "init", "--feed", str(demo.feed), "--fleet", "demo",
             *[a for r in roots for a in ("--root", f"{r}.pub")], "--root-threshold", "2",
             "--release", f"{rel}.pub", "--rollout", f"{ro}.pub", "--legacy-release", f"{rel}.pub",
             "--key", str(roots[0]), "--key", str(roots[1]), "--key", str(rel))
    demo.say("the boards were deployed with bare key lists (version 0): v1 also carries their release "
             "key's signature, so they take it")
    demo.expect(_wait_channel(demo, Path(f"{ro}.pub"), 1), "the server re-signed the channel naming keys v1")
    _poll_and_count(demo, 1, "walked to the keys document")

    # the leak: a new rollout key, keys v2 without the old one, the server's key file replaced
    new = keys / "rollout-2.pem"
    leaked = keys / "leaked-rollout.pem"
    demo.cli("keygen", str(new), "--role", "rollout", show=False)
    demo.cli("keys", "rotate", "--feed", str(demo.feed), "--role", "rollout", "--add", f"{new}.pub",
             "--remove", f"{ro}.pub", "--key", str(roots[0]), "--key", str(roots[2]))
    shutil.copy(ro, leaked)  # what the attacker kept
    os.replace(f"{new}.pub", f"{ro}.pub")
    os.replace(new, ro)
    demo.say(f"$ mv {demo.rel(new)} {demo.rel(ro)}   # the running server reads it again: no restart")
    demo.expect(_wait_channel(demo, Path(f"{ro}.pub"), 2),
                "the server switched keys and re-signed the channel with the new one, naming keys v2")
    _poll_and_count(demo, 2, "walked to v2 and trust only the new rollout key")

    # the attacker's channel document, signed by the leaked key
    try:
        demo.cli("feed", "publish", "--feed", str(demo.feed), "--channel", CHANNEL, "--key", str(leaked),
                 str(demo.work / "releases" / "1.0.0"), show=False)
        demo.expect(False, "the host tools refuse to sign with the revoked key", "they signed")
    except Exception as exc:
        demo.say("`mpota feed publish` with the leaked key: refused: "
                 + str(exc).split("mpota: error: ", 1)[-1][:110])
    _leaked_channel_refused(demo, leaked)


def _leaked_channel_refused(demo: Demo, leaked: Path) -> None:
    """A board that polled once since the rotation refuses a channel signed by the leaked key (a
    mirror or a man in the middle serving it); the server's own document is put back after."""
    from host_tools.channel import ChannelDoc, channel_path
    from host_tools.keys import load_private_key

    assert demo.fleet is not None
    path = demo.feed / channel_path(BOARD, CHANNEL)
    good = path.read_bytes()
    doc = ChannelDoc.from_envelope_unverified(good)
    doc.seq += 100
    doc.release.version = "1.0.0"  # "downgrade them all"
    doc.release.manifest = f"releases/{BOARD}/1.0.0/manifest.json"
    doc.release.manifest_sha256 = hashlib.sha256((demo.feed / doc.release.manifest).read_bytes()).hexdigest()
    try:
        path.write_bytes(doc.sign(load_private_key(leaked)))
        dev = demo.fleet.devices[0]
        s = demo.fleet.poll_all([dev])
        res = s.outcomes[0].result
    finally:
        path.write_bytes(good)
    demo.expect(res.get("update") == "failed" and res.get("reason") == "unknown_key",
                f"board {dev.device_id} refuses a channel signed by the leaked key (unknown_key, reported)",
                str(res))
