"""`mpota rollout start|status|list|pause|resume|abort|rollback`: staged rollouts on a running server."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from host_tools.commands.devices import add_server_args
from host_tools.errors import UsageError

_PLAN_HELP = """\
A plan is a TOML file (--plan, see examples/rollout.toml) and/or flags; flags replace the file's
top-level values (a value set on a stage in the file still wins for that stage). Default plan:
stages canary -> internal -> pilot (each the device group of that name) -> general in 25% batches
(25, 50, 75, 100), thresholds 20%, min_finished 1, soak 30 s, in-progress timeout 30 min, watch 1 h.
The plan is checked before anything is published: a stage that could never target a device is
refused, and so is a rollout whose first stage targets no registered device today.

Who counts: devices of the board registered on the rollout's channel (default stable) whose
registered group (set by the operator: mpota deploy --server) is in the step's groups, or whose
sticky bucket is below its percentage, once they report progress for this rollout. A group a
device only claims in its reports never counts; an unregistered device counts by its bucket
only. Reports from any other device are shown as "unexpected" and never move the rollout. A
device already on the target version that sends nothing is not waited for.

The gate: a stage pauses the rollout when, over its finished devices (confirmed, failed, rolled
back, timed out) and once at least min_finished have finished, a failure, rollback or health
check failure rate is above its threshold (exact: 2 of 9 = 22.2% is above 20%; never rounded).
An excused `failed` (a power cut mid-install: the device retries, with a fresh in-progress
clock; an update already pending its trial boot: nothing changes) keeps it in progress; every
other `failed`, download errors included, counts as a failure until the device's retry starts.
Failures keep counting after their stage passed, so a device that registers late and fails
still pauses the rollout.

A step passes when (1) its stage targets at least min_finished devices (devices already on the
version included; a stage with skip_if_empty = true may target none; inside a percentage ramp a
step may add nobody), (2) min_finished of the stage's devices that need the update have finished
(all of them, if fewer), (3) no device of the stage is still in progress (each waited for
at most the in-progress timeout after (2)), and (4) the soak held: it counts from the moment (2)
was met, and with --window only time inside the window counts.

resume accepts the failures so far (they stay finished but stop counting as failures, also when
a late rolled_back follows a health_failed); any new failure counts. After completion the gates
keep watching for the plan's watch time and pause the rollout on a late failure; until a newer
rollout takes the channel, pause and abort still work on a completed rollout."""


_STATUS_EXIT = """\
Exit status (scripts can gate on it): 0 active or completed, 3 paused, 4 aborted, 5 --wait/--watch
gave up (--wait-timeout), 1 error (server unreachable, no such rollout), 2 wrong command line.
Rates: failure = failed + rolled back + timed out, rollback = rolled back, health = devices that
reported health_failed; each as a percent of the stage's finished devices."""
STATE_EXIT = {"active": 0, "completed": 0, "paused": 3, "aborted": 4}
GAVE_UP = 5


