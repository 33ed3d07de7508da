"""Trial boot (device/mpota/trial.py, health.py): confirm or roll back, idempotent under
resets and power cuts at every step.

Part 1 runs mpota.boot() in-process under CPython on a small model board (otadata with
ESP-IDF rollback semantics, NVS commits, power cuts before any commit or otadata write),
which makes the exhaustive fault-injection sweep fast. Part 2 runs the same flows on the
simulated board (sim/fakes, sim/board.py) under CPython and the MicroPython unix port.
Reports go to a real HTTP collector on loopback in both parts.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from collector import Collector

from sim.images import build_sim_image

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- model board (part 1)
_IMAGES = {v: build_sim_image("esp32", v, "mpota-app", 0) for v in ("1.0.0", "1.1.0")}

class PowerCut(BaseException):
    pass


class Reset(BaseException):
    pass


class Model:
    """A board that has booted its factory image once: its flash and otadata are a SimBoard's
    (sim/fakes/simota.py, the one model of ESP-IDF's otadata and rollback), driven in this
    process; NVS with commit; every commit and otadata write counted as a power-cut point."""

    def __init__(self, root: Path, rollback: bool = True) -> None:
        from sim.board import SimBoard

        self.rollback = rollback
        self.board = SimBoard.create(tempfile.mkdtemp(dir=root), image=_IMAGES["1.0.0"], device=None,
                                     rollback_supported=rollback)
        self.running = self.board.power_on()
        self.nvs: dict[str, bytes] = {}
        self.ops: list[str] = []
        self.cut_at = -1
        self.wifi = True
        self.cause = 1
        self.boots: list[str] = []
        self.wdt: int | None = None

    def op(self, what: str) -> None:
        self.ops.append(what)
        if len(self.ops) == self.cut_at:
            raise PowerCut(what)

    @property
    def boot(self) -> str | None:
        """The slot the otadata selects (Partition(Partition.BOOT))."""
        return self.board.boot_slot()

    @property
    def states(self) -> dict[str, str | None]:
        """Each slot's otadata state: NEW, PENDING_VERIFY, VALID, ABORTED, UNDEFINED or None."""
        return {label: self.board.ota_state(label) for label in ("ota_0", "ota_1")}

    def power_on(self) -> str:
        b = self.board.power_on()
        assert b is not None
        self.running = b
        self.boots.append(b)
        self.wdt = None
        return b

    def modules(self) -> dict[str, Any]:
        model = self

        class Partition:
            BOOT, RUNNING, TYPE_APP = 0, 1, 0

            def __init__(self, which: Any) -> None:
                if which == Partition.RUNNING:
                    which = model.running
                elif which == Partition.BOOT:
                    which = model.boot
                self.label = which

            def info(self) -> tuple[Any, ...]:
                addr = 0x10000 if self.label == "ota_0" else 0x190000
                return (0, 0x10 if self.label == "ota_0" else 0x11, addr, 0x180000, self.label, False)

            @classmethod
            def find(cls, type: int = 0, subtype: int = 255, label: str | None = None) -> list[Any]:
                return [cls(lb) for lb in ("ota_0", "ota_1") if label in (None, lb)]

            def readblocks(self, block: int, buf: Any, off: int = 0) -> None:
                for i in range(len(buf)):
                    buf[i] = 0xFF

            def set_boot(self) -> None:
                model.op("set_boot " + self.label)
                model.board.set_boot(self.label)

            @staticmethod
            def mark_app_valid_cancel_rollback() -> None:
                if not model.rollback:
                    raise OSError(-261, "ESP_ERR_NOT_SUPPORTED")
                if model.states[model.running] != "VALID":
                    model.op("mark_valid " + model.running)
                    model.board.mark_valid()

        class NVS:
            def __init__(self, ns: str) -> None:
                self.staged: dict[str, bytes] = {}

            def set_blob(self, key: str, value: Any) -> None:
                self.staged[key] = bytes(value.encode() if isinstance(value, str) else value)

            def get_blob(self, key: str, buf: bytearray) -> int:
                if key not in model.nvs:
                    raise OSError(-0x1102)
                data = model.nvs[key]
                buf[: len(data)] = data
                return len(data)

            def commit(self) -> None:
                model.op("commit")
                model.nvs.update(self.staged)

            def set_i32(self, key: str, value: int) -> None:
                self.staged["i:" + key] = str(value).encode()

            def get_i32(self, key: str) -> int:
                if "i:" + key not in model.nvs:
                    raise OSError(-0x1102)
                return int(model.nvs["i:" + key])

        class WDT:
            def __init__(self, timeout: int = 5000, id: int = 0) -> None:
                model.wdt = timeout

            def feed(self) -> None:
                pass

        def reset() -> None:
            raise Reset()

        esp32 = type(sys)("esp32")
        esp32.Partition = Partition  # type: ignore[attr-defined]
        esp32.NVS = NVS  # type: ignore[attr-defined]
        machine = type(sys)("machine")
        machine.reset = reset  # type: ignore[attr-defined]
        machine.WDT = WDT  # type: ignore[attr-defined]
        machine.WDT_RESET = 3  # type: ignore[attr-defined]
        machine.reset_cause = lambda: model.cause  # type: ignore[attr-defined]
        network = type(sys)("network")
        network.STA_IF = 0  # type: ignore[attr-defined]

        class WLAN:
            def __init__(self, i: int) -> None:
                pass

            def isconnected(self) -> bool:
                return model.wifi

        network.WLAN = WLAN  # type: ignore[attr-defined]
        return {"esp32": esp32, "machine": machine, "network": network}

    def state(self) -> dict[str, Any]:
        return json.loads(self.nvs["state"]) if "state" in self.nvs else {}


@pytest.fixture
def collector():
    with Collector(tokens={"dev-1": "tok-1"}) as c:
        yield c


@pytest.fixture
def rig(tmp_path, collector, monkeypatch):
    return Rig(tmp_path, collector, monkeypatch)


class Rig:
    def __init__(self, tmp_path: Path, collector: Collector, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fs = tmp_path / "fs"
        self.fs.mkdir()
        self.collector = collector
        self.mp = monkeypatch
        self.config = str(self.fs / "mpota.json")
        self.write_config()
        self.tmp = tmp_path
        self.model = Model(tmp_path)

    def write_config(self, **extra: Any) -> None:
        cfg = {"device_id": "dev-1", "board": "esp32-generic-4mb", "group": "canary",
               "feed_url": "http://127.0.0.1:9/feed/", "channel": "stable",
               "report_url": self.collector.url, "token": "tok-1", "allow_http": True, "version": "1.0.0",
               "keys": {"release": ["04" + "11" * 64], "rollout": ["04" + "11" * 64]}}
        cfg.update(extra)
        Path(self.config).write_text(json.dumps(cfg))

    def install(self) -> None:
        for name, mod in self.model.modules().items():
            self.mp.setitem(sys.modules, name, mod)
        import mpota.report
        import mpota.trial

        mpota.report.reset_queues()
        mpota.trial._wdt = None

    def pending(self, version: str = "1.1.0", sv: int = 3, set_boot: bool = True) -> None:
        """What the updater leaves behind: new image in ota_1, set_boot() (unless cut before it),
        state.pending."""
        m = self.model
        m.board.flash_slot("ota_1", _IMAGES["1.1.0"])
        if set_boot:
            m.board.set_boot("ota_1")
        st = m.state() or {}
        st["pending"] = {"version": version, "slot": "ota_1", "prev_slot": "ota_0",
                         "security_version": sv, "rollout": "r-1", "manifest_sha256": "ab" * 32,
                         "attempts": 0}
        st.setdefault("floor", 1)
        m.nvs["state"] = json.dumps(st).encode()

    def boot(self, checks: Any = (), **kw: Any) -> tuple[str, Any]:
        """Power on and run mpota.boot(); -> (how it ended, BootResult or None)."""
        self.model.power_on()
        self.install()
        from mpota.trial import boot

        kw.setdefault("timeout_ms", 2000)
        try:
            return "returned", boot(checks=checks, config=self.config, **kw)
        except Reset:
            return "reset", None
        except PowerCut:
            return "cut", None

    def settle(self, checks: Any = (), limit: int = 6) -> list[str]:
        ends = []
        for _ in range(limit):
            how, _res = self.boot(checks)
            ends.append(how)
            if how == "returned" and not self.model.state().get("pending"):
                return ends
        raise AssertionError(f"board did not settle: {ends!r}, state {self.model.state()!r}")


def decisions(collector: Collector) -> list[tuple[str, Any]]:
    return [(r["event"], r.get("target")) for r in collector.reports if r["event"] != "heartbeat"]


# ---------------------------------------------------------------- part 1 tests
def test_healthy_update_confirms_and_stays(rig):
    rig.pending()
    how, res = rig.boot()
    assert how == "returned" and res.outcome == "confirmed" and res.trial
    assert [r[0] for r in res.results] == ["wifi", "server", "mqtt", "heartbeat"]
    m = rig.model
    assert m.states["ota_1"] == "VALID" and m.running == "ota_1"
    st = m.state()
    assert st["pending"] is None and st["floor"] == 3
    assert m.wdt == 60000  # armed for the trial
    for _ in range(3):  # further resets: stays, no network, no new decision
        how, res = rig.boot()
        assert how == "returned" and res.outcome == "normal" and not res.trial
        assert m.running == "ota_1"
        assert m.wdt is None
    assert decisions(rig.collector) == [("confirmed", "1.1.0")]
    confirmed = rig.collector.of("confirmed")[0]
    assert confirmed["rollout"] == "r-1" and confirmed["slot"] == "ota_1"
    assert rig.collector.events().count("heartbeat") == 1  # the heartbeat check
    assert m.state()["boots"] == 4


def test_failing_user_check_rolls_back_and_reports_why(rig):
    rig.pending()

    def sensor_ok():
        return False

    how, _ = rig.boot([sensor_ok])
    assert how == "reset"
    m = rig.model
    assert m.boot == "ota_0"  # explicit rollback: previous slot set to boot
    assert m.state()["pending"]["phase"] == "rollback"
    how, res = rig.boot([sensor_ok])
    assert how == "returned" and res.outcome == "rolled_back" and res.reason == "health_failed"
    assert m.running == "ota_0" and m.states["ota_0"] == "VALID"
    st = m.state()
    assert st["pending"] is None and st["floor"] == 1
    assert st["failed"] == [["1.1.0", "r-1"]]
    assert decisions(rig.collector) == [("health_failed", "1.1.0"), ("rolled_back", "1.1.0")]
    hf = rig.collector.of("health_failed")[0]
    assert hf["detail"]["check"] == "sensor_ok"
    assert rig.collector.of("rolled_back")[0]["detail"]["reason"] == "health_failed"
    how, res = rig.boot([sensor_ok])  # stays on the old firmware, runs normally
    assert res.outcome == "normal" and m.running == "ota_0"


@pytest.mark.parametrize("case", ["raises", "slow", "wifi", "server"])
def test_each_kind_of_check_failure_rolls_back(rig, case):
    import time

    checks: list[Any] = []
    if case == "raises":
        def boom():
            raise RuntimeError("no sensor")
        checks = [boom]
    elif case == "slow":
        def slow():  # overruns its 1.2 s; the heartbeat before it gets as long (a busy machine is slow)
            time.sleep(1.5)
            return True
        checks = [slow]
    elif case == "wifi":
        rig.model.wifi = False
    elif case == "server":
        rig.write_config(report_url="http://127.0.0.1:9/v1/reports")
    rig.pending()
    timeout = {"slow": 1200, "wifi": 200}.get(case, 2000)
    how, _ = rig.boot(checks, timeout_ms=timeout)
    assert how == "reset"
    st = rig.model.state()
    want = {"raises": "boom", "slow": "slow", "wifi": "wifi", "server": "server"}[case]
    assert st["pending"]["check"] == want
    rig.model.wifi = True
    rig.write_config()
    how, res = rig.boot()
    assert res.outcome == "rolled_back" and rig.model.running == "ota_0"
    assert [e for e, _ in decisions(rig.collector)] == ["health_failed", "rolled_back"]
    hf = rig.collector.of("health_failed")[0]["detail"]
    assert hf["check"] == want
    if case == "slow":
        assert hf["error"] == "timeout"
    if case == "raises":
        assert "no sensor" in hf["error"]


def test_crash_during_trial_is_rolled_back_by_the_bootloader(rig):
    rig.pending()

    def crash():
        raise Reset()  # the firmware resets (panic / WDT) in the middle of the trial

    how, _ = rig.boot([crash])
    assert how == "reset" and rig.model.state()["pending"]["attempts"] == 1
    how, res = rig.boot([crash])  # bootloader: PENDING_VERIFY -> ABORTED -> ota_0
    assert how == "returned" and res.outcome == "rolled_back" and res.reason == "bootloader"
    assert rig.model.running == "ota_0" and rig.model.states["ota_1"] == "ABORTED"
    assert rig.model.state()["failed"] == [["1.1.0", "r-1"]]
    assert decisions(rig.collector) == [("rolled_back", "1.1.0")]


def test_attempt_limit_is_second_line_without_bootloader_rollback(rig):
    rig.model = Model(rig.tmp, rollback=False)
    rig.pending()

    def crash():
        raise Reset()

    ends = [rig.boot([crash])[0] for _ in range(3)]
    # attempts 1 and 2 crash; attempt 3 exceeds rollback_attempts=2 and goes back
    assert ends == ["reset", "reset", "reset"]
    assert rig.model.boot == "ota_0"
    how, res = rig.boot([crash])
    assert res.outcome == "rolled_back" and res.reason == "attempts"
    assert not res.rollback_supported
    assert rig.model.running == "ota_0"
    assert decisions(rig.collector) == [("rolled_back", "1.1.0")]


def test_no_rollback_support_confirms_and_says_so_once(rig, capsys):
    rig.model = Model(rig.tmp, rollback=False)
    rig.pending()
    import mpota.trial

    mpota.trial._said_no_rollback = False
    how, res = rig.boot()
    assert res.outcome == "confirmed" and not res.rollback_supported
    how, res = rig.boot()
    assert res.outcome == "normal"
    assert capsys.readouterr().out.count("without app rollback") == 1


def test_outside_a_trial_boot_is_cheap_and_harmless(rig):
    # no pending update, no network: a few boots touch nothing but the boot counter
    rig.write_config(report_url="http://127.0.0.1:9/v1/reports")
    for _i in range(3):
        how, res = rig.boot()
        assert how == "returned" and res.outcome == "normal" and res.wdt is None
    assert rig.model.ops == ["commit"] * 3
    assert rig.model.state()["boots"] == 3
    assert rig.collector.posts == []


def test_watchdog_reset_is_counted(rig):
    rig.model.cause = 3
    rig.boot()
    rig.model.cause = 1
    rig.boot()
    st = rig.model.state()
    assert st["boots"] == 2 and st["wdt"] == 1


def test_unreachable_report_server_queues_the_decision(rig):
    rig.pending()
    rig.collector.mode = "503"
    how, res = rig.boot(builtin=("wifi",))
    assert res.outcome == "confirmed"
    assert rig.collector.reports == []
    rig.collector.mode = "up"
    import mpota.report
    from mpota.state import State, open_store

    mpota.report.reset_queues()
    st = State(open_store(str(rig.fs)))
    rep = mpota.report.Reporter({"report_url": rig.collector.url, "device_id": "dev-1", "token": "tok-1",
                                 "allow_http": True}, st, str(rig.fs))
    assert rep.flush(3000) == 1
    assert decisions(rig.collector) == [("confirmed", "1.1.0")]


# Every NVS commit and otadata write of a trial, cut in turn; then boot until settled.
@pytest.mark.parametrize("path", ["confirm", "rollback"])
def test_power_cut_at_every_step_ends_consistent(rig, path, tmp_path, monkeypatch):
    def sensor_ok():
        return path == "confirm"

    # reference run: how many ops from the trial boot to settled
    rig.pending()
    rig.settle([sensor_ok])
    total = len(rig.model.ops)
    assert total >= 4
    outcomes = set()
    for cut in range(1, total + 1):
        collector = rig.collector
        collector.reports.clear()
        collector._seen.clear()
        for f in rig.fs.iterdir():
            if f.name != "mpota.json":
                f.unlink()
        rig.model = Model(rig.tmp)
        rig.pending()
        rig.model.cut_at = cut
        ends = rig.settle([sensor_ok])
        assert "cut" in ends, (cut, ends)
        m = rig.model
        st = m.state()
        ev = decisions(collector)
        assert st["pending"] is None
        if m.running == "ota_1":
            outcomes.add("confirmed")
            assert path == "confirm"
            assert m.states["ota_1"] == "VALID" and st["floor"] == 3 and st["failed"] == []
            assert ev == [("confirmed", "1.1.0")], (cut, m.ops[cut - 1], ev)
        else:
            outcomes.add("rolled_back")
            assert m.running == "ota_0" and m.states["ota_0"] == "VALID"
            assert st["floor"] == 1 and st["failed"] == [["1.1.0", "r-1"]]
            names = [e for e, _ in ev]
            assert names.count("rolled_back") == 1, (cut, m.ops[cut - 1], ev)
            assert "confirmed" not in names
            assert names.count("health_failed") <= 1
            if path == "rollback" and st.get("pending") is None and names.count("health_failed"):
                assert names == ["health_failed", "rolled_back"]
        seqs = [r["seq"] for r in collector.reports]
        assert len(seqs) == len(set(seqs))
        # and it stays settled
        how, res = rig.boot([sensor_ok])
        assert res.outcome == "normal" and rig.model.running == m.running
    if path == "confirm":
        assert outcomes == {"confirmed", "rolled_back"}  # cuts before mark_valid roll back
    else:
        assert outcomes == {"rolled_back"}


# ---------------------------------------------------------------- simulated board (part 2)
# main.py of the simulated firmware: mpota.boot() with an application check whose bug is
# frozen into the image (sim flags), then print what boot() decided.
SIM_MAIN = """
import json
import esp32
import simboot
import mpota

flags = esp32.sim_firmware()["flags"]


def firmware_ok():
    if flags.get("crash") == "trial":
        esp32.sim_panic("firmware crashes during its trial")
    if flags.get("hang") == "trial":
        while True:
            pass
    return flags.get("health") != "fail"


res = mpota.boot(checks=[firmware_ok], config=simboot.CONFIG, timeout_ms=3000, wdt_ms=WDT_MS)
print("RESULT " + json.dumps({"outcome": res.outcome, "trial": res.trial, "check": res.check,
                              "reason": res.reason, "results": [r[0] for r in res.results]}))
# the application loop's first heartbeat (it also delivers what is still queued)
hr = mpota.HealthReporter(config=simboot.CONFIG, checks=[firmware_ok])
print("HEALTH", hr.report_health(), hr.status, hr.boot_count)
"""

# What the updater leaves behind, done on the board itself: set_boot() on the new slot and
# state["pending"] written through mpota.state.
SIM_INSTALL = """
import esp32
import simboot
from mpota.state import State, open_store

p = esp32.Partition.find(esp32.Partition.TYPE_APP, label="ota_1")[0]
st = State(open_store(simboot.ROOT or "/"))
st["pending"] = {"version": "1.1.0", "slot": "ota_1", "prev_slot": "ota_0", "security_version": 3,
                 "rollout": "r-1", "manifest_sha256": "ab" * 32, "attempts": 0}
st.save()
p.set_boot()
print("INSTALLED")
"""


def sim_config(url: str) -> dict[str, Any]:
    key = "04" + "11" * 64
    return {"device_id": "dev-1", "board": "esp32-generic-4mb", "group": "canary",
            "feed_url": "http://127.0.0.1:9/feed/", "channel": "stable", "report_url": url,
            "token": "tok-1", "allow_http": True, "keys": {"release": [key], "rollout": [key]}}


def sim_result(res: Any) -> dict[str, Any]:
    for line in res.stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]))
    raise AssertionError(str(res))


