"""`mpota deploy`: install mpota on a board with mpremote and provision its identity, keys and token."""

from __future__ import annotations

import argparse
from typing import Any

from host_tools.boards import load_board
from host_tools.deploy import DeployRequest, deploy, parse_keys_option
from host_tools.fleet import DEFAULT_GROUP
from host_tools.server.plans import DEFAULT_GROUPS
from host_tools.transport import ProcessTransport


def register(sub: Any) -> None:
    p = sub.add_parser(
        "deploy", help="install mpota on a board (mpremote) and write /mpota.json",
        description="Compile device/mpota with mpy-cross (matched to the board's MicroPython), copy it to "
                    ":lib/mpota with mpremote, write /mpota.json (identity, group, feed, keys, token), "
                    "install boot.py/main.py templates when the board has none, then import mpota on the "
                    "board to verify. Everything is checked before the first write.")
    p.add_argument("--port", "-p", required=True, help="serial port, e.g. /dev/ttyUSB0 (or u0, a0)")
    p.add_argument("--board", "-b", required=True, help="board name (see boards/) or board JSON path")
    p.add_argument("--feed-url", required=True, help="feed root URL the device polls (http(s)://.../)")
    p.add_argument("--channel", default="stable", help="update channel (default: stable)")
    p.add_argument("--group", default=DEFAULT_GROUP, metavar="GROUP",
                   help=f"rollout group: any name a plan can use (the default plan: "
                        f"{', '.join(DEFAULT_GROUPS)}; default: {DEFAULT_GROUP})")
    p.add_argument("--device-id", default="auto",
                   help="device id, or 'auto' (default): <chip>-<machine.unique_id() hex> from the board")
    p.add_argument("--report-url", help="where the device POSTs reports (default with --server: "
                                        "SERVER/v1/reports)")
    p.add_argument("--keys", metavar="ROLE=PUB,...",
                   help="public keys by role: release=release.pem.pub,rollout=rollout.pem.pub "
                        "(both=K for one demo key)")
    for role in ("release", "rollout"):
        p.add_argument(f"--{role}-key", action="append", default=[], metavar="PUB",
                       help=f"a {role} public key (PEM, or 130 hex digits); repeat for several")
    p.add_argument("--keys-doc", metavar="FILE",
                   help="seed the board's trust with a keys document (e.g. FEED/keys/3.json; `mpota keys`): "
                        "its release and rollout keys and thresholds, and its root keys for the versions "
                        "that follow; replaces --keys/--release-key/--rollout-key")
    p.add_argument("--fleet-secret", metavar="FILE", help="fleet secret file: the device's report token is "
                                                          "HMAC(secret, device_id)")
    p.add_argument("--server", metavar="URL", help="rollout server: register the device (POST /v1/devices)")
    p.add_argument("--force", action="store_true",
                   help="replace the board's boot.py/main.py with the templates")
    p.add_argument("--source", action="store_true", help="copy .py sources instead of compiling to .mpy")
    p.add_argument("--resume", action="store_true",
                   help="no soft reset before each mpremote command (mpremote resume; for the unix port)")
    p.add_argument("--firmware-version", metavar="VERSION",
                   help="the version of the firmware the board runs now, for a build whose app description "
                        "carries none (MicroPython's own builds; default then: MicroPython's version), "
                        "written to /mpota.json so the board knows what it runs before its first update")
    p.add_argument("--tls-ca", metavar="PEM", help="https: the server's CA certificate (or its self-signed "
                   "certificate, which pins it), written into /mpota.json for the device to verify with")
    p.add_argument("--allow-http", action="store_true",
                   help="let the device send its report token over plain http (a lab or demo only)")
    p.add_argument("--no-ntp", dest="ntp", action="store_false",
                   help="the board never sets its clock by NTP (no NTP server in reach, or the app sets the "
                        "clock): until the clock is set, an expired channel document cannot be recognised")
    p.add_argument("--dry-run", action="store_true", help="print the commands and the config, touch nothing")
    p.set_defaults(func=cmd_deploy)


def cmd_deploy(args: argparse.Namespace) -> int:
    board = load_board(args.board)
    release = list(args.release_key)
    rollout = list(args.rollout_key)
    if args.keys:
        by_role = parse_keys_option(args.keys)
        release += by_role["release"]
        rollout += by_role["rollout"]
    req = DeployRequest(
        board=board, port=args.port, feed_url=args.feed_url, channel=args.channel, group=args.group,
        device_id=args.device_id, report_url=args.report_url, release_keys=release, rollout_keys=rollout,
        fleet_secret=args.fleet_secret, server=args.server, force=args.force, dry_run=args.dry_run,
        resume=args.resume, source=args.source, firmware_version=args.firmware_version,
        tls_ca=args.tls_ca, allow_http=args.allow_http, keys_doc=args.keys_doc, ntp=args.ntp)
    deploy(req, ProcessTransport())
    return 0
