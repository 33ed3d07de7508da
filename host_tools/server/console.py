"""The rollout console at `/`: live rollout progress, timelines, devices, charts and operator actions.

Routes (registered by MpotaServer.app before the feed's catch-all):
  GET  /                               overview: inventory charts, open rollouts, recent rollouts
  GET  /v1/status                      the overview as JSON (same access as the pages)
  GET  /console/rollouts[/ID]          rollout history; one rollout: stages, thresholds, timeline
  POST /console/rollouts/ID/pause|resume|abort   operator action (session + CSRF token)
  GET  /console/devices[?q&board&group&version&health&rollout]   device list; /console/devices/ID
  GET|POST /console/login, POST /console/logout, GET /console/static/console.js|css

Who may see what: the pages need an operator session: log in with the operator token (never a
device token), which sets an HttpOnly, SameSite=Strict cookie signed with a key derived from the
fleet secret (12 h; Secure over TLS). A `Authorization: Bearer <operator token>` header works too.
`mpota serve --public-status` opens the read-only pages to anyone (loopback only, checked by the
command); actions always need the operator. Every POST needs the session's CSRF token (form field
`csrf` or header X-CSRF-Token), and a cross-site Origin is refused. Pages are sent with a CSP that
allows only this server's own script and style (no inline code), no framing, no caching.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, quote

from aiohttp import web

from host_tools.errors import MpotaError
from host_tools.server import console_views as views
from host_tools.server.auth import bearer
from host_tools.server.body import BodyError, read_body
from host_tools.server.orchestrator import RolloutError, RolloutNotFound
from host_tools.server.store import ConflictError

if TYPE_CHECKING:
    from host_tools.server.app import MpotaServer

COOKIE = "mpota_session"
SESSION_S = 12 * 3600
FORM_CAP = 4096
DEVICE_ROWS = 500
LIVE_MS = 3000
HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; "
                               "base-uri 'none'",
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Sessions:
    """Stateless signed session cookies: `<expiry>.<nonce>.<mac>`, the CSRF token bound to the nonce.

    The key is derived from the fleet secret, so a cookie survives a restart (and works on every
    replica of the same fleet) and changing the secret logs everyone out."""

    def __init__(self, secret: bytes, clock: Callable[[], float]) -> None:
        self._key = hmac.new(secret, b"mpota console session", hashlib.sha256).digest()
        self._clock = clock

    def _mac(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    def issue(self) -> str:
        body = f"{int(self._clock()) + SESSION_S}.{secrets.token_hex(16)}"
        return f"{body}.{self._mac(body)}"

    def check(self, value: str | None) -> str | None:
        """The session's nonce when the cookie is genuine and unexpired, else None."""
        if not value or len(value) > 200:
            return None
        parts = value.split(".")
        if len(parts) != 3 or not parts[0].isdigit():
            return None
        body = f"{parts[0]}.{parts[1]}"
        if not hmac.compare_digest(self._mac(body), parts[2]) or int(parts[0]) < self._clock():
            return None
        return parts[1]

    def csrf(self, nonce: str) -> str:
        return self._mac(f"csrf.{nonce}")[:40]


class Access:
    def __init__(self, operator: bool, csrf: str | None) -> None:
        self.operator = operator
        self.csrf = csrf


