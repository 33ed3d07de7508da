"""The Store contract, run on SQLite and on a real PostgreSQL (db_url runs each test on both).

What the app and the orchestrator rely on: a replayed seq refuses its request whole, the newest
report describes the device, rollout progress moves as advance_progress says, operator vs
self registration, rollouts are compare-and-set, channel seqs only grow, migrations are
versioned. test_same_answers_on_both_backends replays one random workload on both and compares
every read, so a query added to one dialect and not the other shows up here.
"""

from __future__ import annotations

import random
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from host_tools.server import migrations
from host_tools.server.store import (
    ConflictError,
    Rollout,
    SQLStore,
    StoreError,
    UnstorableError,
    open_store,
)


def _r(device: str, seq: int, event: str = "heartbeat", **kw: Any) -> dict[str, Any]:
    return {"device_id": device, "seq": seq, "event": event, **kw}


@pytest.fixture
def store(db_url: str) -> Any:
    s = open_store(db_url)
    yield s
    s.close()


def test_replay_refuses_the_whole_request(store: SQLStore) -> None:
    [ok] = store.ingest([("d1", [_r("d1", 1, version="1.0"), _r("d1", 2, version="1.1")])], 10.0)
    assert (ok.accepted, ok.duplicates) == (2, 0)
    # one seq already stored: nothing of the request is kept, not even its new seq 3
    [dup] = store.ingest([("d1", [_r("d1", 3, version="9.9"), _r("d1", 2)])], 11.0)
    assert (dup.accepted, dup.duplicates) == (0, 1)
    assert [e["seq"] for e in store.device_events("d1")] == [1, 2]
    dev = store.get_device("d1")
    assert dev is not None and dev["last_seq"] == 2 and dev["version"] == "1.1" and dev["last_seen"] == 10.0
    # the same seq from two requests in one group commit: the first wins
    a, b, c = store.ingest([("d1", [_r("d1", 3)]), ("d1", [_r("d1", 3), _r("d1", 4)]),
                            ("d2", [_r("d2", 3)])], 12.0)
    assert (a.accepted, b.duplicates, c.accepted) == (1, 1, 1)
    assert [e["seq"] for e in store.device_events("d1")] == [1, 2, 3]


def test_newest_report_describes_the_device(store: SQLStore) -> None:
    store.ingest([("d1", [_r("d1", 5, "confirmed", version="2.0", slot="ota_1", board="b",
                              detail={"free": 1234})])], 10.0)
    store.ingest([("d1", [_r("d1", 3, "downloading", version="1.0")])], 11.0)  # late, older
    dev = store.get_device("d1")
    assert dev is not None
    assert (dev["version"], dev["slot"], dev["last_event"], dev["health"], dev["free_mem"]) == \
           ("2.0", "ota_1", "confirmed", "ok", 1234)
    assert dev["last_seq"] == 5 and dev["last_seen"] == 11.0
    store.ingest([("d1", [_r("d1", 6, "health_failed", detail={"check": "wifi"})])], 12.0)
    dev = store.get_device("d1")
    assert dev is not None and dev["health"] == "failed:wifi"


def test_repeated_inventory_still_moves_what_changes(store: SQLStore) -> None:
    # SQLite's writer rewrites only the seen columns while a device's inventory stays what it last
    # wrote: whatever changes in between (a report's fields, a registration) must still land
    def ingest(seq: int, now: float, **kw: Any) -> dict[str, Any]:
        [ok] = store.ingest([("d1", [_r("d1", seq, **kw)])], now)
        assert ok.accepted == 1
        dev = store.get_device("d1")
        assert dev is not None and (dev["last_seen"], dev["last_seq"]) == (now, seq)
        return dev

    inventory = {"board": "b", "group": "g1", "version": "1.0", "slot": "ota_0"}
    ingest(1, 10.0, **inventory, detail={"free": 10})
    dev = ingest(2, 11.0, **inventory, detail={"free": 20})
    assert (dev["version"], dev["free_mem"], dev["last_event_at"]) == ("1.0", 20, 11.0)
    store.register_device("d1", "b", "g2", 12.0, operator=False)  # the device claims another group
    assert ingest(3, 13.0, **inventory)["claimed_group"] == "g1"
    dev = ingest(4, 14.0, board="b")  # fields left out keep what is stored
    assert (dev["claimed_group"], dev["version"], dev["free_mem"]) == ("g1", "1.0", 20)
    assert ingest(5, 15.0, **{**inventory, "version": "1.1"})["version"] == "1.1"
    store.register_device("d1", "c", "canary", 16.0)  # the operator's board counts from now on
    dev = ingest(6, 17.0, **{**inventory, "version": "1.1"})
    assert (dev["board"], dev["group"], dev["claimed_group"]) == ("c", "canary", "g1")
    assert ingest(7, 18.0, event="health_failed", detail={"check": "wifi"})["health"] == "failed:wifi"
    assert ingest(8, 19.0, event="confirmed", **inventory)["health"] == "ok"


