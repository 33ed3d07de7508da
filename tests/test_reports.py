"""Device reports (device/mpota/report.py): built per ARCHITECTURE.md, queued in a bounded
file while offline, flushed oldest first to a real HTTP collector on loopback, under
CPython and the MicroPython unix port."""

from __future__ import annotations

import json
import subprocess
import textwrap
from pathlib import Path

import pytest
from collector import Collector

from sim.deviceproc import import_path_env, interpreter_cmd

PRELUDE = """
import json
from mpota.state import State
from mpota.filestore import FileStore
from mpota.report import Reporter
ROOT = {root!r}
CFG = {{"device_id": "dev-1", "board": "esp32-generic-4mb", "group": "pilot",
        "report_url": {url!r}, "token": "tok-1", "allow_http": True, "version": "1.0.0"}}
def state():
    return State(FileStore(ROOT + "/mpota_state.json"))
"""


def run_device(interp: str, tmp_path: Path, url: str, body: str, timeout: float = 60) -> str:
    root = tmp_path / "fs"
    root.mkdir(exist_ok=True)
    script = tmp_path / "script.py"
    prelude = PRELUDE.format(root=str(root), url=url)
    script.write_text(prelude + textwrap.dedent(body))
    proc = subprocess.run(interpreter_cmd(interp, "200k") + [str(script)], capture_output=True, text=True,
                          timeout=timeout, env=import_path_env(interp))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def last_json(out: str) -> dict:
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError("no JSON result in output:\n" + out)


@pytest.fixture
def collector():
    with Collector(tokens={"dev-1": "tok-1"}) as c:
        yield c


def test_events_reach_collector_with_contract_fields(interp, tmp_path, collector):
    out = run_device(interp, tmp_path, collector.url, """
        st = state()
        r = Reporter(CFG, st, ROOT)
        r.event("checking", target="1.1.0", rollout="r-1")
        for pct in (0, 25, 50, 75, 100):
            r.event("downloading", target="1.1.0", rollout="r-1", progress=pct)
        r.event("failed", target="1.1.0", rollout="r-1", reason="hash_mismatch")
        r.heartbeat(health="OK")
        print(json.dumps({"pending": r.pending(), "sent": r.sent}))
    """)
    res = last_json(out)
    assert res == {"pending": 0, "sent": 8}
    assert collector.events() == ["checking"] + ["downloading"] * 5 + ["failed", "heartbeat"]
    progress = [r["detail"]["progress"] for r in collector.of("downloading")]
    assert progress == [0, 25, 50, 75, 100]
    seqs = [r["seq"] for r in collector.reports]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    failed = collector.of("failed")[0]
    for key in ("device_id", "seq", "event", "uptime_ms", "board", "group", "version", "slot",
                "rollout", "target", "detail"):
        assert key in failed
    assert failed["device_id"] == "dev-1" and failed["group"] == "pilot"
    assert failed["rollout"] == "r-1" and failed["target"] == "1.1.0"
    assert failed["version"] == "1.0.0"
    assert failed["detail"] == {"reason": "hash_mismatch"}
    hb = collector.of("heartbeat")[0]
    assert hb["detail"]["health"] == "OK"
    if interp == "micropython":
        assert isinstance(hb["detail"]["free"], int) and hb["detail"]["free"] > 0


def test_offline_queue_survives_restart_and_flushes_oldest_first(interp, tmp_path, collector):
    collector.mode = "503"
    out = run_device(interp, tmp_path, collector.url, """
        st = state()
        r = Reporter(CFG, st, ROOT)
        for i in range(5):
            r.event("failed", reason="download", n=i)
        print(json.dumps({"pending": r.pending(), "rseq": st["rseq"]}))
    """)
    # rseq was never saved to the state file: the queue file carries it
    assert last_json(out) == {"pending": 5, "rseq": 5}
    assert collector.reports == []
    assert 503 in collector.posts
    collector.mode = "up"
    out = run_device(interp, tmp_path, collector.url, """
        st = state()
        r = Reporter(CFG, st, ROOT)
        seq = st["rseq"]
        n = r.flush(5000)
        s2 = r.event("installed", target="2.0.0")
        print(json.dumps({"seq_before": seq, "flushed": n, "pending": r.pending(), "new": s2}))
    """)
    res = last_json(out)
    assert res == {"seq_before": 5, "flushed": 5, "pending": 0, "new": 6}
    assert [r["detail"].get("n") for r in collector.reports[:5]] == [0, 1, 2, 3, 4]
    assert [r["seq"] for r in collector.reports] == [1, 2, 3, 4, 5, 6]