class SimRig:
    def __init__(self, tmp_path: Path, collector: Collector, interp: str, flags: str = "",
                 rollback: bool = True, wdt_ms: int = 60000) -> None:
        from sim.board import SimBoard
        from sim.images import build_sim_image

        self.interp = interp
        self.collector = collector
        self.board = SimBoard.create(tmp_path / "board", version="1.0.0", secure_version=1,
                                     rollback_supported=rollback,
                                     device="mpy" if interp == "micropython" else "link",
                                     config=sim_config(collector.url))
        self.main = SIM_MAIN.replace("WDT_MS", str(wdt_ms))
        self.new_image = build_sim_image("esp32", "1.1.0", "mpota-app", 3, flags=flags)

    def run(self, script: str, **kw: Any) -> Any:
        kw.setdefault("timeout", 30)
        return self.board.run(script, self.interp, **kw)

    def first_boot_and_install(self) -> None:
        res = self.run(self.main)
        assert res.kind == "exit" and sim_result(res)["outcome"] == "normal", res
        self.board.flash_slot("ota_1", self.new_image)
        res = self.run(SIM_INSTALL)
        assert res.kind == "exit" and "INSTALLED" in res.stdout, res

    def settle(self, **kw: Any) -> list[Any]:
        runs = self.board.boot_until_settled(self.main, interpreter=self.interp, timeout=30, **kw)
        assert runs[-1].kind == "exit", runs[-1]
        return runs

    def state(self) -> dict[str, Any]:
        blob = self.board.nvs().get("mpota", {}).get("state")
        assert isinstance(blob, bytes)
        return dict(json.loads(blob))