def test_installs_full_vs_delta(store: SQLStore) -> None:
    """`installed` reports by how the image came (detail.delta, device/mpota/delta.py)."""
    inst = "installed"
    store.ingest([("d1", [_r("d1", 1, inst, rollout="r1", detail={"delta": "applied", "bytes": 100,
                                                                    "full_bytes": 1000})]),
                  ("d2", [_r("d2", 1, inst, rollout="r1", detail={"delta": "fallback: bad_patch",
                                                                    "full_bytes": 1000})]),
                  ("d3", [_r("d3", 1, inst, rollout="r1", detail={"slot": "ota_1"})]),
                  ("d4", [_r("d4", 1, inst, rollout="r2", detail={"delta": "applied", "bytes": 5,
                                                                    "full_bytes": 50})]),
                  ("d5", [_r("d5", 1, "downloaded", rollout="r1", detail={"delta": "applied"})])], 10.0)
    assert store.install_kinds("r1") == {"full": 1, "delta": 1, "fallback": 1, "bytes_saved": 900}
    assert store.inventory_summary()["by_install"] == {"full": 1, "delta": 2, "fallback": 1,
                                                      "bytes_saved": 945}


def test_progress_and_accepted_failures(store: SQLStore) -> None:
    store.register_device("a", "b", "canary", 1.0)
    store.register_device("c", "b", "canary", 1.0)
    store.ingest([("a", [_r("a", 1, "downloading", rollout="r1"), _r("a", 2, "installed", rollout="r1")]),
                  ("c", [_r("c", 1, "failed", rollout="r1", detail={"reason": "interrupted"})]),
                  ("x", [_r("x", 1, "confirmed", rollout="r1")])], 10.0)
    store.ingest([("c", [_r("c", 2, "failed", rollout="r1", detail={"reason": "hash"})]),
                  ("a", [_r("a", 3, "health_failed", rollout="r1"),
                         _r("a", 4, "rolled_back", rollout="r1")])],
                 20.0)
    rows = {p.device_id: p for p in store.rollout_progress("b", "r1")}
    assert (rows["a"].status, rows["a"].health_failed, rows["a"].started_at) == ("rolled_back", True, 10.0)
    assert (rows["c"].status, rows["c"].finished_at, rows["c"].group) == ("failed", 20.0, "canary")
    assert rows["x"].on_board is False and rows["x"].status == "confirmed"
    assert store.accept_failures("r1", timed_out_before=0.0) == 2
    assert store.accept_failures("r1", timed_out_before=0.0) == 0
    rows = {p.device_id: p for p in store.rollout_progress("b", "r1")}
    assert rows["a"].accepted and rows["c"].accepted and not rows["x"].accepted
    # a new attempt clears the acceptance (the writer must not use a stale cached row)
    store.ingest([("c", [_r("c", 3, "downloading", rollout="r1")])], 30.0)
    rows = {p.device_id: p for p in store.rollout_progress("b", "r1")}
    assert (rows["c"].status, rows["c"].accepted, rows["c"].started_at) == ("started", False, 30.0)


