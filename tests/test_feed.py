"""The static feed: publish order and atomicity, seq, downgrade and overwrite refusals, feed verification,
and a device-style walk of the feed over real HTTP on loopback."""

from __future__ import annotations

import base64
import functools
import hashlib
import http.server
import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ecdsa
import pytest
from ecdsa.util import sigdecode_der

import host_tools.feed as feedmod
from host_tools.channel import ChannelDoc
from host_tools.errors import MpotaError
from host_tools.feed import publish_release, read_channel, verify_feed, write_channel
from host_tools.imagebuild import build_app_image
from host_tools.keys import PrivateKey, generate_key, load_private_key
from host_tools.release import sign_release

BOARD = "esp32-generic-4mb"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PrivateKey]:
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for role in ("release", "rollout", "both"):
        generate_key(d / role, role)
        out[role] = load_private_key(d / role)
    return out


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, PrivateKey]) -> dict[str, Path]:
    """Signed release folders: 1.0.0 (sv 1), 1.1.0 (sv 2, compressed), 1.2.0 (sv 1), S3 1.0.0."""
    d = tmp_path_factory.mktemp("rel")
    out = {}
    for ver, sv, chip, compress in (("1.0.0", 1, "esp32", False), ("1.1.0", 2, "esp32", True),
                                    ("1.2.0", 1, "esp32", False), ("s3", 1, "esp32s3", False)):
        version = "1.0.0" if ver == "s3" else ver
        img = d / f"{ver}.bin"
        img.write_bytes(build_app_image(chip, version, "mp", sv, code=bytes(20000)))
        board = BOARD if chip == "esp32" else "esp32s3-generic-8mb"
        sign_release(img, keys["release"], board, version, out_dir=d / ver, compress=compress)
        out[ver] = d / ver
    return out


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def _independent_channel(path: Path, point: bytes) -> dict[str, Any]:
    env = json.loads(path.read_bytes())
    payload = base64.b64decode(env["payload"])
    t = env["payloadType"].encode()
    assert t == b"application/vnd.mpota.channel+json"
    vk = ecdsa.VerifyingKey.from_string(point, curve=ecdsa.NIST256p)
    msg = b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)
    assert vk.verify(base64.b64decode(env["signatures"][0]["sig"]), msg, hashfunc=hashlib.sha256,
                     sigdecode=sigdecode_der)
    doc: dict[str, Any] = json.loads(payload)
    return doc


def test_publish_lays_out_the_feed(tmp_path: Path, keys: dict[str, PrivateKey],
                                   releases: dict[str, Path]) -> None:
    feed = tmp_path / "feed"
    doc = publish_release(releases["1.0.0"], feed, "stable", keys["rollout"])
    assert _files(feed) == [".mpota-feed.lock", f"channels/{BOARD}/stable.json",
                            f"releases/{BOARD}/1.0.0/firmware.bin", f"releases/{BOARD}/1.0.0/manifest.json"]
    # Release files are byte copies of the signed release.
    for name in ("firmware.bin", "manifest.json"):
        copied = (feed / f"releases/{BOARD}/1.0.0" / name).read_bytes()
        assert copied == (releases["1.0.0"] / name).read_bytes()
    ch = _independent_channel(feed / f"channels/{BOARD}/stable.json", keys["rollout"].public.point)
    assert list(ch) == ["_type", "spec", "board", "channel", "seq", "expires", "release", "rollout"]
    assert ch["_type"] == "channel" and ch["spec"] == 1 and ch["board"] == BOARD and ch["channel"] == "stable"
    assert ch["seq"] == 1 and ch["expires"] is None
    mbytes = (feed / f"releases/{BOARD}/1.0.0/manifest.json").read_bytes()
    assert ch["release"] == {"version": "1.0.0", "manifest": f"releases/{BOARD}/1.0.0/manifest.json",
                             "manifest_sha256": hashlib.sha256(mbytes).hexdigest()}
    ro = ch["rollout"]
    assert ro["id"].startswith(f"{BOARD}-1.0.0-") and ro["state"] == "active"
    assert ro["groups"] == [] and ro["percentage"] == 100.0 and ro["window"] is None
    assert doc.to_dict() == ch


