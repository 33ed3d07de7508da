"""The rollout console in a real browser: Debian's Chromium, headless, driven through chromedriver
(selenium), against `mpota serve` with a simulated fleet reporting over HTTP.

The story mirrors the demo's v1.2.0 rollout: canary and internal confirm, pilot boards fail their
health check and roll back, the pilot gate trips and the rollout pauses itself; the open page
shows it without a reload (live updates). The operator logs in with the operator token (a device
token is refused), resumes and pauses with the buttons (the channel seq grows each time) and
looks at a pilot board's event history. Screenshots land in build/ for people to look at.
`make test` installs chromium and chromium-driver when they are missing (Makefile: browser).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from host_tools.channel import ChannelDoc
from host_tools.fleet import device_token
from host_tools.keys import PublicKey, load_public_key
from host_tools.server.auth import operator_token
from host_tools.server.bucket import is_eligible
from sim.browser import chromium, missing, wait_for
from sim.serverkit import (
    ReportingDevice,
    ServerThread,
    fetch_channel,
    operator_call,
    register,
    rollout_server,
)

REPO = Path(__file__).resolve().parent.parent
SHOTS = REPO / "build"
BOARD = "esp32-generic-4mb"
SECRET = b"\x24" * 32
FLEET = [("canary", 1), ("internal", 1), ("pilot", 4), ("general", 6)]
PLAN = {"soak": 0, "min_finished": 1, "in_progress_timeout": "30m",
        "stages": [{"name": "canary"}, {"name": "internal"},
                   {"name": "pilot", "min_finished": 2, "failure_rate_threshold": 10},
                   {"name": "general", "batch_size_percentage": 50}]}
# How the boards got the image, as their installed reports say: the canary board through a patch,
# the internal one took the full image after its patch failed, the pilot boards had no patch.
HOW = {"canary": {"delta": "applied", "bytes": 40_000, "full_bytes": 1_200_000},
       "internal": {"delta": "fallback: hash_mismatch", "full_bytes": 1_200_000}}


@dataclass
class Fleet:
    srv: ServerThread
    pub: PublicKey
    devices: list[ReportingDevice]

    def op(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        return operator_call(self.srv.url, SECRET, method, path, body)

    def channel(self) -> ChannelDoc:
        return fetch_channel(self.srv.url, self.pub, BOARD)

    def state(self, rid: str) -> str:
        code, st = self.op("GET", f"/v1/rollouts/{rid}")
        assert code == 200, st
        return str(st["rollout"]["state"])

    def drive(self, rid: str, until: str, timeout: float = 30.0) -> None:
        """Boards act on the channel document like the demo's: pilot boards fail their health check."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ro = self.channel().rollout.to_dict()
            if ro["state"] == "active":
                for d in self.devices:
                    if not getattr(d, "tried", False) and is_eligible(ro, d.device_id, d.group):
                        d.tried = True  # type: ignore[attr-defined]
                        outcome = "rolled_back" if d.group == "pilot" else "confirmed"
                        assert all(code == 200 for code in d.update(rid, "1.1.0", outcome, HOW.get(d.group)))
            if self.state(rid) == until:
                return
            time.sleep(0.05)
        raise AssertionError(f"rollout {rid} did not reach {until}: {self.op('GET', f'/v1/rollouts/{rid}')}")


@pytest.fixture()
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    with rollout_server(tmp_path, SECRET) as srv:
        devices = register(srv.url, SECRET, [(f"{g}-{i + 1}", g) for g, n in FLEET for i in range(n)], True)
        yield Fleet(srv, load_public_key(str(tmp_path / "rollout.pem.pub")), devices)
        for d in devices:
            d.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    why = missing()
    assert why is None, why  # `make test` installs the browser: a missing one is a failure, not a skip
    with chromium() as driver:
        yield driver


def _wait(driver: Any, css: str, timeout: float = 15.0) -> Any:
    return wait_for(driver, css, timeout)


def _click(driver: Any, by: str, what: str) -> None:
    """Click, finding the element again if a live refresh replaced it in between."""
    from selenium.common.exceptions import StaleElementReferenceException

    for _ in range(5):
        try:
            driver.find_element(by, what).click()
            return
        except StaleElementReferenceException:
            time.sleep(0.1)
    raise AssertionError(f"{what} kept going stale")


def _shot(driver: Any, name: str) -> Path:
    SHOTS.mkdir(exist_ok=True)
    path = SHOTS / name
    driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000  # a rendered page, not a blank one
    return path


def _login(driver: Any, base: str, token: str) -> None:
    from selenium.webdriver.common.by import By

    field = _wait(driver, "input[name=token]")
    field.clear()
    field.send_keys(token)
    driver.find_element(By.ID, "login").click()


