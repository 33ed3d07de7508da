"""`mpota fleet secret|token`: the fleet secret and the tokens derived from it."""

from __future__ import annotations

import argparse
from typing import Any

from host_tools.commands._options import actions
from host_tools.errors import UsageError


def register(sub: Any) -> None:
    fsub = actions(sub, "fleet", "fleet secret and device / operator tokens",
                   "The fleet secret (32 random bytes, hex, mode 0600) and the tokens derived from it: a "
                   "device token = hex HMAC-SHA256(secret, device_id); the operator token = hex "
                   "HMAC-SHA256(secret, 'mpota operator').")
    sec = fsub.add_parser("secret", help="create a fleet secret file",
                          description="Write a new fleet secret to PATH (mode 0600). Refuses to overwrite: "
                                      "replacing it invalidates every device token.")
    sec.add_argument("path", metavar="PATH")
    sec.add_argument("--force", action="store_true", help="replace an existing secret")
    sec.set_defaults(func=cmd_secret)
    tok = fsub.add_parser("token", help="derive a device token (or the operator token)",
                          description="Print the report token of DEVICE_ID (what `mpota deploy` writes into "
                                      "/mpota.json), or with --operator the token `mpota rollout` sends.")
    tok.add_argument("device_id", metavar="DEVICE_ID", nargs="?")
    tok.add_argument("--secret", "-s", required=True, metavar="PATH", help="fleet secret file")
    tok.add_argument("--operator", action="store_true", help="print the operator token instead")
    tok.set_defaults(func=cmd_token)


def cmd_secret(args: argparse.Namespace) -> int:
    from host_tools.fleet import create_secret

    create_secret(args.path, force=args.force)
    print(f"wrote fleet secret {args.path} (mode 0600); keep it on the server and the deploy machine")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    from host_tools.fleet import device_token, load_secret
    from host_tools.server.auth import operator_token

    if args.operator == (args.device_id is not None):
        raise UsageError("give either DEVICE_ID or --operator")
    secret = load_secret(args.secret)
    print(operator_token(secret) if args.operator else device_token(secret, args.device_id))
    return 0
