"""`mpota serve`: one aiohttp process serving the feed, taking reports and driving rollouts.

Routes (all JSON errors are {"error": "<one line>"}):
  GET|HEAD /<feed path>            static feed files: Range (206/416), ETag + If-None-Match (304),
                                   no dotfiles, no '..', no symlinks leading out of the feed
  GET  /, /console/...             the rollout console, GET /v1/status its overview as JSON
                                   (operator login or token; see console.py)
  POST /v1/reports                 device reports (device token), see ingest.py for limits
  POST /v1/devices                 register a device {device_id, board, group, channel}: operator
                                   token (authoritative), or the device's own token (then the group
                                   is only recorded as claimed and reset_seq is not allowed)
  GET  /v1/devices[?board=B]       inventory (operator); GET /v1/devices/{id} with recent events
  GET  /v1/events?device=ID&limit=N  stored events (operator)
  GET  /v1/rollouts                rollouts (operator); POST /v1/rollouts starts one
                                   {board, channel, version, plan, id?}
  GET  /v1/rollouts/{id}           per-stage status; POST /v1/rollouts/{id}/pause|resume|abort
Report answers: 200 {"accepted": n} once committed; 409 a seq already seen (nothing stored);
400 malformed; 401 bad/missing token; 403 report for another device; 408 body too slow; 413 too
large; 422 valid but the store cannot hold it (the device drops it, as every 4xx but 409);
503 retry later, with Retry-After (the database cannot write now; every route answers 503 while
the database is unreachable). Input rules: docs/ARCHITECTURE.md "Reports".
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import socket
import sqlite3
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from host_tools.errors import MpotaError
from host_tools.feed import install_channels
from host_tools.fleet import DEVICE_ID, GROUP_NAME
from host_tools.manifest import NAME
from host_tools.server.aio import cancel
from host_tools.server.auth import TokenCache, bearer
from host_tools.server.body import BodyError, parse_json, read_body
from host_tools.server.console import Console
from host_tools.server.ingest import (
    MAX_BATCH,
    MAX_BODY,
    GroupCommitWriter,
    ReportError,
    claimed_device,
    parse_reports,
)
from host_tools.server.orchestrator import (
    _ROLLOUT_ID,
    ChannelPublisher,
    Orchestrator,
    RolloutError,
    RolloutNotFound,
)
from host_tools.server.plans import PlanError, RolloutPlan
from host_tools.server.publish import FeedPublisher
from host_tools.server.store import (
    ConflictError,
    Store,
    StoreError,
    UnstorableError,
    is_postgres_url,
    open_store,
    parse_db_url,
)
from host_tools.versions import is_valid_version

T = TypeVar("T")
_CONTENT_TYPES = {".json": "application/json", ".bin": "application/octet-stream",
                  ".z": "application/octet-stream", ".html": "text/html; charset=utf-8",
                  ".txt": "text/plain; charset=utf-8", ".pem": "text/plain; charset=utf-8",
                  ".pub": "text/plain; charset=utf-8"}
DEVICE_BODY = 8192
_ACCEPTED = [b'{"accepted": %d}' % n for n in range(MAX_BATCH + 1)]  # prebuilt answers (hot path)


class ServeError(MpotaError):
    pass


@dataclass
class ServerConfig:
    feed_dir: Path
    db_url: str | None = None          # default: sqlite:///<feed_dir>/../mpota.db
    fleet_secret: bytes | None = None  # without it reports and operator calls answer 503
    tick_s: float = 1.0                # orchestrator timer
    synchronous: str = "NORMAL"        # SQLite; NORMAL survives kill -9, FULL also power loss
    access_log: bool = False
    tls_cert: Path | None = None       # PEM certificate chain (server first) -> https
    tls_key: Path | None = None        # its PEM private key
    header_timeout: float = 15.0       # s from connect (or the last answer) to a request's full headers
    body_timeout: float = 20.0         # s to receive a whole request body
    public_status: bool = False        # read-only console pages without login (loopback only)


def tls_context(cert: Path, key: Path) -> ssl.SSLContext:
    """The server side of TLS (1.2 or newer); one-line ServeError for unreadable or mismatched files."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except FileNotFoundError as exc:
        raise ServeError(f"TLS: cannot read {exc.filename}") from None
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ServeError(f"TLS: {cert} / {key} are not a PEM certificate and its private key "
                         f"({getattr(exc, 'reason', None) or exc})") from None
    return ctx


