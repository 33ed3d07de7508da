"""Freeze protection: channel documents expire, `mpota serve` and `mpota feed refresh` re-sign them
(same content, seq + 1) before they do, and a board whose clock is set refuses an expired one.

End to end: a feed published by `mpota serve`'s publisher with a short validity, served live (the
server keeps it fresh) and frozen (a mirror copy taken at the start, served by a plain static
server); two simulated boards running the real device code poll one each."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from helpers import run_cli

from host_tools.feed import FeedError, read_channel, refresh_channels, write_channel
from host_tools.manifest import format_time, parse_time
from host_tools.server.app import ServerConfig
from host_tools.server.publish import FeedPublisher
from sim.deviceproc import import_path_env
from sim.feedkit import BOARD, CHANNEL, Board, Feed, Keys, device_config, image, serve, update_script
from sim.serverkit import ServerThread

ROLLOUT = {"id": "r-freeze", "state": "active", "groups": [], "percentage": 100.0, "window": None}


def _feed(tmp: Path, keys: Keys) -> Feed:
    feed = Feed(tmp / "feed", keys)
    feed.add_release("1.1.0", image("1.1.0", size=64 * 1024))
    return feed


def test_served_feed_stays_fresh_while_a_frozen_copy_expires(tmp_path: Path, keys: Keys) -> None:
    feed = _feed(tmp_path, keys)
    valid = 6.0
    pub = FeedPublisher(feed.root, keys.paths["rollout"], expires_s=valid)
    seq0 = pub.publish(BOARD, CHANNEL, "1.1.0", dict(ROLLOUT))
    frozen_root = tmp_path / "mirror"
    shutil.copytree(feed.root, frozen_root)  # what a stale mirror keeps serving
    first = read_channel(feed.root, BOARD, CHANNEL)
    assert first is not None and first.expires is not None
    deadline = parse_time(first.expires).timestamp()
    with ServerThread(ServerConfig(feed_dir=feed.root, db_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
                                   tick_s=0.2), pub) as live, serve(frozen_root) as mirror:
        class Url:  # device_config wants .url/.report_url
            url = live.url + "/"
            report_url = mirror.report_url
        live_board = Board(tmp_path / "live", image("1.0.0"), device_config(Url, keys))
        frozen_board = Board(tmp_path / "frozen", image("1.0.0"), device_config(mirror, keys))

        def check(board: Board) -> dict[str, object]:
            out = board.run(update_script("check()"), "cpython")
            assert out.returncode == 0, out.stdout + out.stderr
            return out.result()

        assert check(frozen_board)["outcome"] == "ok"  # before expiry the copy is still good
        live_results = []
        while time.time() < deadline + 3:
            live_results.append(check(live_board))
            time.sleep(0.5)
        late = check(frozen_board)
        final = read_channel(feed.root, BOARD, CHANNEL)
    assert late["outcome"] == "error" and late["code"] == "expired", late
    assert live_results and all(r["outcome"] == "ok" for r in live_results), live_results
    assert final is not None and final.seq > seq0 and final.expires is not None
    assert parse_time(final.expires).timestamp() > deadline
    # the same content: only seq and expires moved
    assert final.release == first.release and final.rollout == first.rollout


def test_refresh_resigns_due_documents_only(tmp_path: Path, keys: Keys) -> None:
    feed = _feed(tmp_path, keys)
    key = keys.keys["rollout"]
    now = datetime.now(timezone.utc).replace(microsecond=0)
    for name, left in (("stable", timedelta(hours=1)), ("beta", timedelta(days=6)), ("never", None)):
        write_channel(feed.root, BOARD, name, "1.1.0", ROLLOUT, key,
                      expires=format_time(now + left) if left else None)
    done = refresh_channels(feed.root, key, 7 * 86400, now=now)
    assert [r.path for r in done] == [f"channels/{BOARD}/stable.json"]
    assert read_channel(feed.root, BOARD, "never").expires is None  # type: ignore[union-attr]
    done = refresh_channels(feed.root, key, 7 * 86400, now=now, add_expiry=True)
    assert [r.path for r in done] == [f"channels/{BOARD}/never.json"]
    stable = read_channel(feed.root, BOARD, "stable", [key.public])
    assert stable is not None and stable.seq == 2 and stable.expires == format_time(now + timedelta(days=7))
    beta = read_channel(feed.root, BOARD, "beta", [key.public])
    assert beta is not None and beta.seq == 1  # 6 days left of 7: not due
    never = read_channel(feed.root, BOARD, "never", [key.public])
    assert never is not None and never.expires is not None  # given an expiry


def test_refresh_never_signs_a_document_it_did_not(tmp_path: Path, keys: Keys) -> None:
    feed = _feed(tmp_path, keys)
    feed.set_channel("1.1.0", key="stranger", expires="2026-01-01T00:00:00Z")  # planted by someone else
    before = feed.channel_path().read_bytes()
    with pytest.raises(FeedError, match="not re-signed"):
        refresh_channels(feed.root, keys.keys["rollout"], 7 * 86400)
    assert feed.channel_path().read_bytes() == before


def test_cli_publish_expires_by_default_and_refresh(tmp_path: Path, keys: Keys) -> None:
    feed = _feed(tmp_path, keys)
    rel = feed.release_dir("1.1.0")
    dest = tmp_path / "out"
    r = run_cli("feed", "publish", str(rel), "--feed", str(dest), "--channel", "stable",
               "--key", str(keys.paths["rollout"]))
    assert r.returncode == 0, r.stderr
    doc = read_channel(dest, BOARD, "stable")
    assert doc is not None and doc.expires is not None
    left = parse_time(doc.expires) - datetime.now(timezone.utc)
    assert timedelta(days=6, hours=23) < left <= timedelta(days=7)
    assert "expires " + doc.expires in r.stdout
    # nothing due: refresh leaves it alone
    r = run_cli("feed", "refresh", "--feed", str(dest), "--key", str(keys.paths["rollout"]))
    assert r.returncode == 0 and "fresh" in r.stdout, r.stderr
    assert read_channel(dest, BOARD, "stable") == doc
    # a validity of 30 days: under half left, so it is re-signed with seq + 1
    refresh = ("feed", "refresh", "--feed", str(dest), "--key", str(keys.paths["rollout"]))
    r = run_cli(*refresh, "--expires", "30d")
    assert r.returncode == 0, r.stderr
    again = read_channel(dest, BOARD, "stable", [keys.keys["rollout"].public])
    assert again is not None and again.seq == doc.seq + 1 and again.expires != doc.expires
    assert again.release == doc.release and again.rollout == doc.rollout
    bad = run_cli(*refresh, "--expires", "soon")
    assert bad.returncode != 0 and "duration" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    wrong_role = run_cli("feed", "refresh", "--feed", str(dest), "--key", str(keys.paths["release"]))
    assert wrong_role.returncode != 0 and "rollout" in wrong_role.stderr


def test_feed_verify_warns_about_a_channel_without_expiry(tmp_path: Path, keys: Keys) -> None:
    feed = _feed(tmp_path, keys)
    feed.set_channel("1.1.0", expires=None)
    r = run_cli("feed", "verify", str(feed.root), "--release-pubkey", keys.public_hex("release"),
               "--rollout-pubkey", keys.public_hex("rollout"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no expiry" in r.stdout


_CLOCK_SCRIPT = r"""
import json, sys, types
state = {"set": False, "calls": 0, "fail": %(fail)r}
fake_time = types.ModuleType("time")
fake_time.gmtime = lambda: (2026, 12, 2, 5, 7, 9, 2, 336) if state["set"] else (2000, 1, 1, 0, 0, 5, 5, 1)
ntp = types.ModuleType("ntptime")
def settime():
    state["calls"] += 1
    if state["fail"]:
        raise OSError(110)
    state["set"] = True