class Console:
    def __init__(self, server: MpotaServer) -> None:
        self.server = server
        secret = server.config.fleet_secret
        self.sessions = Sessions(secret, server.clock) if secret else None
        self.public = bool(getattr(server.config, "public_status", False))

    def register(self, r: web.UrlDispatcher) -> None:
        r.add_get("/", self._page(self.overview, "overview"))
        r.add_get("/v1/status", self.status_json)
        r.add_get("/console/static/console.js", self.static_js)
        r.add_get("/console/static/console.css", self.static_css)
        r.add_get("/console/login", self.login_form)
        r.add_post("/console/login", self.login)
        r.add_post("/console/logout", self.logout)
        r.add_get("/console/rollouts", self._page(self.rollouts, "rollouts"))
        r.add_get("/console/rollouts/{rollout_id}", self._page(self.rollout, "rollouts"))
        r.add_post("/console/rollouts/{rollout_id}/{action}", self.rollout_action)
        # the device list is a query (a big fleet is a big page): refreshed by its Filter button only
        r.add_get("/console/devices", self._page(self.devices, "devices", live_ms=0))
        r.add_get("/console/devices/{device_id}", self._page(self.device, "devices", live_ms=5000))
        r.add_route("*", "/console/{tail:.*}", self.not_found)

    # ------------------------------------------------------------------------------- access
    def access(self, request: web.Request) -> Access | None:
        """The caller's rights: operator (session or bearer token), read-only (public), or None."""
        tokens = self.server.tokens
        if tokens is not None and self.sessions is not None:
            nonce = self.sessions.check(request.cookies.get(COOKIE))
            if nonce is not None:
                return Access(True, self.sessions.csrf(nonce))
            if tokens.operator_ok(bearer(request.headers.get("Authorization"))):
                return Access(True, None)
        return Access(False, None) if self.public else None

    def _denied(self, request: web.Request) -> web.Response:
        if self.server.tokens is None and not self.public:
            return _html(503, "<p>No fleet secret configured: start the server with --fleet-secret to use "
                              "the console (or --public-status for a read-only view).</p>")
        if request.headers.get("X-Mpota-Partial") or request.path.startswith("/v1/"):
            return web.json_response({"error": "operator login required"}, status=401, headers=HEADERS)
        target = request.path_qs if request.method == "GET" else "/"
        raise web.HTTPSeeOther(f"/console/login?next={quote(target, safe='')}", headers=HEADERS)

    def _page(self, build: Callable[[web.Request, Access], Awaitable[tuple[str, str, int]]],
              nav: str, live_ms: int = LIVE_MS) -> Handler:
        async def handler(request: web.Request) -> web.StreamResponse:
            who = self.access(request)
            if who is None:
                return self._denied(request)
            title, body, status = await build(request, who)
            if request.headers.get("X-Mpota-Partial"):
                return _html(status, body)
            live = live_ms if status == 200 else 0
            return _html(status, views.layout(title, body, nav=nav, operator=who.operator, csrf=who.csrf,
                                              live_ms=live))
        return handler

    # ------------------------------------------------------------------------------- pages
    def _overview_data(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any], float]:
        store, orch = self.server.store, self.server.orchestrator
        rollouts = sorted(store.list_rollouts(), key=lambda r: r.created_at, reverse=True)
        open_statuses: list[dict[str, Any]] = []
        for r in rollouts:
            if r.state in ("active", "paused") and len(open_statuses) < 10:
                try:
                    open_statuses.append(orch.status(r.id))
                except RolloutError:  # this rollout's record cannot be shown; a store error is a 503
                    continue
        return open_statuses, [r.to_dict() for r in rollouts[:20]], store.inventory_summary(), \
            self.server.clock()

    async def overview(self, request: web.Request, who: Access) -> tuple[str, str, int]:
        open_statuses, recent, summary, now = await self.server._ops(self._overview_data)
        return "Overview", views.overview_page(open_statuses, recent, summary, now), 200

    async def status_json(self, request: web.Request) -> web.StreamResponse:
        if self.access(request) is None:
            return self._denied(request)

        def build() -> dict[str, Any]:
            rollouts = sorted(self.server.store.list_rollouts(), key=lambda r: r.created_at, reverse=True)
            statuses = []
            for r in rollouts[:5]:
                try:
                    st = self.server.orchestrator.status(r.id)
                except RolloutError:
                    continue
                st.pop("history", None)
                st.pop("plan", None)
                statuses.append(st)
            return {"rollouts": statuses, "inventory": self.server.store.inventory_summary(),
                    "time": self.server.clock(),
                    "replica": {"id": self.server.replica, "leader": self.server.leader}}
        return web.json_response(await self.server._ops(build), headers={"Cache-Control": "no-store"})

    async def rollouts(self, request: web.Request, who: Access) -> tuple[str, str, int]:
        def build() -> tuple[list[dict[str, Any]], float]:
            rollouts = sorted(self.server.store.list_rollouts(), key=lambda r: r.created_at, reverse=True)
            return [r.to_dict() for r in rollouts], self.server.clock()
        rollouts, now = await self.server._ops(build)
        return "Rollouts", views.rollouts_page(rollouts, now), 200

    async def _rollout_status(self, rid: str) -> dict[str, Any] | None:
        try:
            return await self.server._ops(self.server.orchestrator.status, rid)
        except RolloutNotFound:
            return None

    async def rollout(self, request: web.Request, who: Access, error: str = "") -> tuple[str, str, int]:
        rid = request.match_info["rollout_id"]
        st = await self._rollout_status(rid)
        if st is None:
            return "Not found", f"<h1>No rollout {views.e(rid)}</h1>", 404
        body = views.rollout_page(st, self.server.clock(), operator=who.operator, csrf=who.csrf, error=error)
        return f"Rollout {rid}", body, 409 if error else 200

    async def devices(self, request: web.Request, who: Access) -> tuple[str, str, int]:
        filters = {k: request.query.get(k, "").strip()[:80] for k in views.DEVICE_FILTERS}

        def build() -> tuple[list[dict[str, Any]], int, int, dict[str, list[str]], float]:
            store = self.server.store
            summary = store.inventory_summary()
            choices = {k: sorted(summary.get(f"by_{k}") or {})
                       for k in ("board", "group", "version", "health")}
            every = store.list_devices(filters["board"] or None)
            choices["channel"] = sorted({_shown(d.get("channel")) for d in every})
            total = int(summary.get("devices", len(every)))
            q = filters["q"].lower()
            picked = [d for d in every if (not q or q in str(d.get("device_id", "")).lower()) and all(
                not filters[k] or _shown(d.get(k)) == filters[k]
                for k in ("channel", "group", "version", "health", "rollout"))]
            return picked[:DEVICE_ROWS], len(picked), total, choices, self.server.clock()
        rows, matched, total, choices, now = await self.server._ops(build)
        # the filter form stays outside the live region (typing is not interrupted by a refresh)
        body = views.devices_page(rows, matched, total, filters, now, DEVICE_ROWS)
        if request.headers.get("X-Mpota-Partial"):
            return "Devices", body, 200
        return "Devices", "<h1>Devices</h1>" + views.devices_filter_form(filters, choices) + body, 200

    async def device(self, request: web.Request, who: Access) -> tuple[str, str, int]:
        device_id = request.match_info["device_id"]

        def build() -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
            d = self.server.store.get_device(device_id)
            return d, (self.server.store.device_events(device_id, 200) if d else [])
        d, events = await self.server._ops(build)
        if d is None:
            return "Not found", f"<h1>No device {views.e(device_id)}</h1>", 404
        return f"Device {device_id}", views.device_page(d, events, self.server.clock()), 200

    # ------------------------------------------------------------------------------- actions
    async def _form(self, request: web.Request) -> dict[str, str]:
        try:
            raw = await read_body(request, FORM_CAP, self.server.config.body_timeout)
        except BodyError as exc:
            raise web.HTTPBadRequest(text=str(exc), headers=HEADERS) from None
        try:
            parsed = parse_qs(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=10)
        except (UnicodeDecodeError, ValueError):
            raise web.HTTPBadRequest(text="form is not valid", headers=HEADERS) from None
        return {k: v[0] for k, v in parsed.items() if v}

    @staticmethod
    def _same_origin(request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        return origin is None or origin == f"{request.scheme}://{request.host}"

    def _csrf_ok(self, request: web.Request, who: Access, form: dict[str, str]) -> bool:
        if who.csrf is None:  # a bearer-token caller: browsers never send that header by themselves
            return True
        given = form.get("csrf") or request.headers.get("X-CSRF-Token") or ""
        return hmac.compare_digest(who.csrf.encode(), given.encode("utf-8", "replace"))

    async def rollout_action(self, request: web.Request) -> web.StreamResponse:
        who = self.access(request)
        if who is None or not who.operator:
            if who is None:
                return self._denied(request)
            return _html(403, "<p>Actions need the operator: <a href=/console/login>log in</a>.</p>")
        if not self._same_origin(request):
            return _html(403, "<p>Cross-site request refused.</p>")
        form = await self._form(request)
        if not self._csrf_ok(request, who, form):
            return _html(403, "<p>Missing or wrong CSRF token: reload the page and try again.</p>")
        rid, action = request.match_info["rollout_id"], request.match_info["action"]
        reason = form.get("reason", "").strip()[:200]
        orch = self.server.orchestrator
        calls: dict[str, Callable[[], Any]] = {
            "pause": lambda: orch.pause(rid, reason or "paused by operator (console)"),
            "resume": lambda: orch.resume(rid),
            "abort": lambda: orch.abort(rid, reason or "aborted by operator (console)"),
        }
        call = calls.get(action)
        if call is None:
            return _html(404, f"<p>Unknown action {views.e(action)}.</p>")
        try:
            await self.server._ops(call)
        except RolloutNotFound as exc:
            return _html(404, f"<p>{views.e(exc)}</p>")
        except (RolloutError, ConflictError, MpotaError) as exc:
            title, body, status = await self.rollout(request, who, error=f"{action} refused: {exc}")
            return _html(status, views.layout(title, body, nav="rollouts", operator=True, csrf=who.csrf))
        self.server._log(f"console: operator {action} of rollout {rid}" + (f" ({reason})" if reason else ""))
        self.server._poke.set()
        raise web.HTTPSeeOther(views.rollout_url(rid), headers=HEADERS)

    # ------------------------------------------------------------------------------- login
    async def login_form(self, request: web.Request) -> web.StreamResponse:
        return _html(200, views.login_page("", _safe_next(request.query.get("next", "/"))))

    async def login(self, request: web.Request) -> web.StreamResponse:
        if self.sessions is None or self.server.tokens is None:
            return _html(503, views.login_page("No fleet secret configured: start the server with "
                                               "--fleet-secret."))
        if not self._same_origin(request):
            return _html(403, "<p>Cross-site request refused.</p>")
        form = await self._form(request)
        next_url = _safe_next(form.get("next", "/"))
        if not self.server.tokens.operator_ok(form.get("token", "").strip()):
            self.server._log(f"console: failed login from {request.remote}")
            return _html(401, views.login_page("That is not the operator token (a device token never is).",
                                               next_url))
        response = web.HTTPSeeOther(next_url, headers=HEADERS)
        response.set_cookie(COOKIE, self.sessions.issue(), max_age=SESSION_S, path="/", httponly=True,
                            samesite="Strict", secure=request.secure)
        self.server._log(f"console: operator logged in from {request.remote}")
        raise response

    async def logout(self, request: web.Request) -> web.StreamResponse:
        who = self.access(request)
        if who is not None and who.csrf is not None:
            form = await self._form(request)
            if not self._csrf_ok(request, who, form):
                return _html(403, "<p>Missing or wrong CSRF token.</p>")
        response = web.HTTPSeeOther("/console/login", headers=HEADERS)
        response.del_cookie(COOKIE, path="/")
        raise response

    # ------------------------------------------------------------------------------- static
    async def static_js(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=views.JS, content_type="application/javascript", headers=_static_headers())

    async def static_css(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=views.CSS, content_type="text/css", headers=_static_headers())

    async def not_found(self, request: web.Request) -> web.StreamResponse:
        return _html(404, "<p>Not found.</p>")


def _shown(value: object) -> str:
    return "-" if value is None else str(value)


def _safe_next(value: str) -> str:
    """Only a path on this server (no //host, no scheme): no open redirect through the login."""
    if not value.startswith("/") or value.startswith("//") or "\\" in value \
            or any(ord(c) < 32 for c in value):
        return "/"
    return value


def _static_headers() -> dict[str, str]:
    return {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}


def _html(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/html", headers=HEADERS)