def test_console_live_rollout_actions_and_device_page(fleet: Fleet, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select, WebDriverWait

    base = fleet.srv.url
    browser.delete_all_cookies()
    browser.get(base + "/")
    assert "/console/login" in browser.current_url  # nothing without a login
    _login(browser, base, device_token(SECRET, "pilot-1"))  # a device's token is never an operator
    assert "not the operator token" in _wait(browser, "p.error").text
    _login(browser, base, operator_token(SECRET))
    _wait(browser, "form[action='/console/logout']")  # logged in: the overview, not the login page
    assert browser.current_url.rstrip("/") == base and "Overview" in browser.title
    assert browser.find_elements(By.CSS_SELECTOR, "svg.chart")  # version/health charts, drawn by the server

    code, st = fleet.op("POST", "/v1/rollouts", {"board": BOARD, "channel": "stable", "version": "1.1.0",
                                                 "plan": PLAN, "id": "r-1.1.0"})
    assert code == 201, st
    # the open overview picks the new rollout up by itself (no reload)
    card = _wait(browser, ".card.rollout[data-rollout='r-1.1.0']")
    assert card.find_elements(By.CSS_SELECTOR, "tr[data-stage='pilot'] svg.progress")
    fleet.drive("r-1.1.0", until="paused")
    card = _wait(browser, ".card.rollout[data-rollout='r-1.1.0'][data-state='paused']")
    pilot = card.find_element(By.CSS_SELECTOR, "tr[data-stage='pilot']")
    assert "fail" in pilot.text and "/ 10%" in pilot.text  # verdict and the threshold beside the rate
    assert "pilot" in card.find_element(By.CSS_SELECTOR, ".reason").text
    _shot(browser, "console-overview-pilot-gate.png")

    # the rollout page: stages, thresholds, the timeline of decisions, the buttons
    _click(browser, By.LINK_TEXT, "r-1.1.0")
    _wait(browser, "table.timeline")
    timeline = browser.find_element(By.CSS_SELECTOR, "table.timeline").text
    assert "pause" in timeline.lower() and "pilot" in timeline
    _shot(browser, "console-rollout-pilot-gate.png")
    # full vs delta installs, as the server counts them from the boards' installed reports
    _, st = fleet.op("GET", "/v1/rollouts/r-1.1.0")
    inst = browser.find_element(By.CSS_SELECTOR, "p.installs")
    assert {k: int(inst.get_attribute(f"data-{k}")) for k in ("delta", "full", "fallback")} == \
        {"delta": 1, "full": st["installs"]["full"], "fallback": 1}
    assert st["installs"]["full"] >= 2 and "1.2 MB on the wire" in inst.text  # 1_160_000 bytes saved
    seq_paused = fleet.channel().seq
    _click(browser, By.ID, "resume")
    _wait(browser, "#pause")
    assert fleet.state("r-1.1.0") == "active"
    seq_resumed = fleet.channel().seq
    assert seq_resumed > seq_paused
    browser.find_element(By.CSS_SELECTOR, "form[action$='/pause'] input[name=reason]").send_keys("checking")
    _click(browser, By.ID, "pause")
    _wait(browser, "#resume")
    assert fleet.state("r-1.1.0") == "paused"
    doc = fleet.channel()
    assert doc.seq > seq_resumed and doc.rollout.state == "paused"  # the boards are told: signed, newer
    assert "checking" in browser.find_element(By.CSS_SELECTOR, ".reason").text

    # devices: filter to the pilot group, open one, see its events
    browser.get(base + "/console/devices")
    Select(_wait(browser, "select[name=group]")).select_by_value("pilot")
    _click(browser, By.ID, "filter")
    WebDriverWait(browser, 15).until(ec.url_contains("group=pilot"))
    _wait(browser, "tr[data-device='pilot-2']")
    rows = browser.find_elements(By.CSS_SELECTOR, "tr[data-device]")
    assert {r.get_attribute("data-device") for r in rows} == {f"pilot-{i}" for i in range(1, 5)}
    _click(browser, By.LINK_TEXT, "pilot-2")
    _wait(browser, "table.events")
    events = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "tr.event")]
    assert any("rolled_back" in t for t in events) and any("health_failed" in t for t in events)
    assert any("downloading" in t for t in events)
    _shot(browser, "console-device.png")

    # logging out ends the session
    _click(browser, By.CSS_SELECTOR, "form[action='/console/logout'] button")
    _wait(browser, "input[name=token]")
    browser.get(base + "/console/rollouts")
    assert "/console/login" in browser.current_url