ntp.settime = settime
sys.modules["time"] = fake_time
sys.modules["ntptime"] = ntp
import mpota.check as check
class Cfg:
    ntp = %(ntp)r
now = check._clock(Cfg)
print("RESULT " + json.dumps({"now": now, "calls": state["calls"]}))
"""


@pytest.mark.parametrize("ntp,fail,want,calls", [
    (True, False, ["2026-12-02T05:07:09", 5 * 60 + 7], 1),  # clock unset: NTP sets it, then it counts
    (True, True, None, 1),                                    # NTP fails: no clock, the check goes on
    (False, False, None, 0),                                  # "ntp": false in the config: not tried
])
def test_device_sets_its_clock_by_ntp_before_checking(tmp_path: Path, ntp: bool, fail: bool,
                                                      want: object, calls: int) -> None:
    script = tmp_path / "clock.py"
    script.write_text(_CLOCK_SCRIPT % {"ntp": ntp, "fail": fail})
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                       env=import_path_env("cpython"))
    assert p.returncode == 0, p.stdout + p.stderr
    res = json.loads([ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    assert res == {"now": want, "calls": calls}


def test_device_config_ntp_must_be_boolean(tmp_path: Path) -> None:
    code = ("import mpota.config as c, mpota.errors as e\n"
            "k = ['04' + '00' * 64]\n"
            "base = {'device_id': 'd', 'board': 'b', 'feed_url': 'http://x/',\n"
            "        'keys': {'release': k, 'rollout': k}}\n"
            "print(c.Config(dict(base), '/m.json').ntp, c.Config(dict(base, ntp=False), '/m.json').ntp)\n"
            "try:\n    c.Config(dict(base, ntp='yes'), '/m.json')\n"
            "except e.OTAError as x:\n    print(x.code, x)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=import_path_env("cpython"))
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["True False", "config config: ntp must be true or false"]
