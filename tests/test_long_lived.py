"""Real MicroPython firmware and long-lived boards: the device keeps updating
whatever its history. Each case was seen on a board model stricter than the simulated fleet
of the time; each runs on the simulated board under CPython and the MicroPython unix port,
with stock-style images (empty app_desc version and project name, as MicroPython's own ESP32
builds), a real signed feed and a real report collector on loopback.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from collector import Collector

from host_tools.server.ingest_plan import EXCUSED_REASONS, advance_progress
from sim.feedkit import (
    Board,
    Feed,
    FeedEnv,
    FeedServer,
    Keys,
    RunOut,
    factory_config,
    image,
)

# mpota.boot() on the board; the result as one JSON line.
BOOT = r'''
import json
import mpota
res = mpota.boot(config=CONFIG, timeout_ms=%(timeout)d, wdt_ms=60000)
print("RESULT " + json.dumps({"outcome": res.outcome, "check": res.check,
                              "results": [[r[0], r[1], r[3]] for r in res.results]}))
'''


@pytest.fixture
def collector() -> Iterator[Collector]:
    with Collector() as c:
        yield c


class Rig(FeedEnv):
    collector: Collector

    def make_board(self, version: str | None = None, **cfg: Any) -> Board:  # type: ignore[override]
        # by default the config as an older `mpota deploy` wrote it: no factory version
        return super().make_board(version=version, report_url=self.collector.url, **cfg)

    def run(self, body: str, **kw: Any) -> RunOut:
        assert self.board is not None
        return self.board.run(body, self.interp, **kw)

    def boot(self, timeout: int = 5000) -> dict[str, Any]:
        """Boot until the board settles (a trial that rolls back resets); the last result."""
        assert self.board is not None
        runs = self.board.boot_until_settled(BOOT % {"timeout": timeout}, self.interp)
        last = runs[-1]
        assert last.kind == "exit", str(last)
        return dict(last.result(), boots=[r.kind for r in runs], slot=last.slot)

    def publish(self, version: str, **kw: Any) -> bytes:
        data = image(version)
        self.feed.add_release(version, data)
        self.feed.set_channel(version, **kw)
        return data

    def state(self) -> dict[str, Any]:
        assert self.board is not None
        return self.board.state()

    def reports(self, event: str) -> list[dict[str, Any]]:
        return self.collector.of(event)

    def assert_seqs_unique(self) -> None:
        seqs = [r["seq"] for r in self.collector.reports]
        assert len(seqs) == len(set(seqs)), seqs
        assert 409 not in self.collector.posts, self.collector.posts


@pytest.fixture
def rig(interp: str, keys: Keys, server: FeedServer, collector: Collector,
        tmp_path: Path) -> Rig:
    rig = Rig(Feed(tmp_path / "feed", keys), server, keys, tmp_path, interp, image("1.0.0"))
    rig.collector = collector
    return rig


# 1. Stock firmware (empty app_desc version) takes its first and every later update ----------

def test_stock_firmware_takes_its_first_and_later_updates(rig: Rig) -> None:
    rig.make_board()  # config as an older `mpota deploy` wrote it: no version at all
    v11 = rig.publish("1.1.0")
    res = rig.update()
    assert res == {"outcome": "ok", "version": "1.1.0", "slot": "ota_1"}, res
    boot = rig.boot()
    assert boot["outcome"] == "confirmed" and boot["slot"] == "ota_1", boot
    # confirmed: the board now knows it runs 1.1.0 (its image says nothing) and stays quiet
    st = rig.state()
    assert list(st["fw"]) == ["ota_1"] and st["fw"]["ota_1"][1] == "1.1.0"
    rig.server.requests.clear()
    assert rig.update() == {"outcome": "none"}
    assert [r.path for r in rig.server.requests] == ["/channels/esp32-generic-4mb/stable.json"]
    # the next release too
    v12 = rig.publish("1.2.0")
    res = rig.update()
    assert res == {"outcome": "ok", "version": "1.2.0", "slot": "ota_0"}, res
    boot = rig.boot()
    assert boot["outcome"] == "confirmed" and boot["slot"] == "ota_0", boot
    assert rig.update() == {"outcome": "none"}
    assert rig.board is not None
    assert rig.board.slot("ota_0", len(v12)) == v12 and rig.board.slot("ota_1", len(v11)) == v11
    assert rig.reports("failed") == []
    assert [r["version"] for r in rig.reports("confirmed")] == ["1.1.0", "1.2.0"]
    assert rig.reports("heartbeat")[-1]["version"] == "1.2.0"


def test_factory_image_that_is_a_release_is_up_to_date_by_its_hash(rig: Rig) -> None:
    rig.make_board()
    rig.feed.add_release("1.0.0", rig.running)
    rig.feed.set_channel("1.0.0")
    assert rig.update() == {"outcome": "none"}
    assert rig.image_requests() == []
    assert rig.state()["fw"]["ota_0"][1] == "1.0.0"  # recorded: the next check needs no hashing
    assert rig.reports("failed") == []


def test_factory_version_from_deploy_applies_to_that_build_only(rig: Rig) -> None:
    # `mpota deploy` recorded 1.0.0 for the factory build; the channel offers an older release
    rig.make_board(version="1.0.0")
    rig.publish("0.9.0")
    res = rig.update()
    assert res["outcome"] == "error" and res["code"] == "not_newer", res
    # the same config on a board running another build: the version does not apply to it
    rig.board = None
    import shutil

    shutil.rmtree(rig.tmp / "sim")
    rig.running = image("0.8.0")
    rig.make_board(**factory_config(image("1.0.0"), "1.0.0"))
    res = rig.update()
    assert res == {"outcome": "ok", "version": "0.9.0", "slot": "ota_1"}, res


# 2. A 503 or a slow server during the trial's heartbeat check -------------------------------

@pytest.mark.parametrize("fault", ["503", "slow"])
def test_transient_report_failure_in_the_trial_is_retried(rig: Rig, fault: str) -> None:
    rig.make_board()
    rig.publish("1.1.0")
    assert rig.update()["outcome"] == "ok"
    if fault == "503":
        rig.collector.fail_next = 1
    else:
        rig.collector.delay = 3.0  # each POST used to be cut at 2.5 s
    boot = rig.boot(timeout=8000)
    rig.collector.delay = 0.0
    assert boot["outcome"] == "confirmed" and boot["slot"] == "ota_1", boot
    assert ["heartbeat", True, None] in boot["results"]
    assert rig.state()["failed"] == []


def test_a_real_outage_still_fails_the_trial(rig: Rig) -> None:
    rig.make_board()
    rig.publish("1.1.0")
    assert rig.update()["outcome"] == "ok"
    rig.collector.mode = "503"
    boot = rig.boot(timeout=1500)
    rig.collector.mode = "up"
    assert boot["outcome"] == "rolled_back" and boot["slot"] == "ota_0", boot
    assert rig.state()["failed"] == [["1.1.0", "r-test-1"]]


# 3. A HealthReporter made before boot() cannot undo the confirmed update --------------------

def test_health_reporter_made_before_boot_does_not_undo_the_update(rig: Rig) -> None:
    rig.make_board()
    rig.publish("1.1.0")
    assert rig.update()["outcome"] == "ok"
    out = rig.run(r'''
import json
import mpota
hr = mpota.HealthReporter(config=CONFIG, checks=[("sensor", lambda: False)], builtin=())
res = mpota.boot(config=CONFIG, timeout_ms=5000, wdt_ms=60000)
status = hr.check()
should = hr.should_rollback()
trig = hr.trigger_rollback()
print("RESULT " + json.dumps({"outcome": res.outcome, "status": status, "should": should,
                              "trigger": trig}))
''')
    assert out.kind == "exit", out.stdout + out.stderr
    assert out.result() == {"outcome": "confirmed", "status": "FAILED", "should": False, "trigger": False}
    assert rig.board is not None and rig.board.sim.next_boot_slot() == "ota_1"
    st = rig.state()
    assert st["pending"] is None and st["floor"] == 0 and st["failed"] == []
    assert rig.board.sim.ota_state("ota_1") == "VALID"


# 4. A damaged report queue file costs its reports, not the trial ---------------------------

@pytest.mark.parametrize("damage", ["bad_utf8", "garbage_line", "binary"])
def test_damaged_queue_file_does_not_stop_the_trial(rig: Rig, damage: str) -> None:
    rig.make_board()
    rig.publish("1.1.0")
    rig.collector.mode = "503"  # the install's reports stay queued in the file
    assert rig.update()["outcome"] == "ok"
    rig.collector.mode = "up"
    assert rig.board is not None
    q = rig.board.dir / "fs" / "mpota_reports.q"
    lines = q.read_bytes().splitlines(keepends=True)
    assert len(lines) >= 4  # header + checking, downloaded, installed (progress went direct)
    if damage == "bad_utf8":
        lines[2] = lines[2][:20] + b"\xff\xfe" + lines[2][22:]
    elif damage == "garbage_line":
        lines.insert(2, b"\x00\x01 not a record\n")
    else:
        lines = [bytes(range(256)) + b"\n"] + lines
    q.write_bytes(b"".join(lines))
    boot = rig.boot()
    assert boot["outcome"] == "confirmed" and boot["slot"] == "ota_1" and boot["boots"] == ["exit"], boot
    assert rig.state()["pending"] is None
    events = [r["event"] for r in rig.collector.reports]
    assert "confirmed" in events and "installed" in events
    rig.assert_seqs_unique()


# 5. A damaged state blob costs what it held, not the boot or the update ---------------------

WRONG_TYPES = (b'{"seq": 5, "failed": "x", "pending": {"version": 3}, "dl": [1], "floor": "9",'
               b' "fw": {"ota_0": 7}, "rseq": true}')


@pytest.mark.parametrize("blob", [b"\xff\x00{not json", WRONG_TYPES], ids=["garbage", "wrong_types"])
def test_damaged_state_blob_does_not_stop_boot_or_update(rig: Rig, blob: bytes) -> None:
    rig.make_board()
    rig.publish("1.1.0")
    out = rig.run(f'''
import esp32
n = esp32.NVS("mpota")
n.set_blob("state", {blob!r})
n.commit()
''')
    assert out.kind == "exit", out.stdout + out.stderr
    boot = rig.boot()
    assert boot["outcome"] == "normal", boot
    res = rig.update()
    assert res == {"outcome": "ok", "version": "1.1.0", "slot": "ota_1"}, res
    boot = rig.boot()
    assert boot["outcome"] == "confirmed" and boot["slot"] == "ota_1", boot


# 6. A long-lived Updater next to a HealthReporter never reuses a report seq ----------------

def test_long_lived_updater_and_health_reporter_share_report_seqs(rig: Rig) -> None:
    rig.make_board()
    rig.publish("1.1.0")
    # the image arrives damaged twice: two failed installs, each one a transfer
    bad = bytearray((rig.feed.release_dir("1.1.0") / "firmware.bin").read_bytes())
    bad[70000] ^= 0x01
    rig.server.fault("body", "/firmware.bin", body=bytes(bad), times=2)
    out = rig.run(r'''
import json
import mpota
from mpota.updater import Updater
u = Updater.from_config(CONFIG)   # kept by the application, as device_client_example does
codes = []
def attempt():
    try:
        u.update(reset=False)
        codes.append("ok")
    except Exception as e:
        codes.append(getattr(e, "code", repr(e)))
attempt()
hr = mpota.HealthReporter(config=CONFIG, builtin=())
hr.report_health()
attempt()
hr.report_health()
print("RESULT " + json.dumps({"codes": codes}))
''')
    assert out.kind == "exit", out.stdout + out.stderr
    assert out.result() == {"codes": ["hash_mismatch", "hash_mismatch"]}
    rig.assert_seqs_unique()
    assert len(rig.reports("failed")) == 2 and len(rig.reports("heartbeat")) == 2


# 7. Report seqs never repeat, whatever file was lost ----------------------------------------

HEARTBEATS = r'''
import mpota
mpota.boot(config=CONFIG, wdt_ms=0)
hr = mpota.HealthReporter(config=CONFIG, builtin=())
for _ in range(3):
    hr.report_health()
'''


def test_seqs_do_not_repeat_after_the_queue_file_is_lost(rig: Rig) -> None:
    rig.make_board()
    assert rig.run(HEARTBEATS).kind == "exit"
    assert rig.board is not None
    (rig.board.dir / "fs" / "mpota_reports.q").unlink()  # a reformatted filesystem
    assert rig.run(HEARTBEATS).kind == "exit"
    assert len(rig.reports("heartbeat")) == 6
    rig.assert_seqs_unique()


def test_seqs_do_not_repeat_after_the_state_blob_is_lost(rig: Rig) -> None:
    rig.make_board()
    assert rig.run(HEARTBEATS).kind == "exit"
    assert rig.board is not None
    (rig.board.dir / "fs" / "mpota_reports.q").unlink()
    out = rig.run('import esp32\nn = esp32.NVS("mpota")\nn.erase_key("state")\nn.commit()\n')
    assert out.kind == "exit", out.stdout + out.stderr
    assert rig.run(HEARTBEATS).kind == "exit"
    assert len(rig.reports("heartbeat")) == 6
    rig.assert_seqs_unique()


# 8. Retries of the same install are not failures; boot() counts one boot -------------------

def test_second_update_before_the_reset_does_not_count_against_the_rollout(rig: Rig) -> None:
    rig.make_board()
    rig.publish("1.1.0")
    # the application polls again before it resets (same boot: a sim run is one boot)
    res = rig.update("update(reset=False)\n    r = u.update(reset=False)")
    assert res["outcome"] == "error" and res["code"] == "pending", res
    failed = rig.reports("failed")
    assert [f["detail"]["reason"] for f in failed] == ["pending"] and failed[0]["rollout"] == "r-test-1"
    assert "pending" in EXCUSED_REASONS
    # the server's progress for this rollout, fed the device's reports in order
    p = None
    for i, r in enumerate(rig.collector.reports):
        if r.get("rollout") == "r-test-1":
            p = advance_progress(p, r["event"], float(i), (r.get("detail") or {}).get("reason"))
    assert p is not None and p.status == "started"
    boot = rig.boot()
    assert boot["outcome"] == "confirmed", boot


def test_boot_called_twice_counts_one_boot(rig: Rig) -> None:
    rig.make_board()
    out = rig.run(r'''
import json
import mpota
a = mpota.boot(config=CONFIG, wdt_ms=0)
b = mpota.boot(config=CONFIG, wdt_ms=0)
hr = mpota.HealthReporter(config=CONFIG, builtin=())
print("RESULT " + json.dumps({"a": a.outcome, "same": a is b, "boots": hr.boot_count}))
''')
    assert out.kind == "exit", out.stdout + out.stderr
    assert out.result() == {"a": "normal", "same": True, "boots": 1}
    assert rig.state()["boots"] == 1


# 9. An offer is re-checked against the current channel before it is installed --------------

CHECK_THEN_UPDATE = r'''
import json
import os
import time
from mpota.updater import Updater
u = Updater.from_config(CONFIG)
o = u.check()
d = CONFIG[:CONFIG.rfind("/")]
open(d + "/checked", "w").close()
while True:   # the operator acts now
    try:
        os.stat(d + "/go")
        break
    except OSError:
        time.sleep(0.02)
r = u.update(o, reset=False)
print("RESULT " + json.dumps({"offer": o and o.version, "installed": r and r.version}))
'''


@pytest.mark.parametrize("operator", ["halts", "pauses", "moves on", "does nothing"])
def test_offer_is_rechecked_before_install(rig: Rig, operator: str) -> None:
    rig.make_board()
    rig.publish("1.1.0")
    if operator == "moves on":
        rig.feed.add_release("1.2.0", image("1.2.0"))
    assert rig.board is not None
    fs = rig.board.dir / "fs"
    done: list[RunOut] = []
    t = threading.Thread(target=lambda: done.append(rig.run(CHECK_THEN_UPDATE)))
    t.start()
    try:
        deadline = time.monotonic() + 60
        while not (fs / "checked").exists():
            assert time.monotonic() < deadline and t.is_alive(), done
            time.sleep(0.02)
        if operator == "halts":
            rig.feed.set_channel("1.1.0", rollout={"state": "halted"})
        elif operator == "pauses":
            rig.feed.set_channel("1.1.0", rollout={"state": "paused"})
        elif operator == "moves on":
            rig.feed.set_channel("1.2.0")
    finally:
        (fs / "go").write_text("")
        t.join(90)
    out = done[0]
    assert out.kind == "exit", out.stdout + out.stderr
    res = out.result()
    if operator == "does nothing":
        assert res == {"offer": "1.1.0", "installed": "1.1.0"}
        assert rig.state()["pending"]["version"] == "1.1.0"
    else:
        assert res == {"offer": "1.1.0", "installed": None}
        assert rig.image_requests() == [] and rig.state()["pending"] is None
        assert rig.board.sim.next_boot_slot() == "ota_0"
        assert rig.reports("failed") == []


def test_run_output_carries_a_version_for_stock_images(rig: Rig) -> None:
    # reports name the version the board runs even though its image carries none
    rig.make_board(version="1.0.0")
    out = rig.run(HEARTBEATS)
    assert out.kind == "exit", out.stdout + out.stderr
    assert {r["version"] for r in rig.reports("heartbeat")} == {"1.0.0"}
    assert json.loads(json.dumps(rig.state()))["boots"] == 1


# Found on the way: what real servers and CDNs do to an image transfer ------------------------

@pytest.mark.parametrize("fault", ["redirect", "chunked", "chunked_resume", "redirect_resume"])
def test_image_through_redirects_and_chunked_answers(rig: Rig, fault: str) -> None:
    rig.make_board()
    data = rig.publish("1.1.0")
    path = "/firmware.bin"
    if fault == "redirect":
        rig.server.fault("redirect", path, status=307)
    elif fault == "chunked":
        rig.server.fault("chunked", path)
    else:  # the first answer breaks off; the resumed one (Range) is chunked / redirected
        rig.server.fault("drop", path, at=50001)
        rig.server.fault("chunked" if fault == "chunked_resume" else "redirect", path)
    res = rig.update()
    assert res == {"outcome": "ok", "version": "1.1.0", "slot": "ota_1"}, res
    assert rig.board is not None and rig.board.slot("ota_1", len(data)) == data
    kinds = [r.fault for r in rig.image_requests()]
    assert fault.split("_")[0] in kinds, kinds
    if fault.endswith("_resume"):  # resumed from the byte where it broke, not from 0
        assert [r.range for r in rig.image_requests()][:2] == [None, "bytes=50001-"], rig.image_requests()
    assert rig.reports("failed") == []


def test_odd_206_answer_is_refused_not_written(rig: Rig) -> None:
    rig.make_board()
    rig.publish("1.1.0")
    # the image breaks off; the resumed request then gets the bytes of another range
    rig.server.fault("drop", "/firmware.bin", at=50001)
    rig.server.fault("body", "/firmware.bin", body=b"\0" * 300000)
    res = rig.update()
    assert res["outcome"] == "error" and res["code"] == "size_mismatch", res
    assert rig.board is not None and rig.board.sim.next_boot_slot() == "ota_0"
    assert rig.state()["pending"] is None