def test_sim_healthy_update_confirms_and_stays(tmp_path, collector, interp):
    rig = SimRig(tmp_path, collector, interp)
    rig.first_boot_and_install()
    runs = rig.settle()
    assert len(runs) == 1 and runs[0].slot == "ota_1" and runs[0].version == "1.1.0"
    out = sim_result(runs[0])
    assert out["outcome"] == "confirmed" and out["trial"]
    assert out["results"] == ["wifi", "server", "mqtt", "heartbeat", "firmware_ok"]
    assert rig.board.ota_state("ota_1") == "VALID"
    st = rig.state()
    assert st["pending"] is None and st["floor"] == 3
    for _ in range(2):  # further resets: stays on 1.1.0, no second decision
        runs = rig.settle(reset_cause=2)
        assert runs[-1].slot == "ota_1" and sim_result(runs[-1])["outcome"] == "normal"
        assert runs[-1].ops == 1  # the boot counter commit only
    assert decisions(collector) == [("confirmed", "1.1.0")]
    c = collector.of("confirmed")[0]
    assert c["version"] == "1.1.0" and c["slot"] == "ota_1" and c["rollout"] == "r-1"


def test_sim_failing_check_rolls_back_and_reports_why(tmp_path, collector, interp):
    rig = SimRig(tmp_path, collector, interp, flags="health=fail")
    rig.first_boot_and_install()
    runs = rig.settle()
    assert [r.kind for r in runs] == ["reset", "exit"]
    assert runs[0].slot == "ota_1" and runs[1].slot == "ota_0"
    assert sim_result(runs[1])["outcome"] == "rolled_back"
    assert sim_result(runs[1])["reason"] == "health_failed"
    st = rig.state()
    assert st["pending"] is None and st["floor"] == 0 and st["failed"] == [["1.1.0", "r-1"]]
    assert rig.board.ota_state("ota_0") == "VALID"
    assert decisions(collector) == [("health_failed", "1.1.0"), ("rolled_back", "1.1.0")]
    assert collector.of("health_failed")[0]["detail"]["check"] == "firmware_ok"
    assert collector.of("health_failed")[0]["version"] == "1.1.0"
    assert collector.of("rolled_back")[0]["version"] == "1.0.0"
    runs = rig.settle()  # and stays on the old firmware
    assert runs[-1].slot == "ota_0" and sim_result(runs[-1])["outcome"] == "normal"