def test_registration_operator_and_self(store: SQLStore) -> None:
    store.register_device("d1", "b1", "lab", 1.0, operator=False)
    dev = store.get_device("d1")
    assert dev is not None and (dev["board"], dev["group"], dev["claimed_group"]) == ("b1", None, "lab")
    store.register_device("d1", "b2", "canary", 2.0, channel="beta")
    store.register_device("d1", "b3", "evil", 3.0, operator=False)  # the operator's word stands
    dev = store.get_device("d1")
    assert dev is not None
    assert (dev["board"], dev["group"], dev["channel"], dev["claimed_group"], dev["registered_at"]) == \
           ("b2", "canary", "beta", "evil", 2.0)
    store.ingest([("d1", [_r("d1", 1, board="b9", group="g9")])], 4.0)
    dev = store.get_device("d1")
    assert dev is not None and (dev["board"], dev["group"], dev["claimed_group"]) == ("b2", "canary", "g9")
    assert [d["device_id"] for d in store.list_devices("b2")] == ["d1"] and store.list_devices("b9") == []


def test_reset_seq_keeps_history_and_allows_seq_again(store: SQLStore) -> None:
    store.ingest([("d1", [_r("d1", 1), _r("d1", 2)])], 1.0)
    store.register_device("d1", "b", None, 2.0, reset_seq=True)
    [res] = store.ingest([("d1", [_r("d1", 1, "confirmed")])], 3.0)
    assert res.accepted == 1
    seqs = [e["seq"] for e in store.device_events("d1")]
    assert seqs[-1] == 1 and len(seqs) == 3 and all(s < 0 for s in seqs[:2])
    store.register_device("d1", "b", None, 4.0, reset_seq=True)  # twice: still unique and below
    assert len({e["seq"] for e in store.device_events("d1")}) == 3


def test_text_with_nul_is_unstorable_on_both(store: SQLStore) -> None:
    with pytest.raises(UnstorableError, match="NUL"):
        store.ingest([("d1", [_r("d1", 1, version="1\x00")])], 1.0)
    assert store.device_events("d1") == []


def _rollout(rid: str, channel: str = "stable", created: float = 1.0) -> Rollout:
    return Rollout(id=rid, board="b", channel=channel, version="2.0", plan={"x": 1}, created_at=created)


def test_rollouts_compare_and_set(store: SQLStore) -> None:
    store.create_rollout(_rollout("r1"))
    with pytest.raises(ConflictError, match="already exists"):
        store.create_rollout(_rollout("r1", "beta"))
    with pytest.raises(ConflictError, match="still active"):
        store.create_rollout(_rollout("r2"))
    store.create_rollout(_rollout("r3", "beta", created=0.5))
    r = store.get_rollout("r1")
    assert r is not None and r.plan == {"x": 1} and r.revision == 1
    r.state, r.revision = "paused", 2
    store.save_rollout(r, expect_revision=1)
    r.revision = 3
    with pytest.raises(ConflictError, match="changed meanwhile"):
        store.save_rollout(r, expect_revision=1)
    assert [x.id for x in store.list_rollouts()] == ["r3", "r1"]
    store.mark_published("r1", 2, 7)
    store.mark_published("r1", 1, 5)  # an older revision never moves it back
    r = store.get_rollout("r1")
    assert r is not None and (r.state, r.published_revision, r.published_seq) == ("paused", 2, 7)
    store.add_history("r1", 5.0, "pause", "why", {"n": 1})
    store.add_history("r1", 6.0, "resume", "ok")
    assert store.history("r1") == [{"time": 5.0, "kind": "pause", "message": "why", "numbers": {"n": 1}},
                                   {"time": 6.0, "kind": "resume", "message": "ok", "numbers": None}]
    assert store.get_rollout("nope") is None