def register(sub: Any) -> None:
    ro = sub.add_parser(
        "rollout",
        help="start and steer staged rollouts on a running `mpota serve`",
        description="Staged rollouts: the server re-signs the channel document at each step "
        "(higher seq, next groups/percentage) and pauses by itself when a gate "
        "fails. Operator calls use the operator token derived from the fleet "
        "secret.",
        epilog=_PLAN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    rsub = ro.add_subparsers(dest="rollout_command", metavar="ACTION", required=True)

    st = rsub.add_parser(
        "start",
        help="start a rollout of a release already in the feed",
        epilog=_PLAN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    st.add_argument("--board", "-b", required=True)
    st.add_argument("--version", "-v", required=True, help="release version (in releases/<board>/<version>/)")
    st.add_argument("--channel", "-c", default="stable", help="channel (default stable)")
    st.add_argument(
        "--id", dest="rollout_id", metavar="ID", help="rollout id (default r-<UTC time>-<version>)"
    )
    _plan_args(st)
    st.add_argument("--json", action="store_true", help="print the status as JSON")
    add_server_args(st)
    st.set_defaults(func=cmd_start)

    s = rsub.add_parser("status", help="per-stage table of a rollout (default: the latest)",
                        description="Per stage: targeted, started, in progress, confirmed, failed, rolled "
                                    "back, timed out, the rates the gate judges and its verdict.",
                        epilog=_STATUS_EXIT, formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("rollout_id", nargs="?", metavar="ID")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument("--history", action="store_true", help="also print the rollout's history")
    live = s.add_mutually_exclusive_group()
    live.add_argument("--watch", action="store_true",
                      help="redraw live (a terminal: in place; otherwise a new table when something changed) "
                           "until the rollout is completed or aborted, or Ctrl-C")
    live.add_argument("--wait", action="store_true",
                      help="block until the rollout is completed, paused or aborted, then print it")
    s.add_argument("--interval", type=float, default=2.0, metavar="SECONDS", help="poll interval (default 2)")
    s.add_argument("--wait-timeout", type=float, metavar="SECONDS",
                   help="with --wait or --watch: give up after this long (exit 5)")
    add_server_args(s)
    s.set_defaults(func=cmd_status)

    ls = rsub.add_parser("list", help="list rollouts")
    ls.add_argument("--json", action="store_true", help="print JSON")
    add_server_args(ls)
    ls.set_defaults(func=cmd_list)

    for action, text in (
        ("pause", "pause: devices start nothing new (channel state paused)"),
        ("resume", "resume a paused rollout (failures so far are accepted)"),
        ("abort", "abort: channel state halted, the rollout ends"),
    ):
        a = rsub.add_parser(action, help=text)
        a.add_argument("rollout_id", nargs="?", metavar="ID",
                       help="default: the only open rollout (refused when several are open)")
        if action != "resume":
            a.add_argument("--reason", help="recorded with the rollout")
        a.add_argument("--json", action="store_true", help="print the status as JSON")
        add_server_args(a)
        a.set_defaults(func=cmd_action, action=action)

    rb = rsub.add_parser(
        "rollback",
        help="roll the fleet back: publish an earlier firmware as a new release",
        description="Take release FROM (--to) from the feed, stamp NEW_VERSION (--version) into its image "
        "with the current release's security_version, sign it with the release key, copy it into the "
        "feed, abort the open rollout and roll NEW_VERSION out (one stage, 100%, unless --staged; "
        "the plan flags below apply either way). "
        "Devices accept it: it is newer and its security_version is not lower.",
    )
    rb.add_argument("--feed", "-f", required=True, metavar="DIR", help="the feed folder the server serves")
    rb.add_argument("--board", "-b", required=True)
    rb.add_argument("--channel", "-c", default="stable")
    rb.add_argument(
        "--to",
        dest="from_version",
        required=True,
        metavar="VERSION",
        help="the earlier, good release to go back to",
    )
    rb.add_argument(
        "--version",
        "-v",
        dest="new_version",
        required=True,
        metavar="NEW_VERSION",
        help="the version the rollback release gets (newer than what devices run)",
    )
    rb.add_argument("--release-key", required=True, metavar="KEY", help="release private key")
    rb.add_argument(
        "--security-version",
        type=int,
        metavar="N",
        help="default: the higher of the earlier and the current release's",
    )
    rb.add_argument(
        "--work", metavar="DIR", help="where the signed release is built (default: next to the feed)"
    )
    rb.add_argument("--any-role", action="store_true", help="accept keys of any role (demo single-key mode)")
    rb.add_argument("--staged", action="store_true", help="roll it out with the normal staged plan")
    rb.add_argument(
        "--no-server",
        action="store_true",
        help="no server: sign the channel directly as a full release (needs --rollout-key)",
    )
    rb.add_argument("--rollout-key", metavar="KEY", help="rollout key, with --no-server")
    _plan_args(rb)
    add_server_args(rb)
    rb.set_defaults(func=cmd_rollback)


def _plan_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("plan")
    g.add_argument("--plan", metavar="TOML", help="plan file")
    g.add_argument(
        "--stages", metavar="A,B,..", help="stage names in order (default canary,internal,pilot,general)"
    )
    g.add_argument(
        "--batch-size-percentage", type=float, metavar="P", help="general stage batches (default 25)"
    )
    g.add_argument("--ramp", choices=("linear", "exponential"), help="percentage ramp of the last stage")
    g.add_argument("--soak", metavar="DURATION", help="wait per step before advancing, e.g. 30s, 10m")
    g.add_argument("--min-finished", type=int, metavar="N",
                   help="finished devices a stage needs to be judged and to pass (>= 1)")
    g.add_argument("--failure-rate", type=float, metavar="PCT", help="failure_rate_threshold, percent")
    g.add_argument("--rollback-rate", type=float, metavar="PCT", help="rollback_rate_threshold, percent")
    g.add_argument(
        "--health-failure-rate", type=float, metavar="PCT", help="health_check_failure_rate, percent"
    )
    g.add_argument("--timeout", metavar="DURATION", help="in-progress timeout (default 30m)")
    g.add_argument("--window", metavar="HH:MM-HH:MM", help="maintenance window (UTC), carried to devices")


# `rollout rollback` without --staged: every device at once, no soak unless asked; the other plan
# flags (window, thresholds, min_finished, timeout) apply as given.
_ROLLBACK_PLAN = {"soak": 0, "stages": [{"name": "rollback", "groups": [], "percentages": [100.0]}]}


def build_plan(args: argparse.Namespace, default: dict[str, Any] | None = None) -> dict[str, Any]:
    """The plan from --plan (or `default`) and the flags, checked here so mistakes fail before the
    server is asked."""
    from host_tools.server.plans import PlanError, RolloutPlan, plan_with_overrides

    base: dict[str, Any] | None = None if default is None else dict(default)
    if args.plan and default is not None:
        raise UsageError("--plan is for a staged rollback (add --staged)")
    if args.plan:
        import tomllib

        try:
            with open(args.plan, "rb") as f:
                base = tomllib.load(f)
        except OSError as exc:
            raise PlanError(f"cannot read plan {args.plan}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise PlanError(f"{args.plan}: not valid TOML: {exc}") from None
    window = None
    if args.window:
        start, sep, end = args.window.partition("-")
        if not sep:
            raise UsageError(f"--window {args.window!r} must be HH:MM-HH:MM (UTC)")
        window = {"start": start.strip(), "end": end.strip()}
    overrides: dict[str, Any] = {
        "failure_rate_threshold": args.failure_rate,
        "rollback_rate_threshold": args.rollback_rate,
        "health_check_failure_rate": args.health_failure_rate,
        "min_finished": args.min_finished,
        "soak": args.soak,
        "in_progress_timeout": args.timeout,
        "window": window,
        "batch_size_percentage": args.batch_size_percentage,
        "ramp": args.ramp,
        "stage_names": [s.strip() for s in args.stages.split(",") if s.strip()] if args.stages else None,
    }
    plan: RolloutPlan = plan_with_overrides(base, overrides)
    return plan.to_dict()


def _client(args: argparse.Namespace) -> Any:
    from host_tools.server.client import ServerClient, resolve_token

    return ServerClient(args.server, resolve_token(args.token, args.fleet_secret))


def _open_rollout(
    client: Any, board: str | None = None, channel: str | None = None, open_only: bool = True
) -> dict[str, Any] | None:
    rollouts = client.call("GET", "/v1/rollouts")["rollouts"]
    if board is not None:
        rollouts = [r for r in rollouts if r["board"] == board and r["channel"] == channel]
    if open_only:
        rollouts = [r for r in rollouts if r["state"] in ("active", "paused")]
    return rollouts[-1] if rollouts else None


def _only_open_rollout(client: Any, action: str) -> str:
    """The id of the one open rollout; an operator command never guesses between several."""
    rollouts = client.call("GET", "/v1/rollouts")["rollouts"]
    open_ = [r for r in rollouts if r["state"] in ("active", "paused")]
    if not open_:
        raise UsageError("no open rollout; give its ID")
    if len(open_) > 1:
        names = ", ".join(f"{r['id']} ({r['board']}/{r['channel']}, {r['state']})" for r in open_)
        raise UsageError(f"{len(open_)} rollouts are open: {names}; say which one to {action}")
    return str(open_[0]["id"])


RATES_LEGEND = ("rates: % of a stage's finished devices; failure = failed + rolled back + timed out,\n"
                "       rollback = rolled back, health = reported health_failed")


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}%"


def print_status(status: dict[str, Any], history: bool = False) -> None:
    r = status["rollout"]
    step = status["step"]
    print(f"rollout {r['id']}: {r['version']} on {r['board']}/{r['channel']}: {r['state'].upper()}")
    groups = ", ".join(step["groups"]) or "-"
    seq = r["published_seq"] if r["published_seq"] is not None else "-"
    print(
        f"step {step['index'] + 1}/{step['count']}: {step['stage']} (groups {groups}; "
        f"{step['percentage']:g}%), channel seq {seq}"
    )
    if r.get("reason"):
        print(f"reason: {r['reason']}")
    inst = status.get("installs")
    if inst and inst["full"] + inst["delta"] + inst["fallback"]:
        print(f"installs: {inst['delta']} delta, {inst['full']} full, {inst['fallback']} full after a patch "
              f"failed; patches saved {inst['bytes_saved']} bytes on the wire")
    cols = (
        "stage",
        "targeted",
        "started",
        "in prog",
        "confirmed",
        "failed",
        "rolled back",
        "timed out",
        "failure",
        "rollback",
        "health",
        "gate",
    )
    rows = []
    for s in status["stages"]:
        c = s["counts"]
        rows.append(
            (
                s["name"],
                str(c["targeted"]),
                str(c["started"]),
                str(c["in_progress"]),
                str(c["confirmed"]),
                str(c["failed"]),
                str(c["rolled_back"]),
                str(c["timed_out"]),
                _pct(s["failure_rate"]),
                _pct(s["rollback_rate"]),
                _pct(s["health_check_failure_rate"]),
                s["verdict"],
            )
        )
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    print(
        "  ".join(
            c.rjust(w) if 0 < i < len(cols) - 1 else c.ljust(w)
            for i, (c, w) in enumerate(zip(cols, widths, strict=True))
        ).rstrip()
    )
    for row in rows:
        print(
            "  ".join(
                v.rjust(w) if 0 < i < len(cols) - 1 else v.ljust(w)
                for i, (v, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )
    print(RATES_LEGEND)
    limits = []
    for s in status["stages"]:
        th = s.get("thresholds") or {}
        if th:
            three = (th.get(k) for k in ("failure_rate", "rollback_rate", "health_check_failure_rate"))
            limits.append(f"{s['name']} " + "/".join(f"{v:g}" if isinstance(v, (int, float)) else "-"
                                                     for v in three) + "%")
    if limits:
        print(f"limits (failure/rollback/health): {', '.join(limits)}")
    nxt = status.get("next") or {}
    if r["state"] == "active" and nxt.get("waiting_for"):
        print(f"waiting for: {nxt['waiting_for']}")
    unexpected = status.get("unexpected") or {}
    if unexpected.get("devices"):
        first = ", ".join(unexpected.get("first") or [])
        print(f"unexpected: {unexpected['devices']} device(s) reported for this rollout without being "
              f"targeted (not counted): {first}")
    ahead = sum(s["counts"].get("up_to_date", 0) for s in status["stages"])
    if ahead:
        print(f"{ahead} targeted device(s) already run {r['version']} (not waited for)")
    if history:
        for h in status.get("history", []):
            stamp = time.strftime("%H:%M:%S", time.gmtime(h["time"]))
            print(f"  {stamp}  {h['kind']:<10} {h['message']}")


def _show(args: argparse.Namespace, status: dict[str, Any]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(status, indent=2))
    else:
        print_status(status, getattr(args, "history", False))


def cmd_start(args: argparse.Namespace) -> int:
    plan = build_plan(args)
    client = _client(args)
    body = {"board": args.board, "channel": args.channel, "version": args.version, "plan": plan}
    if args.rollout_id:
        body["id"] = args.rollout_id
    status = client.call("POST", "/v1/rollouts", body)
    _show(args, status)
    if not getattr(args, "json", False):
        for h in status.get("history", []):
            if h["kind"] == "warning":
                print(f"warning: {h['message']}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    client = _client(args)
    rid = args.rollout_id
    if rid is None:
        latest = _open_rollout(client) or _open_rollout(client, open_only=False)
        if latest is None:
            raise UsageError("the server has no rollouts yet")
        rid = latest["id"]
    if args.watch or args.wait:
        return _follow(args, client, rid)
    status = client.call("GET", f"/v1/rollouts/{rid}")
    _show(args, status)
    return STATE_EXIT.get(status["rollout"]["state"], 0)


def _follow(args: argparse.Namespace, client: Any, rid: str) -> int:
    """--wait: poll until completed/paused/aborted. --watch: redraw until completed/aborted (or Ctrl-C)."""
    import contextlib
    import io
    import sys

    if args.interval <= 0:
        raise UsageError("--interval must be > 0")
    ends = {"completed", "paused", "aborted"} if args.wait else {"completed", "aborted"}
    tty = args.watch and sys.stdout.isatty() and not args.json
    deadline = None if args.wait_timeout is None else time.monotonic() + args.wait_timeout
    last = ""
    status: dict[str, Any] = {}
    try:
        while True:
            status = client.call("GET", f"/v1/rollouts/{rid}")
            state = status["rollout"]["state"]
            if args.watch:
                frame = io.StringIO()
                with contextlib.redirect_stdout(frame):
                    _show(args, status)
                text = frame.getvalue()
                if tty:  # in place: home, clear, the new table in one write
                    sys.stdout.write(f"\x1b[H\x1b[2J{time.strftime('%H:%M:%S')}  every {args.interval:g}s, "
                                     f"Ctrl-C stops\n{text}")
                    sys.stdout.flush()
                elif text != last:
                    print(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}", flush=True)
                    sys.stdout.write(text)
                    sys.stdout.flush()
                last = text
            if state in ends:
                if args.wait:
                    _show(args, status)
                return STATE_EXIT.get(state, 0)
            if deadline is not None and time.monotonic() >= deadline:
                print(f"mpota: rollout {rid} still {state} after {args.wait_timeout:g} s", file=sys.stderr)
                return GAVE_UP
            time.sleep(args.interval)
    except KeyboardInterrupt:  # the normal way to leave --watch
        return STATE_EXIT.get(status.get("rollout", {}).get("state", ""), 0) if status else 130


def cmd_list(args: argparse.Namespace) -> int:
    rollouts = _client(args).call("GET", "/v1/rollouts")["rollouts"]
    if args.json:
        print(json.dumps(rollouts, indent=2))
        return 0
    for r in rollouts:
        created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(r["created_at"]))
        print(
            f"{r['id']}  {r['board']}/{r['channel']}  {r['version']}  {r['state']}  step {r['step'] + 1}  "
            f"{created}  {r.get('reason') or ''}".rstrip()
        )
    if not rollouts:
        print("no rollouts")
    return 0


def cmd_action(args: argparse.Namespace) -> int:
    client = _client(args)
    rid = args.rollout_id or _only_open_rollout(client, args.action)
    body = {"reason": args.reason} if getattr(args, "reason", None) else None
    _show(args, client.call("POST", f"/v1/rollouts/{rid}/{args.action}", body))
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from host_tools.server.rollback import prepare_rollback

    if args.no_server and not args.rollout_key:
        raise UsageError("--no-server needs --rollout-key (the channel document is signed here)")
    client = None if args.no_server else _client(args)
    plan = build_plan(args, None if args.staged else _ROLLBACK_PLAN)
    feed = Path(args.feed)
    work = Path(args.work) if args.work else feed.resolve().parent / "rollback-work"
    rb = prepare_rollback(
        feed,
        args.board,
        args.channel,
        args.from_version,
        args.new_version,
        args.release_key,
        work,
        args.security_version,
        any_role=args.any_role,
    )
    print(
        f"signed rollback release {rb.version} (image of {rb.from_version}, security_version "
        f"{rb.security_version}) into {rb.feed_release}"
    )
    if client is None:
        from host_tools.feed import default_rollout, write_channel
        from host_tools.keys import load_private_key

        key = load_private_key(args.rollout_key, None if args.any_role else "rollout")
        doc = write_channel(
            feed,
            args.board,
            args.channel,
            rb.version,
            default_rollout(args.board, rb.version),
            key,
            any_role=args.any_role,
        )
        print(
            f"channel {args.board}/{args.channel} now points at {rb.version} for every device (seq {doc.seq})"
        )
        return 0
    current = _open_rollout(client, args.board, args.channel)
    if current is not None:
        client.call(
            "POST",
            f"/v1/rollouts/{current['id']}/abort",
            {"reason": f"rolled back to {rb.from_version} as {rb.version}"},
        )
        print(f"aborted rollout {current['id']}")
    status = client.call(
        "POST",
        "/v1/rollouts",
        {"board": args.board, "channel": args.channel, "version": rb.version, "plan": plan},
    )
    print_status(status)
    return 0