def test_full_queue_drops_heartbeats_before_decisions(interp, tmp_path, collector):
    collector.mode = "drop"
    out = run_device(interp, tmp_path, collector.url, """
        st = state()
        r = Reporter(CFG, st, ROOT)
        r.event("installed", target="2.0.0")
        for i in range(40):
            r.heartbeat(health="OK")
        r.event("confirmed", target="2.0.0")
        r.event("downloading", target="2.0.0", progress=0)
        print(json.dumps({"pending": r.pending(), "queued": r.queued()}))
    """)
    res = last_json(out)
    assert res["pending"] == 32
    q = res["queued"]
    assert q[0] == 1  # the decision queued first is still there
    assert 42 in q and 43 in q  # confirmed, downloading pushed heartbeats out
    lines = (tmp_path / "fs" / "mpota_reports.q").read_text().splitlines()
    assert lines[0] == "r 43"
    kinds = [ln.split(" ", 1)[0] for ln in lines[1:]]
    assert kinds.count("d") == 2 and kinds.count("p") == 1 and kinds.count("h") == 29
    # a queue full of decisions refuses a heartbeat instead of dropping a decision
    out = run_device(interp, tmp_path, collector.url, """
        st = state()
        r = Reporter(CFG, st, ROOT)
        for i in range(40):
            r.event("failed", reason="download")
        hb = r.heartbeat(health="OK")
        kinds = [ln.split(" ", 1)[0] for ln in open(ROOT + "/mpota_reports.q")]
        print(json.dumps({"hb": hb, "pending": r.pending(), "h": kinds.count("h")}))
    """)
    assert last_json(out) == {"hb": None, "pending": 32, "h": 0}


def test_torn_tail_is_dropped_and_seq_not_reused(interp, tmp_path, collector):
    fs = tmp_path / "fs"
    fs.mkdir()
    good = json.dumps({"device_id": "dev-1", "seq": 7, "event": "installed", "detail": {}})
    (fs / "mpota_reports.q").write_text(f"r 6\nd 7 {good}\nd 8 {{\"device_id\": \"dev-1\", \"se")
    out = run_device(interp, tmp_path, collector.url, """
        st = state()
        r = Reporter(CFG, st, ROOT)
        before = r.queued()
        seq = r.event("confirmed", target="2.0.0")
        print(json.dumps({"before": before, "seq": seq, "pending": r.pending()}))
    """)
    res = last_json(out)
    assert res == {"before": [7], "seq": 8, "pending": 0}
    assert [(r["seq"], r["event"]) for r in collector.reports] == [(7, "installed"), (8, "confirmed")]


def test_reserved_seq_is_idempotent_and_409_counts_as_delivered(interp, tmp_path, collector):
    out = run_device(interp, tmp_path, collector.url, """
        st = state()
        r = Reporter(CFG, st, ROOT)
        a = r.event("confirmed", seq=3, target="2.0.0")
        # the same decision again after a "reset": same seq, server says 409 = delivered
        r2 = Reporter(CFG, state(), ROOT)
        b = r2.event("confirmed", seq=3, target="2.0.0")
        c = r2.event("heartbeat")
        print(json.dumps({"a": a, "b": b, "c": c, "pending": r2.pending()}))
    """)
    assert last_json(out) == {"a": 3, "b": 3, "c": 4, "pending": 0}
    assert [(r["seq"], r["event"]) for r in collector.reports] == [(3, "confirmed"), (4, "heartbeat")]
    assert collector.posts.count(409) == 1


def test_wrong_token_is_dropped_not_retried_forever(interp, tmp_path, collector):
    collector.tokens = {"dev-1": "other"}
    out = run_device(interp, tmp_path, collector.url, """
        st = state()
        r = Reporter(CFG, st, ROOT)
        r.event("installed")
        print(json.dumps({"pending": r.pending(), "status": r.last_status, "sent": r.sent}))
    """)
    assert last_json(out) == {"pending": 0, "status": 401, "sent": 0}
    assert collector.reports == []