@pytest.mark.parametrize("flags", ["crash=trial", "crash=boot", "hang=trial"])
def test_sim_crash_loop_during_trial_rolls_back(tmp_path, collector, interp, flags):
    rig = SimRig(tmp_path, collector, interp, flags=flags, wdt_ms=1500)
    rig.first_boot_and_install()
    runs = rig.settle()
    kinds = [r.kind for r in runs]
    want = {"crash=trial": "panic", "crash=boot": "panic", "hang=trial": "watchdog"}[flags]
    assert kinds == [want, "exit"], kinds
    assert runs[-1].slot == "ota_0"
    out = sim_result(runs[-1])
    assert out["outcome"] == "rolled_back" and out["reason"] == "bootloader"
    st = rig.state()
    assert st["pending"] is None and st["failed"] == [["1.1.0", "r-1"]]
    assert decisions(collector) == [("rolled_back", "1.1.0")]
    rb = collector.of("rolled_back")[0]["detail"]
    assert rb["attempts"] == (0 if flags == "crash=boot" else 1)
    if flags == "hang=trial":
        assert st["wdt"] == 1


def test_sim_no_rollback_support_attempt_limit(tmp_path, collector, interp):
    rig = SimRig(tmp_path, collector, interp, flags="crash=trial", rollback=False)
    rig.first_boot_and_install()
    runs = rig.settle()
    # no bootloader rollback: two crashing trials, the third boot gives up (attempts)
    assert [r.kind for r in runs] == ["panic", "panic", "reset", "exit"]
    assert runs[-1].slot == "ota_0"
    out = sim_result(runs[-1])
    assert out["outcome"] == "rolled_back" and out["reason"] == "attempts"
    assert "without app rollback" in runs[-1].stdout
    assert decisions(collector) == [("rolled_back", "1.1.0")]


