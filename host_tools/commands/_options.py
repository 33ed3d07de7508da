"""Command-line shapes several `mpota` commands share, declared once."""

from __future__ import annotations

from typing import Any


def actions(sub: Any, name: str, help: str, description: str) -> Any:
    """`mpota NAME ACTION ...`: a command made of actions; returns what the actions are added to."""
    parser = sub.add_parser(name, help=help, description=description)
    return parser.add_subparsers(dest=f"{name}_command", metavar="ACTION", required=True)


def release_into_feed(p: Any) -> None:
    """RELEASE_DIR and the feed it goes into (`mpota feed publish` and `feed add`)."""
    p.add_argument("release", metavar="RELEASE_DIR")
    p.add_argument("--feed", "-f", required=True, metavar="DIR", help="feed root folder (created if missing)")
    p.add_argument("--board", "-b", metavar="BOARD", help="which target board (when the release has several)")
    p.add_argument("--release-pubkey", action="append", default=None, metavar="PUB",
                   help="also verify the release signature with this release public key (repeatable)")


def flags(p: Any, any_role: str | None = "a key", json: str = "print the result as JSON") -> None:
    """The closing flags: --any-role (accept ``any_role`` of any role or without one) and --json."""
    if any_role is not None:
        p.add_argument("--any-role", action="store_true",
                       help=f"accept {any_role} of any role (or without one)")
    p.add_argument("--json", action="store_true", help=json)