def test_offline_event_does_not_block(interp, tmp_path):
    # nothing listens on this port: each event() costs one refused connect, then backs off
    with Collector() as c:
        url = c.url
    out = run_device(interp, tmp_path, url, """
        from mpota.report import ticks_ms, ticks_diff
        st = state()
        r = Reporter(CFG, st, ROOT)
        t0 = ticks_ms()
        for i in range(20):
            r.heartbeat(health="OK")
        print(json.dumps({"ms": ticks_diff(ticks_ms(), t0), "pending": r.pending()}))
    """)
    res = last_json(out)
    assert res["pending"] == 20
    assert res["ms"] < 3000
    assert out.count("flush failed") == 1  # backed off after the first failure


def test_two_reporters_in_one_process_never_share_a_seq(interp, tmp_path, collector):
    # the trial, the updater and the app each hold a Reporter with their own State object
    out = run_device(interp, tmp_path, collector.url, """
        a = Reporter(CFG, state(), ROOT)
        b = Reporter(CFG, state(), ROOT)
        seqs = [a.event("installed"), b.heartbeat(), a.heartbeat(), b.event("failed", reason="x")]
        head = open(ROOT + "/mpota_reports.q").readline()
        print(json.dumps({"seqs": seqs, "head": head}))
    """)
    res = last_json(out)
    assert res["seqs"] == [1, 2, 3, 4]
    assert res["head"].startswith("r ")
    assert sorted(r["seq"] for r in collector.reports) == [1, 2, 3, 4]


def test_reports_reach_the_real_rollout_server(interp, tmp_path):
    from host_tools.fleet import device_token
    from host_tools.server.app import ServerConfig
    from sim.serverkit import ServerThread

    secret = b"s" * 32
    feed = tmp_path / "srv" / "feed"
    feed.mkdir(parents=True)
    cfg = ServerConfig(feed_dir=feed, fleet_secret=secret, tick_s=60)
    token = device_token(secret, "dev-1")
    with ServerThread(cfg) as srv:
        url = srv.url + "/v1/reports"
        out = run_device(interp, tmp_path, url, f"""
            CFG["token"] = {token!r}
            st = state()
            r = Reporter(CFG, st, ROOT)
            r.event("checking", target="1.1.0", rollout="r-1")
            r.event("failed", target="1.1.0", rollout="r-1", reason="bad_signature", error="x" * 300)
            # the same decision again (a reset before the state was cleared): 409 = delivered
            r.event("confirmed", seq=9, target="1.1.0")
            r2 = Reporter(CFG, state(), ROOT)
            reset_queues()
            r3 = Reporter(CFG, state(), ROOT)
            r3.event("confirmed", seq=9, target="1.1.0")
            r3.heartbeat(health="OK")
            print(json.dumps({{"pending": r3.pending(), "status": r3.last_status}}))
        """.replace("reset_queues()", "import mpota.report; mpota.report.reset_queues()"))
        assert last_json(out) == {"pending": 0, "status": 200}
        events = srv.server.store.device_events("dev-1")
    assert [(e["seq"], e["event"]) for e in events] == [
        (1, "checking"), (2, "failed"), (9, "confirmed"), (10, "heartbeat")]
    failed = events[1]
    assert failed["detail"]["reason"] == "bad_signature" and len(failed["detail"]["error"]) <= 80
    assert failed["rollout"] == "r-1" and failed["target"] == "1.1.0" and failed["group"] == "pilot"


def test_damaged_state_file_and_queue_cost_only_what_they_held(interp, tmp_path, collector):
    root = tmp_path / "fs"
    root.mkdir()
    (root / "mpota_state.json").write_bytes(b'{"seq": {"stable": "x"}, "floor": 3, "failed": [["1.0.0"]], '
                                            b'\xff')
    (root / "mpota_reports.q").write_bytes(b"r 7\nd 5 {\"seq\": 5, \"event\": \"fa\xffiled\"}\ngarbage\xfe\n"
                                           b"d 6 {not json}\n")
    out = run_device(interp, tmp_path, collector.url, """
        st = state()
        r = Reporter(CFG, st, ROOT)
        seq = r.event("checking", target="1.1.0")
        n = r.flush(5000)
        print(json.dumps({"floor": st["floor"], "seq": seq, "pending": r.pending(), "failed": st["failed"]}))
    """)
    res = last_json(out)
    # the state file did not parse: defaults; the queue's high-water mark (7) still holds
    assert res == {"floor": 0, "seq": 8, "pending": 0, "failed": []}
    assert [r["seq"] for r in collector.reports] == [8]
