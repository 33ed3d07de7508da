"""The `mpota` command: parses arguments, calls the core, maps typed errors to one-line messages.

Each command group lives in host_tools/commands/<name>.py and exposes
``register(subparsers)``; every leaf parser sets ``func=handler(args) -> int``.
Core modules never import argparse or this module.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from host_tools import __version__
from host_tools.errors import MpotaError

# Command modules, in the order --help lists them.
COMMAND_MODULES = (
    "keys",        # keygen, key show
    "image",       # image info, image extract-app
    "release",     # sign, verify
    "inspect",     # inspect (decode a signed document)
    "feed",        # feed publish, feed verify
    "partitions",  # partitions build, partitions show
    "flash",       # flash
    "deploy",      # deploy
    "fleet",       # fleet secret, fleet token
    "serve",       # serve
    "db",          # db migrate, db check
    "rollout",     # rollout start|status|pause|resume|abort|rollback
    "devices",     # devices
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpota",
        description="Resilient over-the-air firmware updates for ESP32 boards running MicroPython.",
    )
    parser.add_argument("--version", action="version", version=f"mpota {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:  # a missing command module is a broken install: let it raise
        importlib.import_module(f"host_tools.commands.{name}").register(sub)
    return parser


def _leaf_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)parser of the command that was given, e.g. `mpota feed add`'s."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        name = getattr(args, subs[0].dest, None) if subs else None
        if not subs or name not in subs[0].choices:
            return parser
        parser = subs[0].choices[name]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # say it with the subcommand's usage, not the top-level one
        _leaf_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args) or 0)
    except MpotaError as exc:
        print(f"mpota: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("mpota: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 1


if __name__ == "__main__":
    sys.exit(main())