def test_channel_seq_only_grows(store: SQLStore) -> None:
    store.create_rollout(_rollout("r1"))
    signed: list[int] = []

    def sign(seq: int) -> bytes:
        signed.append(seq)
        return b"doc %d" % seq
    assert store.publish_channel("b", "stable", 0, sign, "r1", 1) == (1, b"doc 1")
    assert store.publish_channel("b", "stable", 0, sign, "r1", 1) is None  # already published
    r = store.get_rollout("r1")
    assert r is not None and (r.published_revision, r.published_seq) == (1, 1)
    r.revision = 2
    store.save_rollout(r, 1)
    assert store.publish_channel("b", "stable", 0, sign, "r1", 1) is None  # superseded by revision 2
    # a file signed by hand with a higher seq is the floor
    assert store.publish_channel("b", "stable", 40, sign, "r1", 2) == (41, b"doc 41")
    r.revision = 3
    store.save_rollout(r, 2)
    assert store.publish_channel("b", "stable", 2, sign, "r1", 3) == (42, b"doc 42")
    assert signed == [1, 41, 42]
    assert store.channel_docs() == [("b", "stable", 42, b"doc 42")]
    # a document re-signed outside (before expiry) is recorded only when newer
    assert store.note_channel("b", "stable", 42, b"other") is False
    assert store.note_channel("b", "stable", 43, b"fresh") is True
    assert store.publish_channel("b", "beta", 0, sign) == (1, b"doc 1")  # no rollout: just the seq
    assert store.channel_docs() == [("b", "beta", 1, b"doc 1"), ("b", "stable", 43, b"fresh")]
    with pytest.raises(StoreError, match="no rollout"):
        store.publish_channel("b", "stable", 0, sign, "nope", 1)