def default_db_url(feed_dir: Path) -> str:
    return f"sqlite:///{feed_dir.resolve().parent / 'mpota.db'}"


class _OneLineBadRequests(logging.Filter):
    """aiohttp logs a malformed request (bad header, smuggling shape, garbage) with a full traceback;
    a client's mistake is one line on stderr instead. Server-side errors keep their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (HttpProcessingError, ConnectionError)):
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            print(f"mpota serve: bad request from {remote}: {first[:160]}", file=sys.stderr, flush=True)
            return False
        return True


_SERVER_LOG = logging.getLogger("aiohttp.server")
if not any(isinstance(f, _OneLineBadRequests) for f in _SERVER_LOG.filters):
    _SERVER_LOG.addFilter(_OneLineBadRequests())


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


RETRY_AFTER_S = 5  # what a 503 asks a client to wait: the database is down or cannot write now


def _unavailable(message: str = "the database is unavailable, retry later") -> web.Response:
    response = _error(503, message)
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


class MpotaServer:
    def __init__(self, config: ServerConfig, publisher: ChannelPublisher | None = None,
                 store: Store | None = None, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        feed = Path(config.feed_dir)
        if not feed.is_dir():
            raise ServeError(f"feed folder {feed} does not exist")
        self.feed_root = os.path.realpath(feed)
        if store is None:
            url = config.db_url or default_db_url(feed)
            if not is_postgres_url(url):
                path = parse_db_url(url).resolve()
                if str(path).startswith(self.feed_root + os.sep):
                    raise ServeError(f"the database {path} must not live inside the feed "
                                     f"(it would be served)")
                url = str(path)
            store = open_store(url, synchronous=config.synchronous)
        self.store = store
        self.clock = clock
        self.tokens = TokenCache(config.fleet_secret) if config.fleet_secret else None
        self.db_exec = ThreadPoolExecutor(1, thread_name_prefix="mpota-db")
        self.ops_exec = ThreadPoolExecutor(1, thread_name_prefix="mpota-ops")
        self.orchestrator = Orchestrator(store, publisher, clock)
        if isinstance(publisher, FeedPublisher):
            publisher.ledger = store  # documents it re-signs go on record for the other replicas
        # several replicas on one PostgreSQL: only the one holding the lease runs the orchestrator
        self.leadership = store.leadership()
        self.leader = False
        self.replica = f"{socket.gethostname()}:{os.getpid()}"
        self._poke = asyncio.Event()
        self.writer = GroupCommitWriter(store, self.db_exec, clock, on_progress=self._poke.set)
        self._ticker: asyncio.Task[None] | None = None
        self._last_error = ""
        self._logged: dict[str, int] = {}  # rollout id -> history entries already in the log
        self._db_trouble_logged = -1e9  # monotonic time of the last "database unavailable" line
        self._db_trouble_quiet = 0

    # ----------------------------------------------------------------- lifecycle
    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024, middlewares=[self._database_trouble])
        r = app.router
        Console(self).register(r)  # /, /v1/status, /console/... (before the feed's catch-all)
        r.add_post("/v1/reports", self.post_reports)
        r.add_post("/v1/devices", self.post_device)
        r.add_get("/v1/devices", self.get_devices)
        r.add_get("/v1/devices/{device_id}", self.get_device)
        r.add_get("/v1/events", self.get_events)
        r.add_get("/v1/rollouts", self.get_rollouts)
        r.add_post("/v1/rollouts", self.post_rollout)
        r.add_get("/v1/rollouts/{rollout_id}", self.get_rollout)
        r.add_post("/v1/rollouts/{rollout_id}/{action}", self.rollout_action)
        r.add_route("*", "/v1/{tail:.*}", self.unknown_api)
        r.add_get("/{path:.+}", self.feed_file)  # GET also answers HEAD
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        return app

    async def _startup(self, app: web.Application) -> None:
        self._poke = asyncio.Event()
        self.writer.on_progress = self._poke.set
        self.writer.start()
        try:
            for line in await self._ops(self._lead, self.orchestrator.reconcile):
                self._log(f"reconcile: {line}")
        except MpotaError as exc:
            self._log(f"reconcile failed (will retry): {exc}")
        self._ticker = asyncio.get_running_loop().create_task(self._tick_loop())

    async def _cleanup(self, app: web.Application) -> None:
        await cancel(self._ticker)
        await self.writer.stop()
        self.ops_exec.submit(self.leadership.close)
        self.ops_exec.shutdown(wait=True)
        self.db_exec.shutdown(wait=True)
        self.store.close()

    def _log(self, message: str) -> None:
        print(f"mpota serve: {message}", file=sys.stderr, flush=True)

    @web.middleware
    async def _database_trouble(self, request: web.Request,
                                handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                                ) -> web.StreamResponse:
        """A request that needed the database while it is down or cannot write: 503 with
        Retry-After (the outage passes), and one log line per outage, not a traceback each."""
        try:
            return await handler(request)
        except (ConflictError, UnstorableError):
            raise
        except (StoreError, sqlite3.OperationalError) as exc:
            self._database_down(f"{request.method} {request.path}: {exc}")
            return _unavailable()

    def _database_down(self, message: str) -> None:
        """Log a database failure: the first at once, then at most one line every 30 s."""
        now = time.monotonic()
        if now - self._db_trouble_logged < 30.0:
            self._db_trouble_quiet += 1
            return
        quiet = f" ({self._db_trouble_quiet} more since the last line)" if self._db_trouble_quiet else ""
        self._log(f"database unavailable: {message.splitlines()[0][:200]}{quiet}")
        self._db_trouble_logged, self._db_trouble_quiet = now, 0

    async def _ops(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.ops_exec, fn, *args)

    async def _tick_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._poke.wait(), timeout=self.config.tick_s)
            except asyncio.TimeoutError:
                pass
            self._poke.clear()
            try:
                await self._ops(self._tick)
            except Exception as exc:  # keep serving; say it once
                message = f"orchestrator: {exc}"
                if message != self._last_error:
                    self._log(message)
                    self._last_error = message
            await asyncio.sleep(min(0.2, self.config.tick_s))

    def _lead(self, fn: Callable[[], list[str]]) -> list[str]:
        """fn() if this replica leads the orchestrator (taking the lead when it is free), else []."""
        leader = self.leadership.is_leader()
        if leader != self.leader:
            self.leader = leader
            if self.leadership.shared:
                self._log(f"replica {self.replica}: " + ("running the orchestrator" if leader else
                                                         "another replica runs the orchestrator"))
                if leader:  # what the previous leader decided is in its log already
                    for r in self.store.list_rollouts():
                        self._logged[r.id] = len(self.store.history(r.id))
        return fn() if leader else []

    def _tick(self) -> None:
        # every replica: channel files catch up with what the database says was published
        for path in install_channels(self.feed_root, self.store.channel_docs()):
            self._log(f"installed {path} from the database")
        self._lead(self._lead_tick)

    def _lead_tick(self) -> list[str]:
        self.orchestrator.reconcile()
        for rid, decision in self.orchestrator.evaluate_all():
            if decision.action != "none":
                self._log_decisions(rid)
        fresh = getattr(self.orchestrator.publisher, "keep_fresh", None)  # freeze protection
        if fresh is not None:
            for line in fresh():
                self._log(line)
        return []

    def _log_decisions(self, rid: str) -> None:
        """Every gate decision the rollout recorded since the last one logged, with its numbers."""
        history = self.store.history(rid)
        for h in history[self._logged.get(rid, 0):]:
            numbers = f" {json.dumps(h['numbers'], sort_keys=True)}" if h.get("numbers") else ""
            self._log(f"rollout {rid}: {h['kind']}: {h['message']}{numbers}")
        self._logged[rid] = len(history)

    # ----------------------------------------------------------------- auth
    def _need_operator(self, request: web.Request) -> web.Response | None:
        if self.tokens is None:
            return _error(503, "no fleet secret configured (start the server with --fleet-secret)")
        if not self.tokens.operator_ok(bearer(request.headers.get("Authorization"))):
            return _error(401, "operator token required (Authorization: Bearer <operator token>)")
        return None

    def _caller(self, request: web.Request, refused: str, operator_ok: bool = False
                ) -> tuple[TokenCache, str, bool, str | None] | web.Response:
        """Who calls, from the headers alone (before any body is read): (tokens, bearer token,
        operator, the device X-Mpota-Device names, its token checked), or the refusal. With
        operator_ok the operator token passes too (and names no device)."""
        tokens = self.tokens
        if tokens is None:
            return _error(503, "no fleet secret configured")
        token = bearer(request.headers.get("Authorization"))
        if token is None:
            return _error(401, "missing token (Authorization: Bearer <token>)")
        operator = operator_ok and tokens.operator_ok(token)
        claimed = None if operator else request.headers.get("X-Mpota-Device")
        if claimed is not None and not tokens.device_ok(claimed, token):
            return _error(401, refused)
        return tokens, token, operator, claimed

    # ----------------------------------------------------------------- bodies
    def _bad_body(self, request: web.Request, exc: BodyError) -> web.Response:
        if exc.status is None:  # nobody to answer: one line, no traceback
            self._log(f"{request.method} {request.path} from {request.remote}: {exc}")
            return _error(400, str(exc))
        return _error(exc.status, str(exc))

    async def _json(self, request: web.Request, cap: int = MAX_BODY) -> object:
        return parse_json(await read_body(request, cap, self.config.body_timeout))

    # ----------------------------------------------------------------- reports
    async def post_reports(self, request: web.Request) -> web.Response:
        # Order: everything the headers allow (size, token, claimed device) before reading the
        # body; then the body's device id and its token before validating the rest.
        caller = self._caller(request, "bad device token")
        if isinstance(caller, web.Response):
            return caller
        tokens, token, _, claimed = caller
        length = request.content_length
        if length is not None and length > MAX_BODY:
            return _error(413, f"report body larger than {MAX_BODY} bytes")
        try:
            data = parse_json(await read_body(request, MAX_BODY, self.config.body_timeout))
        except BodyError as exc:
            return self._bad_body(request, exc)
        device_id = claimed or claimed_device(data)
        if device_id is None:
            return _error(400, "no device_id in the report")
        if claimed is None and not tokens.device_ok(device_id, token):
            return _error(401, "bad device token")
        try:
            reports = parse_reports(data)
        except ReportError as exc:
            return _error(400, str(exc))
        for r in reports:
            if r["device_id"] != device_id:
                return _error(403, f"report for {r['device_id']} sent with the token of {device_id}")
        try:
            result = await self.writer.submit(device_id, reports)
        except UnstorableError as exc:  # retrying cannot help: a 4xx, which the device drops
            self._log(f"report from {device_id} refused: {exc}")
            return _error(422, "report cannot be stored")
        except Exception as exc:  # the database or the server, never the device: retried later
            self._database_down(f"storing reports failed: {type(exc).__name__}: {exc}")
            return _unavailable("cannot store reports now, retry later")
        if result.duplicates:
            return _error(409, f"{result.duplicates} report seq(s) already received; nothing stored")
        return web.Response(body=_ACCEPTED[result.accepted], content_type="application/json")

    # ----------------------------------------------------------------- devices
    async def post_device(self, request: web.Request) -> web.Response:
        caller = self._caller(request, "operator token or the device's own token required", operator_ok=True)
        if isinstance(caller, web.Response):
            return caller
        tokens, token, operator, _ = caller
        try:
            data = await self._json(request, DEVICE_BODY)
        except BodyError as exc:
            return self._bad_body(request, exc)
        if not isinstance(data, dict):
            return _error(400, "expected an object {device_id, board, group}")
        device_id = data.get("device_id")
        if not isinstance(device_id, str) or not DEVICE_ID.fullmatch(device_id):
            return _error(400, "device_id missing or invalid")
        if not operator and not tokens.device_ok(device_id, token):
            return _error(401, "operator token or the device's own token required")
        board, group, channel = data.get("board"), data.get("group"), data.get("channel")
        # each by the rule of what it must match later: a rollout's board and channel, a plan's groups
        for name, value, rule in (("board", board, NAME), ("group", group, GROUP_NAME),
                                  ("channel", channel, NAME)):
            if value is not None and (not isinstance(value, str) or not rule.fullmatch(value)):
                return _error(400, f"{name} must be a short name ({rule.pattern})")
        reset = data.get("reset_seq", False)
        if reset is not False and (reset is not True or not operator):
            return _error(403 if reset is True else 400, "reset_seq needs the operator token")
        # only the operator's registration is authoritative; a device registering itself claims
        register = functools.partial(self.store.register_device, device_id, board, group, self.clock(),
                                     bool(reset), channel=channel, operator=operator)
        device = await asyncio.get_running_loop().run_in_executor(self.db_exec, register)
        return web.json_response(device)

    async def get_devices(self, request: web.Request) -> web.Response:
        denied = self._need_operator(request)
        if denied:
            return denied
        board = request.query.get("board")
        return web.json_response({"devices": await self._ops(self.store.list_devices, board)})

    async def get_device(self, request: web.Request) -> web.Response:
        denied = self._need_operator(request)
        if denied:
            return denied
        device_id = request.match_info["device_id"]
        device = await self._ops(self.store.get_device, device_id)
        if device is None:
            return _error(404, f"no device {device_id!r}")
        device["events"] = await self._ops(self.store.device_events, device_id, 50)
        return web.json_response(device)

    async def get_events(self, request: web.Request) -> web.Response:
        denied = self._need_operator(request)
        if denied:
            return denied
        try:
            limit = max(1, min(10000, int(request.query.get("limit", "100"))))
        except ValueError:
            return _error(400, "limit must be a number")
        events = await self._ops(self.store.device_events, request.query.get("device"), limit)
        return web.json_response({"events": events})

    # ----------------------------------------------------------------- rollouts
    async def _rollout_call(self, fn: Callable[..., Any], *args: Any) -> web.Response:
        try:
            result = await self._ops(fn, *args)
        except RolloutNotFound as exc:
            return _error(404, str(exc))
        except (RolloutError, ConflictError) as exc:
            return _error(409, str(exc))
        except PlanError as exc:
            return _error(400, str(exc))
        except StoreError as exc:
            self._database_down(f"rollout call: {exc}")
            return _unavailable()
        except MpotaError as exc:  # publishing failed (key, disk): state is kept, reconcile retries
            return _error(500, str(exc))
        return web.json_response(result)

    def _status_of(self, rollout_id: str) -> dict[str, Any]:
        return self.orchestrator.status(rollout_id)

    async def get_rollouts(self, request: web.Request) -> web.Response:
        denied = self._need_operator(request)
        if denied:
            return denied
        rollouts = await self._ops(self.store.list_rollouts)
        return web.json_response({"rollouts": [r.to_dict() for r in rollouts]})

    async def get_rollout(self, request: web.Request) -> web.Response:
        denied = self._need_operator(request)
        if denied:
            return denied
        return await self._rollout_call(self._status_of, request.match_info["rollout_id"])

    async def post_rollout(self, request: web.Request) -> web.Response:
        denied = self._need_operator(request)
        if denied:
            return denied
        try:
            data = await self._json(request)
        except BodyError as exc:
            return self._bad_body(request, exc)
        if not isinstance(data, dict):
            return _error(400, "expected an object {board, channel, version, plan}")
        names: dict[str, str] = {}
        for name in ("board", "channel", "version"):
            value = data.get(name, "stable" if name == "channel" else None)
            if not isinstance(value, str) or not (NAME.fullmatch(value) if name != "version"
                                                  else is_valid_version(value)):
                return _error(400, f"{name} missing or invalid")
            names[name] = value
        board, channel, version = names["board"], names["channel"], names["version"]
        rid = data.get("id")
        if rid is not None and (not isinstance(rid, str) or not _ROLLOUT_ID.fullmatch(rid)):
            return _error(400, "id must be 1-64 letters, digits, '.', '_', ':', '-'")
        try:
            plan = RolloutPlan.from_dict(data.get("plan") or {})
        except PlanError as exc:
            return _error(400, str(exc))

        def start() -> dict[str, Any]:
            rollout = self.orchestrator.start(board, channel, version, plan, rid)
            return self.orchestrator.status(rollout.id)
        response = await self._rollout_call(start)
        if response.status == 200:
            response.set_status(201)
            self._poke.set()
        return response

    async def rollout_action(self, request: web.Request) -> web.Response:
        denied = self._need_operator(request)
        if denied:
            return denied
        rid, action = request.match_info["rollout_id"], request.match_info["action"]
        reason = None
        if request.can_read_body:
            try:
                data = await self._json(request)
            except BodyError as exc:
                return self._bad_body(request, exc)
            if isinstance(data, dict) and isinstance(data.get("reason"), str):
                reason = data["reason"][:200]
        orch = self.orchestrator
        calls: dict[str, Callable[[], Any]] = {
            "pause": lambda: orch.pause(rid, reason or "paused by operator"),
            "resume": lambda: orch.resume(rid),
            "abort": lambda: orch.abort(rid, reason or "aborted by operator"),
            "evaluate": lambda: orch.evaluate(rid),
        }
        call = calls.get(action)
        if call is None:
            return _error(404, f"unknown rollout action {action!r}")

        def run() -> dict[str, Any]:
            call()
            return orch.status(rid)
        response = await self._rollout_call(run)
        self._poke.set()
        return response

    async def unknown_api(self, request: web.Request) -> web.Response:
        return _error(404 if request.method in ("GET", "HEAD", "POST") else 405, "no such API endpoint")

    # ----------------------------------------------------------------- feed
    async def feed_file(self, request: web.Request) -> web.StreamResponse:
        rel = request.match_info["path"]
        parts = rel.split("/")
        if any(not p or p.startswith(".") for p in parts) or "\\" in rel or "\0" in rel:
            return _error(404, "not found")
        path = os.path.join(self.feed_root, *parts)
        real = os.path.realpath(path)
        if not real.startswith(self.feed_root + os.sep):
            return _error(403, "outside the feed")
        if not os.path.isfile(real):
            return _error(404, "not found")
        ctype = _CONTENT_TYPES.get(os.path.splitext(real)[1], "application/octet-stream")
        return web.FileResponse(real, headers={"Content-Type": ctype, "Cache-Control": "no-cache"})


def make_publisher(feed_dir: Path, rollout_key: str | None, any_role: bool = False,
                   expires_s: float | None = 7 * 86400.0) -> ChannelPublisher | None:
    if rollout_key is None:
        return None
    from host_tools.server.publish import FeedPublisher

    return FeedPublisher(feed_dir, rollout_key, expires_s=expires_s, any_role=any_role)


async def start_site(server: MpotaServer, host: str, port: int) -> tuple[web.AppRunner, str]:
    """Listen (http, or https with the config's certificate); returns the runner and the base URL.
    keepalive_timeout doubles as the header timeout: aiohttp closes a connection that has not
    completed a request's headers that long after connecting or after its last answer."""
    config = server.config
    ctx = None
    if config.tls_cert is not None or config.tls_key is not None:
        if config.tls_cert is None or config.tls_key is None:
            raise ServeError("TLS needs both a certificate and its key (--tls-cert and --tls-key)")
        ctx = tls_context(config.tls_cert, config.tls_key)
    quiet: dict[str, Any] = {} if config.access_log else {"access_log": None}
    runner = web.AppRunner(server.app(), keepalive_timeout=config.header_timeout, **quiet)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=ctx)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sockets = getattr(site._server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, f"{'https' if ctx else 'http'}://{host}:{bound}"


def run(config: ServerConfig, host: str, port: int, publisher: ChannelPublisher | None,
        ready: Callable[[str], Awaitable[None] | None] | None = None) -> None:
    """Serve until interrupted; prints "serving on http(s)://HOST:PORT" once listening."""
    server = MpotaServer(config, publisher)

    async def main() -> None:
        runner, url = await start_site(server, host, port)
        print(f"serving on {url}", flush=True)
        if ready is not None:
            maybe = ready(url)
            if maybe is not None:
                await maybe
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