def test_channel_is_written_last_and_atomically(tmp_path: Path, keys: dict[str, PrivateKey],
                                                releases: dict[str, Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    feed = tmp_path / "feed"
    order: list[str] = []
    real = feedmod.atomic_write

    def recording(path: Any, data: bytes, mode: int | None = None) -> None:
        order.append(Path(path).relative_to(feed).as_posix())
        real(path, data, mode)

    monkeypatch.setattr(feedmod, "atomic_write", recording)
    publish_release(releases["1.1.0"], feed, "beta", keys["rollout"])
    assert order == [f"releases/{BOARD}/1.1.0/firmware.bin.z", f"releases/{BOARD}/1.1.0/manifest.json",
                     f"channels/{BOARD}/beta.json"]
    assert not [p for p in feed.rglob("*.tmp")]

    # A crash before the channel write (simulated: the channel write fails) leaves the old channel.
    before = (feed / f"channels/{BOARD}/beta.json").read_bytes()

    def failing(path: Any, data: bytes, mode: int | None = None) -> None:
        if "channels/" in Path(path).as_posix():
            raise OSError(28, "No space left on device")
        real(path, data, mode)

    monkeypatch.setattr(feedmod, "atomic_write", failing)
    with pytest.raises(OSError):
        publish_release(releases["1.2.0"], feed, "beta", keys["rollout"], allow_downgrade=True)
    assert (feed / f"channels/{BOARD}/beta.json").read_bytes() == before
    assert not [p for p in feed.rglob("*.tmp")]


def test_seq_grows_per_channel(tmp_path: Path, keys: dict[str, PrivateKey],
                               releases: dict[str, Path]) -> None:
    feed = tmp_path / "feed"
    assert read_channel(feed, BOARD, "stable") is None
    assert publish_release(releases["1.0.0"], feed, "stable", keys["rollout"]).seq == 1
    # The same release on a second channel: the release files are already there, unchanged.
    assert publish_release(releases["1.0.0"], feed, "beta", keys["rollout"]).seq == 1
    assert publish_release(releases["1.1.0"], feed, "stable", keys["rollout"]).seq == 2
    doc = write_channel(feed, BOARD, "stable", "1.1.0",
                        {"id": "r-1", "state": "paused", "groups": ["canary", "internal"], "percentage": 5,
                         "window": {"start": "01:00", "end": "04:00"}}, keys["rollout"],
                        expires="2099-01-01T00:00:00Z")
    assert doc.seq == 3 and doc.rollout.state == "paused" and doc.rollout.percentage == 5.0
    back = read_channel(feed, BOARD, "stable", [keys["rollout"].public])
    assert back == doc and back is not None and back.expires == "2099-01-01T00:00:00Z"
    assert read_channel(feed, BOARD, "beta") is not None
    with pytest.raises(MpotaError, match="not signed by any of the given keys"):
        read_channel(feed, BOARD, "stable", [keys["release"].public])


def test_concurrent_writers_never_share_a_seq(tmp_path: Path, keys: dict[str, PrivateKey],
                                              releases: dict[str, Path]) -> None:
    feed = tmp_path / "feed"
    publish_release(releases["1.0.0"], feed, "stable", keys["rollout"])
    seqs: list[int] = []
    lock = threading.Lock()

    def step(i: int) -> None:
        d = write_channel(feed, BOARD, "stable", "1.0.0", {"id": f"r{i}", "percentage": i}, keys["rollout"])
        with lock:
            seqs.append(d.seq)

    threads = [threading.Thread(target=step, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seqs) == list(range(2, 10))
    final = read_channel(feed, BOARD, "stable")
    assert final is not None and final.seq == 9


def test_refusals_leave_the_feed_untouched(tmp_path: Path, keys: dict[str, PrivateKey],
                                           releases: dict[str, Path]) -> None:
    feed = tmp_path / "feed"
    publish_release(releases["1.1.0"], feed, "stable", keys["rollout"])  # security_version 2
    snapshot = {p: (feed / p).read_bytes() for p in _files(feed)}

    with pytest.raises(MpotaError, match=r"security_version 1 is lower .* --allow-downgrade"):
        publish_release(releases["1.2.0"], feed, "stable", keys["rollout"])
    with pytest.raises(MpotaError, match="is a release key.*rollout key"):
        publish_release(releases["1.2.0"], feed, "stable", keys["release"])
    with pytest.raises(MpotaError, match="rollout.percentage 150"):
        publish_release(releases["1.0.0"], feed, "stable", keys["rollout"],
                        rollout={"id": "x", "percentage": 150})
    with pytest.raises(MpotaError, match="rollout.state 'done'"):
        publish_release(releases["1.0.0"], feed, "stable", keys["rollout"],
                        rollout={"id": "x", "state": "done"})
    with pytest.raises(MpotaError, match="rollout.window"):
        publish_release(releases["1.0.0"], feed, "stable", keys["rollout"],
                        rollout={"id": "x", "window": {"start": "25:00", "end": "01:00"}})
    with pytest.raises(MpotaError, match="in the past"):
        publish_release(releases["1.0.0"], feed, "stable", keys["rollout"], expires="2001-01-01T00:00:00Z")
    with pytest.raises(MpotaError, match="not in the release's target_hardware"):
        publish_release(releases["1.0.0"], feed, "stable", keys["rollout"], board="esp32s3-generic-8mb")
    with pytest.raises(MpotaError, match="not signed by any of the given keys"):
        publish_release(releases["1.0.0"], feed, "stable", keys["rollout"],
                        release_keys=[keys["both"].public])
    with pytest.raises(MpotaError, match="release esp32-generic-4mb 9.9.9 is not in the feed"):
        write_channel(feed, BOARD, "stable", "9.9.9", {"id": "x"}, keys["rollout"])
    # A different release under a version the feed already has.
    other = tmp_path / "other"
    img = tmp_path / "o.bin"
    img.write_bytes(build_app_image("esp32", "1.1.0", "different", 2))
    sign_release(img, keys["release"], BOARD, "1.1.0", out_dir=other)
    with pytest.raises(MpotaError, match="already has a different release esp32-generic-4mb 1.1.0"):
        publish_release(other, feed, "stable", keys["rollout"])
    assert {p: (feed / p).read_bytes() for p in _files(feed)} == snapshot


def test_downgrade_allowed_with_warning_and_both_key(tmp_path: Path, keys: dict[str, PrivateKey],
                                                     releases: dict[str, Path]) -> None:
    feed = tmp_path / "feed"
    publish_release(releases["1.1.0"], feed, "stable", keys["both"])
    warnings: list[str] = []
    doc = publish_release(releases["1.2.0"], feed, "stable", keys["both"], allow_downgrade=True,
                          warn=warnings.append, release_keys=[keys["release"].public])
    assert doc.seq == 2 and doc.release.version == "1.2.0"
    assert len(warnings) == 1 and "security_version 1 is lower" in warnings[0]
    warnings.clear()
    publish_release(releases["1.0.0"], feed, "stable", keys["both"], warn=warnings.append)
    assert any("not newer" in w for w in warnings)


def test_verify_feed(tmp_path: Path, keys: dict[str, PrivateKey], releases: dict[str, Path]) -> None:
    feed = tmp_path / "feed"
    publish_release(releases["1.0.0"], feed, "stable", keys["rollout"])
    publish_release(releases["1.1.0"], feed, "beta", keys["rollout"])
    publish_release(releases["s3"], feed, "stable", keys["rollout"])
    pubs = [keys["release"].public, keys["rollout"].public]
    rep = verify_feed(feed, pubs)
    assert rep.ok, rep.problems
    assert sorted(rep.releases) == [(BOARD, "1.0.0"), (BOARD, "1.1.0"), ("esp32s3-generic-8mb", "1.0.0")]
    assert len(rep.channels) == 3
    assert verify_feed(feed, release_keys=[keys["release"].public], rollout_keys=[keys["rollout"].public]).ok

    # Channel documents signed by the release key only are not acceptable as rollout-signed.
    bad = verify_feed(feed, release_keys=[keys["release"].public], rollout_keys=[keys["both"].public])
    assert len([p for p in bad.problems if "channels/" in p]) >= 3

    # Damage the feed in three ways; each is reported.
    img = feed / f"releases/{BOARD}/1.1.0/firmware.bin.z"
    data = bytearray(img.read_bytes())
    data[100] ^= 1
    img.write_bytes(data)
    (feed / f"releases/{BOARD}/1.0.0/manifest.json").write_bytes(
        (feed / f"releases/{BOARD}/1.0.0/manifest.json").read_bytes().replace(b"\n}", b"\n }"))
    (feed / "channels" / BOARD / ".stable.json.abc.tmp").write_bytes(b"x")
    rep = verify_feed(feed, pubs)
    text = "\n".join(rep.problems)
    assert "1.1.0/manifest.json" in text and "transfer_hash" in text
    assert f"channels/{BOARD}/stable.json: manifest_sha256 does not match" in text
    assert f"channels/{BOARD}/beta.json: release {BOARD} 1.1.0 did not verify" in text
    assert any("leftover temp file" in w for w in rep.warnings)
    assert not rep.ok


def test_expired_channel_is_a_problem(tmp_path: Path, keys: dict[str, PrivateKey],
                                      releases: dict[str, Path]) -> None:
    feed = tmp_path / "feed"
    publish_release(releases["1.0.0"], feed, "stable", keys["rollout"])
    doc = read_channel(feed, BOARD, "stable")
    assert doc is not None
    old = ChannelDoc.from_dict({**doc.to_dict(), "seq": 2, "expires": "2001-01-01T00:00:00Z"})
    (feed / old.path).write_bytes(old.sign(keys["rollout"]))
    rep = verify_feed(feed, [keys["release"].public, keys["rollout"].public])
    assert rep.problems == [f"channels/{BOARD}/stable.json: expired at 2001-01-01T00:00:00Z"]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "feed"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield root, f"http://127.0.0.1:{srv.server_address[1]}/"
    finally:
        srv.shutdown()
        srv.server_close()


def test_device_walk_over_http(served: tuple[Path, str], keys: dict[str, PrivateKey],
                               releases: dict[str, Path]) -> None:
    """Channel -> pinned manifest -> image, fetched over loopback HTTP and checked as a device would."""
    import zlib
    from urllib.parse import urljoin

    root, base = served
    publish_release(releases["1.1.0"], root, "stable", keys["rollout"])

    def get(url: str) -> bytes:
        with urllib.request.urlopen(url, timeout=10) as r:
            body: bytes = r.read()
            return body

    chan_url = urljoin(base, f"channels/{BOARD}/stable.json")
    ch = _independent_channel_bytes(get(chan_url), keys["rollout"].public.point)
    murl = urljoin(base, ch["release"]["manifest"])
    mbytes = get(murl)
    assert hashlib.sha256(mbytes).hexdigest() == ch["release"]["manifest_sha256"]
    env = json.loads(mbytes)
    m = json.loads(base64.b64decode(env["payload"]))
    wire = get(urljoin(murl, m["image"]["url"]))  # url is relative to the manifest's own URL
    assert "sha256:" + hashlib.sha256(wire).hexdigest() == m["image"]["transfer_hash"]
    raw = zlib.decompressobj(wbits=m["image"]["window_bits"]).decompress(wire)
    assert len(raw) == m["image"]["size"]
    assert "sha256:" + hashlib.sha256(raw).hexdigest() == m["image"]["hash"]


def _independent_channel_bytes(data: bytes, point: bytes) -> dict[str, Any]:
    import tempfile

    with tempfile.NamedTemporaryFile() as f:
        f.write(data)
        f.flush()
        return _independent_channel(Path(f.name), point)


def test_add_release_stages_without_a_channel(tmp_path: Path, keys: dict[str, PrivateKey],
                                              releases: dict[str, Path]) -> None:
    from host_tools.feed import add_release

    feed = tmp_path / "feed"
    rel = add_release(releases["1.1.0"], feed, release_keys=[keys["release"].public])
    assert rel == f"releases/{BOARD}/1.1.0/manifest.json"
    assert not (feed / "channels").exists()
    assert add_release(releases["1.1.0"], feed) == rel  # idempotent
    doc = write_channel(feed, BOARD, "stable", "1.1.0", {"id": "r-9", "groups": ["canary"], "percentage": 0},
                        keys["rollout"])
    assert doc.seq == 1 and doc.release.manifest == rel
    assert verify_feed(feed, [keys["release"].public, keys["rollout"].public]).ok