def test_migrations_are_versioned(db_url: str) -> None:
    s = open_store(db_url, migrate=False)
    try:
        st = s.schema_status()
        assert (st.version, st.latest) == (0, migrations.LATEST) and len(st.pending) == migrations.LATEST
        assert s.migrate() == [(v, n) for v, n, _ in migrations.MIGRATIONS]
        assert s.migrate() == []
        assert s.schema_status().pending == []
        with s._tx() as conn:  # a database from a newer mpota is refused, not downgraded
            conn.execute("INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                         (migrations.LATEST + 1, "future", 0.0))
        with pytest.raises(StoreError, match="newer than this mpota"):
            s.migrate()
    finally:
        s.close()


def test_version_2_events_move_to_device_keys(db_url: str) -> None:
    # a database from before device keys: events held the text device_id
    s = open_store(db_url, migrate=False)
    try:
        dialect = s.dialect
        with s._tx() as conn:
            for _version, _name, text in migrations.MIGRATIONS[:2]:
                for statement in migrations.ddl(text, dialect):
                    conn.execute(statement)
            conn.execute(migrations.ddl(migrations._VERSION_TABLE, dialect)[0])
            for version, name, _ in migrations.MIGRATIONS[:2]:
                conn.execute("INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                             (version, name, 0.0))
            conn.execute("INSERT INTO devices (device_id, board, grp, registered_at, last_seq) "
                         "VALUES ('a', 'b', 'g', 1.0, 2)")
            for device_id, seq, detail in (("a", 1, None), ("a", 2, '{"free":5}'), ("orphan", 7, None)):
                conn.execute("INSERT INTO events (received, device_id, seq, event, version, detail) "
                             "VALUES (?, ?, ?, 'heartbeat', '1.0', ?)", (float(seq), device_id, seq, detail))
        assert s.schema_status().version == 2
        assert s.migrate() == [(v, n) for v, n, _ in migrations.MIGRATIONS[2:]]
        events = s.device_events(None)
        assert [(e["device_id"], e["seq"], e["version"], e["detail"]) for e in events] == [
            ("a", 1, "1.0", None), ("a", 2, "1.0", {"free": 5}), ("orphan", 7, "1.0", None)]
        a = s.get_device("a")
        assert a is not None and (a["group"], a["last_seq"]) == ("g", 2)
        [replay, fresh] = s.ingest([("a", [_r("a", 2)]), ("orphan", [_r("orphan", 8)])], 9.0)
        assert (replay.duplicates, fresh.accepted) == (1, 1)
    finally:
        s.close()


def test_sqlite_database_from_before_versions_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE devices (device_id TEXT PRIMARY KEY, board TEXT, grp TEXT, registered_at REAL,
            first_seen REAL, last_seen REAL, version TEXT, slot TEXT, last_event TEXT, last_event_at REAL,
            health TEXT, free_mem INTEGER, rollout TEXT, target TEXT, last_seq INTEGER NOT NULL DEFAULT -1);
        CREATE TABLE progress (rollout_id TEXT NOT NULL, device_id TEXT NOT NULL, status TEXT,
            started_at REAL, finished_at REAL, health_failed INTEGER NOT NULL DEFAULT 0, updated_at REAL,
            PRIMARY KEY (rollout_id, device_id)) WITHOUT ROWID;
        INSERT INTO devices (device_id, grp, registered_at)
            VALUES ('self', 'claimed', NULL), ('op', 'g', 1.0);
    """)
    conn.close()
    s = open_store(str(path))
    try:
        assert s.schema_status().version == migrations.LATEST
        a, b = s.get_device("self"), s.get_device("op")
        assert a is not None and (a["group"], a["claimed_group"]) == (None, "claimed")
        assert b is not None and b["group"] == "g"
    finally:
        s.close()


def _workload(seed: int) -> list[tuple[str, Any]]:
    rnd = random.Random(seed)
    ops: list[tuple[str, Any]] = []
    devices = [f"dev-{i}" for i in range(12)]
    seqs = dict.fromkeys(devices, 0)
    events = ["checking", "downloading", "downloaded", "installed", "confirmed", "health_failed",
              "rolled_back", "failed", "heartbeat"]
    for d in devices[:8]:
        ops.append(("register", (d, "b", rnd.choice(["canary", "pilot", None]), rnd.random() < 0.5)))
    t = 100.0
    for _ in range(60):
        t += 1
        kind = rnd.random()
        if kind < 0.8:
            batch = []
            for d in rnd.sample(devices, rnd.randint(1, 4)):
                reports = []
                for _ in range(rnd.randint(1, 3)):
                    if rnd.random() < 0.15 and seqs[d] > 0:
                        seq = rnd.randint(1, seqs[d])  # a replay (or a late one)
                    else:
                        seqs[d] += rnd.randint(1, 2)
                        seq = seqs[d]
                    detail = rnd.choice([None, {"reason": "interrupted"}, {"check": "x", "free": 5},
                                         {"health": "ok"}])
                    reports.append(_r(d, seq, rnd.choice(events), rollout=rnd.choice(["r1", "r1", None]),
                                      version=rnd.choice(["1.0", "2.0", None]), detail=detail))
                if len({r["seq"] for r in reports}) == len(reports):
                    batch.append((d, reports))
            ops.append(("ingest", (batch, t)))
        elif kind < 0.9:
            ops.append(("accept", t - rnd.randint(0, 30)))
        else:
            d = rnd.choice(devices)
            ops.append(("reset", (d, t)))
            seqs[d] = 0
    return ops


def _observe(s: SQLStore) -> Any:
    events = s.device_events(None, 10000)
    for e in events:
        e.pop("received")
    return (sorted(s.rollout_progress("b", "r1")), s.list_devices(), events,
            s.inventory_summary(), [s.get_device(f"dev-{i}") for i in range(12)])


@pytest.mark.postgres
@pytest.mark.parametrize("seed", [1, 2])
def test_same_answers_on_both_backends(seed: int, tmp_path: Path, pg_url: str) -> None:
    backends = [open_store(str(tmp_path / "db.sqlite")), open_store(pg_url)]
    try:
        seen = []
        for s in backends:
            answers: list[Any] = []
            for op, arg in _workload(seed):
                if op == "register":
                    d, b, g, operator = arg
                    answers.append(s.register_device(d, b, g, 1.0, operator=operator))
                elif op == "ingest":
                    answers.append(s.ingest(*arg))
                elif op == "accept":
                    answers.append(s.accept_failures("r1", arg))
                else:
                    answers.append(s.register_device(arg[0], None, None, arg[1], reset_seq=True))
            seen.append((answers, _observe(s)))
        assert seen[0][0] == seen[1][0]
        for a, b in zip(seen[0][1], seen[1][1], strict=True):
            assert a == b
    finally:
        for s in backends:
            s.close()


@pytest.mark.postgres
def test_two_replicas_never_double_count(pg_url: str) -> None:
    """Two stores (as two replicas would) take the same device's reports at once: every seq is
    stored once, every request is answered accepted or duplicate, progress ends as one writer's."""
    stores = [open_store(pg_url), open_store(pg_url)]
    answers: list[list[tuple[int, int]]] = [[], []]

    def send(i: int) -> None:
        for seq in range(1, 121):
            [res] = stores[i].ingest([("d1", [_r("d1", seq, "downloading" if seq < 120 else "confirmed",
                                                   rollout="r1")])], float(seq))
            answers[i].append((res.accepted, res.duplicates))
    try:
        threads = [threading.Thread(target=send, args=(i,)) for i in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for seq in range(120):  # each seq: exactly one replica accepted it
            assert sorted([answers[0][seq], answers[1][seq]]) == [(0, 1), (1, 0)]
        assert [e["seq"] for e in stores[0].device_events("d1", 1000)] == list(range(1, 121))
        [p] = stores[1].rollout_progress("b", "r1")
        assert p.status == "confirmed" and p.started_at == 1.0
        dev = stores[0].get_device("d1")
        assert dev is not None and dev["last_seq"] == 120 and dev["last_event"] == "confirmed"
    finally:
        for s in stores:
            s.close()


@pytest.mark.postgres
def test_one_open_rollout_per_channel_across_replicas(pg_url: str) -> None:
    stores = [open_store(pg_url) for _ in range(4)]
    outcomes: list[str] = []

    def create(i: int) -> None:
        try:
            stores[i].create_rollout(_rollout(f"r{i}"))
            outcomes.append("ok")
        except ConflictError:
            outcomes.append("conflict")
    try:
        threads = [threading.Thread(target=create, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["conflict"] * 3 + ["ok"]
        assert len(stores[0].list_rollouts()) == 1
    finally:
        for s in stores:
            s.close()


def test_postgres_url_errors_are_one_line() -> None:
    with pytest.raises(StoreError, match="unsupported database URL mysql://"):
        open_store("mysql://x@y/z")
    from host_tools.server.store_pg import PostgresStore

    with pytest.raises(StoreError, match=r"cannot connect to PostgreSQL \(.*port=1.*\): .*refused"):
        PostgresStore("postgresql://nobody:secret@127.0.0.1:1/nodb", timeout=1.0)


@pytest.mark.postgres
def test_postgres_connection_errors_say_why(pg_url: str) -> None:
    from host_tools.server.store_pg import PostgresStore

    wrong = pg_url.rsplit("/", 1)[0] + "/no_such_db"
    with pytest.raises(StoreError, match=r'database "no_such_db" does not exist') as info:
        PostgresStore(wrong.replace("postgres@", "postgres:hunter2@"), timeout=2.0)
    assert "hunter2" not in str(info.value)


def test_db_check_and_migrate_commands(db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    from host_tools.cli import main

    if db_url.startswith("sqlite:///"):
        assert main(["db", "check", "--db", db_url]) != 0  # no file yet: one line, nothing created
        assert "no database at" in capsys.readouterr().err
        assert not Path(db_url[len("sqlite:///"):]).exists()
        sqlite3.connect(db_url[len("sqlite:///"):]).close()
    assert main(["db", "check", "--db", db_url]) == 1
    assert f"schema version 0 of {migrations.LATEST}" in capsys.readouterr().out
    assert main(["db", "migrate", "--db", db_url]) == 0
    assert "applied 1: devices" in capsys.readouterr().out
    assert main(["db", "check", "--db", db_url, "--json"]) == 0
    assert '"pending": []' in capsys.readouterr().out
    assert main(["db", "migrate", "--db", db_url]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_server_takes_reports_on_either_backend(db_url: str, tmp_path: Path) -> None:
    from host_tools.server.app import ServerConfig
    from sim.serverkit import ReportingDevice, ServerThread

    feed = tmp_path / "feed"
    feed.mkdir()
    secret = b"s" * 32
    with ServerThread(ServerConfig(feed_dir=feed, db_url=db_url, fleet_secret=secret)) as srv:
        dev = ReportingDevice(srv.url, secret, "dev-1", version="1.0")
        assert dev.report("checking") == 200
        assert dev.post(_r("dev-1", 1, "checking"))[0] == 409
        assert dev.register(secret, "canary") == 200
        stored = srv.server.store.get_device("dev-1")
        assert stored is not None and (stored["version"], stored["group"]) == ("1.0", "canary")