def _clone(src: Path, dst: Path) -> None:
    import subprocess

    subprocess.run(["cp", "-a", "--sparse=always", str(src), str(dst)], check=True)


# A power cut before or after every flash write, erase and NVS commit of the trial boot and
# of the boots that follow it (bootloader otadata writes included); then the board runs on.
# The default run cuts each operation once per interpreter, alternating before/after so the
# two interpreters together cover both; the slow run does both everywhere.
def power_cut_sweep(tmp_path: Path, collector: Collector, interp: str, path: str, modes: Any) -> None:
    from sim.board import SimBoard

    flags = "" if path == "confirm" else "health=fail"
    rig = SimRig(tmp_path / "ref", collector, interp, flags=flags)
    rig.first_boot_and_install()
    snapshot = tmp_path / "snap"
    _clone(rig.board.simdir, snapshot)
    runs = rig.settle()
    per_boot = [r.ops for r in runs]
    total = sum(per_boot)
    assert total >= 5
    outcomes = set()
    for op in range(1, total + 1):
        for when in modes(op):
            collector.reports.clear()
            collector._seen.clear()
            d = tmp_path / f"cut-{op}-{when}"
            _clone(snapshot, d)
            rig.board = SimBoard(d)
            # replay the boots before the one making the op-th operation, then cut there
            left, k = op, 0
            while left > per_boot[k]:
                res = rig.run(rig.main)
                assert res.ops == per_boot[k] and res.rebooted, res
                left -= per_boot[k]
                k += 1
            runs = rig.settle(cut=(left, when))
            assert runs[0].kind == "powercut", runs[0]
            st = rig.state()
            ev = decisions(collector)
            names = [e for e, _ in ev]
            last = runs[-1]
            where = (op, when, runs[0].why)
            assert st["pending"] is None, (where, st)
            assert sim_result(last)["outcome"] in ("confirmed", "rolled_back", "normal"), where
            if last.slot == "ota_1":
                outcomes.add("confirmed")
                assert path == "confirm"
                assert rig.board.ota_state("ota_1") == "VALID"
                assert st["floor"] == 3 and st["failed"] == []
                assert ev == [("confirmed", "1.1.0")], (where, ev)
            else:
                outcomes.add("rolled_back")
                assert last.slot == "ota_0" and rig.board.ota_state("ota_0") == "VALID", where
                assert st["floor"] == 0 and st["failed"] == [["1.1.0", "r-1"]]
                assert names.count("rolled_back") == 1 and "confirmed" not in names, (where, ev)
                assert names.count("health_failed") <= 1, (where, ev)
            seqs = [r["seq"] for r in collector.reports]
            assert len(seqs) == len(set(seqs))
            again = rig.settle()
            assert again[-1].slot == last.slot and sim_result(again[-1])["outcome"] == "normal"
            shutil_rm(d)
    if path == "confirm":
        assert outcomes == {"confirmed", "rolled_back"}  # a cut before mark_valid rolls back
    else:
        assert outcomes == {"rolled_back"}


