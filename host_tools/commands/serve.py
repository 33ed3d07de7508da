"""`mpota serve`: the feed, the report endpoint, rollouts and the status page in one process."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser(
        "serve", help="serve the feed, take device reports and drive rollouts",
        description="One process: the static feed (Range, ETag, HEAD), POST /v1/reports (device tokens), "
                    "POST /v1/devices, the rollout API used by `mpota rollout` (operator token = "
                    "HMAC-SHA256(fleet secret, 'mpota operator'); see `mpota fleet token --operator`) and a "
                    "rollout console at / (operator login with the operator token). "
                    "State lives in SQLite (WAL) or PostgreSQL (--db postgresql://...: several replicas "
                    "may share it and one feed folder); a report answered 2xx is committed.",
        epilog="Without --fleet-secret the report and operator endpoints answer 503; without --rollout-key "
               "rollouts cannot start (channel documents are signed by the rollout key).")
    p.add_argument("--feed", "-f", required=True, metavar="DIR", help="feed root folder")
    p.add_argument("--db", metavar="URL",
                   help="database: sqlite:///PATH (default sqlite:///<feed parent>/mpota.db) or "
                        "postgresql://USER@HOST:PORT/DBNAME (needs mpota[postgres]; the schema is migrated "
                        "on start)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 = any free port)")
    p.add_argument("--fleet-secret", metavar="PATH", help="fleet secret (`mpota fleet secret`)")
    p.add_argument("--rollout-key", metavar="KEY", help="rollout private key (role rollout or both)")
    p.add_argument("--any-role", action="store_true", help="accept a rollout key of any role")
    p.add_argument("--channel-expires", default="7d", metavar="DURATION",
                   help="validity of the channel documents it signs (default 7d); each is re-signed "
                        "(same content, seq + 1) when half of it is left, so a stale copy served "
                        "elsewhere expires while the live feed never does")
    p.add_argument("--tick", type=float, default=1.0, metavar="SECONDS",
                   help="orchestrator timer (default 1 s; it also runs right after reports)")
    p.add_argument("--durable", action="store_true",
                   help="SQLite synchronous=FULL: acknowledged reports also survive a power cut "
                        "(default NORMAL survives a killed process)")
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.add_argument("--public-status", action="store_true",
                   help="let anyone read the console's pages and /v1/status without logging in (actions "
                        "still need the operator); only with a loopback --host")
    p.add_argument("--tls-cert", metavar="PEM", help="serve https with this certificate chain (server first)")
    p.add_argument("--tls-key", metavar="PEM", help="the certificate's private key (with --tls-cert)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from host_tools.errors import UsageError
    from host_tools.fleet import load_secret
    from host_tools.server.app import ServerConfig, make_publisher, run

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port} is not a port number")
    if args.tick <= 0:
        raise UsageError("--tick must be > 0")
    if args.public_status and not _loopback(args.host):
        raise UsageError(f"--public-status would show the fleet to anyone who reaches {args.host}: only with "
                         f"a loopback --host (127.0.0.1, ::1, localhost)")
    feed = Path(args.feed)
    secret = load_secret(args.fleet_secret) if args.fleet_secret else None
    from host_tools.feed import expires_seconds

    publisher = make_publisher(feed, args.rollout_key, any_role=args.any_role,
                               expires_s=expires_seconds(args.channel_expires))
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("https needs both --tls-cert and --tls-key")
    config = ServerConfig(feed_dir=feed, db_url=args.db, fleet_secret=secret, tick_s=args.tick,
                          synchronous="FULL" if args.durable else "NORMAL", access_log=args.access_log,
                          tls_cert=Path(args.tls_cert) if args.tls_cert else None,
                          tls_key=Path(args.tls_key) if args.tls_key else None,
                          public_status=args.public_status)
    run(config, args.host, args.port, publisher)
    return 0


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
