"""Who may use the rollout console (HTTP level; tests/test_console_browser.py drives it in Chromium).

Nothing but the feed and the device endpoints is public: pages and /v1/status need an operator
session (login with the operator token; a device token is never an operator) or the operator's
bearer token; actions need the session's CSRF token and a same-origin request; a forged or expired
cookie is nobody; `--public-status` opens the read-only pages on loopback only.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from host_tools.cli import main
from host_tools.fleet import device_token
from host_tools.server.auth import operator_token
from host_tools.server.console import COOKIE, SESSION_S, Sessions
from host_tools.server.store import StoreError
from sim.serverkit import HttpClient, ReportingDevice, ServerThread, operator_call, register, rollout_server

BOARD = "esp32-generic-4mb"
SECRET = b"\x31" * 32
OP = operator_token(SECRET)
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


class Web:
    def __init__(self, srv: ServerThread) -> None:
        self.srv = srv
        self.c = HttpClient(srv.url)

    def get(self, path: str, **headers: str) -> tuple[int, dict[str, str], str]:
        status, h, data = self.c.request("GET", path, headers=headers)
        return status, h, data.decode("utf-8", "replace")

    def post(self, path: str, form: dict[str, str], **headers: str) -> tuple[int, dict[str, str], str]:
        status, h, data = self.c.request("POST", path, urlencode(form).encode(), {**FORM, **headers})
        return status, h, data.decode("utf-8", "replace")

    def login(self, token: str = OP) -> str:
        status, h, _ = self.post("/console/login", {"token": token, "next": "/"})
        assert status == 303, status
        m = re.match(rf"{COOKIE}=([^;]+);", h["set-cookie"])
        assert m
        return m.group(1)


def _serve(tmp_path: Path, **config: Any) -> Iterator[tuple[ServerThread, str]]:
    with rollout_server(tmp_path, SECRET, **config) as srv:
        register(srv.url, SECRET, [("canary-1", "canary")])[0].close()
        plan = {"soak": "1h",
                "stages": [{"name": "canary"}, {"name": "general", "batch_size_percentage": 50}]}
        status, data = operator_call(srv.url, SECRET, "POST", "/v1/rollouts", {
            "board": BOARD, "channel": "stable", "version": "1.1.0", "plan": plan, "id": "r-1"})
        assert status == 201, data
        yield srv, "r-1"


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[ServerThread, str]]:
    yield from _serve(tmp_path)


@pytest.fixture()
def public(tmp_path: Path) -> Iterator[tuple[ServerThread, str]]:
    yield from _serve(tmp_path, public_status=True)


def _state(srv: ServerThread, rid: str) -> str:
    c = HttpClient(srv.url)
    status, _, data = c.request("GET", f"/v1/rollouts/{rid}", headers={"Authorization": f"Bearer {OP}"})
    c.close()
    assert status == 200
    return str(json.loads(data)["rollout"]["state"])


def test_nothing_without_the_operator(served: tuple[ServerThread, str]) -> None:
    srv, rid = served
    w = Web(srv)
    for path in ("/", "/console/rollouts", f"/console/rollouts/{rid}", "/console/devices",
                 "/console/devices/canary-1"):
        status, h, body = w.get(path)
        assert status == 303 and h["location"].startswith("/console/login?next="), path
        assert "canary-1" not in body and "1.1.0" not in body
    assert w.get("/", **{"X-Mpota-Partial": "1"})[0] == 401  # the live refresh is told, not redirected
    assert w.get("/v1/status")[0] == 401
    device = device_token(SECRET, "canary-1")
    assert w.get("/v1/status", Authorization=f"Bearer {device}")[0] == 401
    assert w.get("/", Authorization=f"Bearer {device}")[0] == 303
    status, _, body = w.get("/v1/status", Authorization=f"Bearer {OP}")
    assert status == 200 and json.loads(body)["rollouts"][0]["rollout"]["id"] == rid
    # a device token is refused at the login, and so is junk
    for token in (device, "junk", ""):
        status, h, body = w.post("/console/login", {"token": token})
        assert status == 401 and "set-cookie" not in h and "not the operator token" in body
    # the feed and the device endpoints stay public
    assert w.get(f"/channels/{BOARD}/stable.json")[0] == 200
    status, h, _ = w.get("/console/static/console.js")
    assert status == 200 and h["content-type"].startswith("application/javascript")


def test_session_cookie_and_csrf(served: tuple[ServerThread, str]) -> None:
    srv, rid = served
    w = Web(srv)
    status, h, _ = w.post("/console/login", {"token": OP, "next": "/console/devices"})
    assert status == 303 and h["location"] == "/console/devices"
    cookie = h["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and f"Max-Age={SESSION_S}" in cookie
    session = w.login()
    jar = {"Cookie": f"{COOKIE}={session}"}
    status, h, page = w.get(f"/console/rollouts/{rid}", **jar)
    assert status == 200 and 'id="pause"' in page
    assert "script-src 'self'" in h["content-security-policy"] and h["x-frame-options"] == "DENY"
    assert "<script>" not in page and " style=" not in page  # nothing inline: the CSP forbids it
    csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', page)
    assert csrf
    # no token, a wrong one, another site's Origin: refused, nothing changes
    assert w.post(f"/console/rollouts/{rid}/pause", {}, **jar)[0] == 403
    assert w.post(f"/console/rollouts/{rid}/pause", {"csrf": "0" * 40}, **jar)[0] == 403
    assert w.post(f"/console/rollouts/{rid}/pause", {"csrf": csrf.group(1)},
                  Origin="http://evil.example", **jar)[0] == 403
    other = Web(srv).login()  # another session's token does not fit this session
    status, _, other_page = w.get(f"/console/rollouts/{rid}", Cookie=f"{COOKIE}={other}")
    other_csrf = re.search(r'name="csrf" value="([0-9a-f]+)"', other_page)
    assert other_csrf and other_csrf.group(1) != csrf.group(1)
    assert w.post(f"/console/rollouts/{rid}/pause", {"csrf": other_csrf.group(1)}, **jar)[0] == 403
    assert _state(srv, rid) == "active"
    # the right one, same origin: paused, with the operator's reason
    status, h, _ = w.post(f"/console/rollouts/{rid}/pause", {"csrf": csrf.group(1), "reason": "<b>look</b>"},
                          Origin=srv.url, **jar)
    assert status == 303 and h["location"] == f"/console/rollouts/{rid}"
    assert _state(srv, rid) == "paused"
    page = w.get(f"/console/rollouts/{rid}", **jar)[2]
    assert "&lt;b&gt;look&lt;/b&gt;" in page and "<b>look</b>" not in page  # escaped
    # an action the state does not allow: the page says why, nothing changes
    status, _, page = w.post(f"/console/rollouts/{rid}/pause", {"csrf": csrf.group(1)}, **jar)
    assert status == 409 and "pause refused" in page
    assert w.post(f"/console/rollouts/{rid}/explode", {"csrf": csrf.group(1)}, **jar)[0] == 404
    assert w.post("/console/rollouts/r-none/resume", {"csrf": csrf.group(1)}, **jar)[0] == 404
    # the operator's bearer token also acts (scripts); no cookie, no CSRF involved
    status, _, _ = w.post(f"/console/rollouts/{rid}/resume", {}, Authorization=f"Bearer {OP}")
    assert status == 303 and _state(srv, rid) == "active"


def test_forged_and_expired_sessions(served: tuple[ServerThread, str]) -> None:
    srv, _ = served
    w = Web(srv)
    good = w.login()
    exp, nonce, mac = good.split(".")
    forged = [f"{int(exp) + 10**6}.{nonce}.{mac}", f"{exp}.{'0' * 32}.{mac}", f"{exp}.{nonce}.{'0' * 64}",
              "x", "1.2", good + ".x", "9" * 300]
    for value in forged:
        assert w.get("/", Cookie=f"{COOKIE}={value}")[0] == 303, value
    other = Sessions(b"\x00" * 32, time.time).issue()  # signed with another fleet's secret
    assert w.get("/", Cookie=f"{COOKIE}={other}")[0] == 303
    expired = Sessions(SECRET, lambda: time.time() - SESSION_S - 5).issue()
    assert w.get("/", Cookie=f"{COOKIE}={expired}")[0] == 303
    assert w.get("/", Cookie=f"{COOKIE}={good}")[0] == 200


def test_login_never_redirects_off_site(served: tuple[ServerThread, str]) -> None:
    srv, _ = served
    w = Web(srv)
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"):
        status, h, _ = w.post("/console/login", {"token": OP, "next": target})
        assert status == 303 and h["location"] == "/", target


def test_public_status_is_read_only(public: tuple[ServerThread, str]) -> None:
    srv, rid = public
    w = Web(srv)
    status, _, page = w.get(f"/console/rollouts/{rid}")
    assert status == 200 and "r-1" in page and 'id="pause"' not in page and "Log in" in page
    assert w.get("/v1/status")[0] == 200
    assert w.get("/console/devices/canary-1")[0] == 200
    assert w.post(f"/console/rollouts/{rid}/pause", {})[0] == 403
    assert _state(srv, rid) == "active"


def test_public_status_only_on_loopback(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "feed").mkdir()
    code = main(["serve", "--feed", str(tmp_path / "feed"), "--host", "0.0.0.0", "--public-status"])
    assert code == 2 and "only with a loopback --host" in capsys.readouterr().err


def test_device_list_filters_and_claimed_group(served: tuple[ServerThread, str]) -> None:
    srv, _ = served
    d = ReportingDevice(srv.url, SECRET, "field-7", "general")
    assert d.register(SECRET, channel="beta") == 200
    d.group = "canary"  # what its reports claim; the operator registered it as general
    assert d.report("heartbeat", health="OK") == 200
    d.close()
    w = Web(srv)
    jar = {"Cookie": f"{COOKIE}={w.login()}"}
    status, _, page = w.get("/console/devices?channel=beta", **jar)
    assert status == 200 and 'data-device="field-7"' in page and 'data-device="canary-1"' not in page
    assert "(claims canary)" in page and '<option value="beta" selected>' in page
    page = w.get("/console/devices?q=ANARY", **jar)[2]  # search: part of the id, any case
    assert 'data-device="canary-1"' in page and 'data-device="field-7"' not in page
    page = w.get("/console/devices?group=canary", **jar)[2]  # the operator's group decides, not the claim
    assert 'data-device="canary-1"' in page and 'data-device="field-7"' not in page
    status, _, page = w.get("/console/devices/field-7", **jar)
    assert status == 200 and "beta" in page and "(claims canary)" in page and "heartbeat" in page
    assert w.get("/console/devices/nobody", **jar)[0] == 404


def test_a_store_failure_is_a_503_not_a_page_missing_a_rollout(served: tuple[ServerThread, str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    srv, rid = served
    w = Web(srv)
    assert rid in w.get("/", Authorization=f"Bearer {OP}")[2]

    def down(rollout_id: str) -> dict[str, Any]:
        raise StoreError("cannot read progress: disk I/O error")
    monkeypatch.setattr(srv.server.orchestrator, "status", down)
    for path in ("/", "/v1/status"):
        status, headers, body = w.get(path, Authorization=f"Bearer {OP}")
        assert status == 503 and headers.get("retry-after"), (path, status, body[:200])