def shutil_rm(d: Path) -> None:
    import shutil

    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("path", ["confirm", "rollback"])
def test_sim_power_cut_at_every_step_ends_consistent(tmp_path, collector, interp, path):
    first = 0 if interp == "micropython" else 1
    power_cut_sweep(tmp_path, collector, interp, path,
                    lambda op: [("before", "after")[(op + first) % 2]])


@pytest.mark.slow
@pytest.mark.parametrize("path", ["confirm", "rollback"])
def test_sim_power_cut_before_and_after_every_step(tmp_path, collector, interp, path):
    power_cut_sweep(tmp_path, collector, interp, path, lambda op: ["before", "after"])


def test_health_reporter_status_and_trial_rollback(rig):
    from mpota.health import DEGRADED, FAILED, OK, HealthReporter

    rig.write_config(mqtt_host="127.0.0.1", mqtt_port=9)  # nothing listens there
    rig.model.power_on()
    rig.install()
    hr = HealthReporter(config=rig.config, timeout_ms=1000)
    assert hr.check() == DEGRADED and hr.failed == "mqtt"
    assert not hr.can_connect_to_broker()
    assert hr.can_send_heartbeat()
    assert not hr.should_rollback() and hr.trigger_rollback() is False  # not in a trial
    seq = hr.report_health()
    hb = [r for r in rig.collector.reports if r["seq"] == seq][0]
    assert hb["detail"]["health"] == DEGRADED and hb["detail"]["check"] == "mqtt"

    rig.write_config()
    rig.pending()
    rig.model.power_on()
    rig.install()
    hr = HealthReporter(config=rig.config, checks=[("display", lambda: False)], timeout_ms=1000)
    assert hr.in_trial and hr.check() == FAILED and hr.failed == "display"
    assert hr.should_rollback()
    with pytest.raises(Reset):
        hr.trigger_rollback()
    assert rig.model.boot == "ota_0" and rig.model.state()["pending"]["phase"] == "rollback"
    how, res = rig.boot()
    assert res.outcome == "rolled_back" and rig.model.running == "ota_0"
    assert rig.collector.of("health_failed")[0]["detail"]["check"] == "display"
    hr = HealthReporter(config=rig.config, checks=[("display", lambda: True)])
    assert hr.check() == OK and hr.boot_count == 1  # boots are counted by mpota.boot()


# ---------------------------------------------------------------- examples and templates
def run_example(name: str, *args: str) -> str:
    import subprocess

    proc = subprocess.run([sys.executable, "-m", f"examples.{name.removesuffix('.py')}", *args],
                          capture_output=True, text=True, timeout=240, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


@pytest.mark.parametrize("args", [(), ("--bad", "--cpython")])
def test_device_client_example_real_updater_then_trial(args):
    # the real updater installs a signed release from `mpota serve`, resets, the trial decides
    out = run_example("device_client_example.py", *args)
    events = [ln.split()[1] for ln in out.split("==== the server received")[1].splitlines() if ln.strip()]
    assert "installed" in events
    if not args:
        assert "boot: confirmed 1.1.0" in out
        assert events.count("confirmed") == 1 and "rolled_back" not in events
        assert "(firmware 1.1.0) ended: exit" in out.split("==== later boots")[1]
    else:
        assert "boot: rolled_back 1.1.0 health_failed" in out
        assert events.count("health_failed") == 1 and events.count("rolled_back") == 1
        later = out.split("==== later boots")[1]
        assert "(firmware 1.0.0) ended: exit" in later and "up to date" in later  # no retry loop


def test_health_check_example_runs_on_the_simulated_board():
    out = run_example("health_check_example.py", "--bad")
    assert "check sensor_ok  FAIL" not in out  # the failing trial resets before printing
    assert "boot: rolled_back" in out and "health_failed" in out
    assert "health OK (boots 3" in out


def test_boot_and_main_templates_run_on_the_simulated_board(tmp_path, collector):
    from sim.board import SimBoard

    cfg = sim_config(collector.url)
    cfg["retries"] = 0  # the updater's retry backoff would hold the loop for a while here
    board = SimBoard.create(tmp_path / "board", version="1.0.0", device="mpy", config=cfg)
    src = (ROOT / "device" / "examples" / "boot.py").read_text()
    src += "\n" + (ROOT / "device" / "examples" / "main.py").read_text()
    res = board.run(src, "micropython", timeout=4)
    assert res.kind == "timeout", res  # the application loop runs until the board is reset
    assert "Wi-Fi not started" in res.stdout  # no /wifi.json on this board
    assert "BootResult(normal" in res.stdout
    assert "mpota: update:" in res.stdout  # the feed is unreachable here: reported, loop goes on
    assert "heartbeat" in collector.events() and "failed" in collector.events()


def test_interrupted_install_is_not_a_failure(rig):
    # an updater that marks pending "installing" until set_boot() returned, cut in between
    rig.pending(set_boot=False)
    m = rig.model
    st = m.state()
    st["pending"]["phase"] = "installing"
    m.nvs["state"] = json.dumps(st).encode()
    how, res = rig.boot()
    assert res.outcome == "interrupted" and m.running == "ota_0"
    st = m.state()
    assert st["pending"] is None and st["failed"] == []  # may be tried again
    assert decisions(rig.collector) == [("failed", "1.1.0")]
    assert rig.collector.of("failed")[0]["detail"]["reason"] == "interrupted"


def test_sim_trial_confirms_with_a_capped_heap(tmp_path, collector):
    # MicroPython with -X heapsize and the package as .mpy (as deployed). The simulator's own
    # modules take ~58 KB of this heap (a real board does not load them); the trial path
    # (config, state, reports, HTTP, checks) confirmed at 144 KB total when this was written.
    rig = SimRig(tmp_path, collector, "micropython")
    rig.first_boot_and_install()
    runs = rig.board.boot_until_settled(rig.main, interpreter="micropython", heapsize="176k", timeout=30)
    assert [r.kind for r in runs] == ["exit"], runs[-1]
    assert sim_result(runs[0])["outcome"] == "confirmed"
    assert decisions(collector) == [("confirmed", "1.1.0")]
