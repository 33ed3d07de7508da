"""`mpota keygen` and `mpota key show`: ECDSA P-256 key pairs with roles."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from host_tools.keys import ROLES, load_private_key, load_public_key, read_role

_ROLE_HELP = """\
Key roles (recorded as a first line '# mpota-role: ROLE' before the PEM block of the private key):
  release  signs release manifests (`mpota sign`); keep it offline
  rollout  signs channel documents (`mpota feed publish`, `mpota serve`); lives on the server
  both     the demo's single-key mode: accepted by both steps
`mpota sign` refuses a rollout key and `mpota feed publish` a release key, unless --any-role
is given (a key without a role line, e.g. made by openssl, also needs --any-role).
"""


def register(sub: Any) -> None:
    kg = sub.add_parser(
        "keygen", help="create an ECDSA P-256 key pair (PATH and PATH.pub)",
        description="Create an ECDSA P-256 key pair: PATH (private PEM, mode 0600, never overwritten) and "
                    "PATH.pub (public PEM). Prints the keyid (SHA-256 of the public point) and the public "
                    "key hex (65-byte uncompressed point) for device configs.",
        epilog=_ROLE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    kg.add_argument("path", metavar="PATH", help="private key file to create (PATH.pub is created too)")
    kg.add_argument("--role", choices=ROLES, default="release",
                    help="what the key may sign (default: release)")
    kg.add_argument("--json", action="store_true", help="print the result as JSON")
    kg.set_defaults(func=cmd_keygen)

    key = sub.add_parser("key", help="inspect keys", description="Inspect keys.")
    ksub = key.add_subparsers(dest="key_command", metavar="ACTION", required=True)
    show = ksub.add_parser(
        "show", help="print a key's role, keyid and public key hex",
        description="Print the role (private keys), keyid and public key hex (65-byte uncompressed point) "
                    "of a private or public PEM key file.",
        epilog=_ROLE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    show.add_argument("path", metavar="PATH", help="private key, public key (.pub) or 130-digit public hex")
    show.add_argument("--json", action="store_true", help="print the result as JSON")
    show.set_defaults(func=cmd_show)


def cmd_keygen(args: argparse.Namespace) -> int:
    from host_tools.keys import generate_key

    info = generate_key(args.path, args.role)
    if args.json:
        print(json.dumps({"path": str(info.path), "pub_path": str(info.pub_path), "role": info.role,
                          "keyid": info.keyid, "public_hex": info.public_hex}, indent=2))
        return 0
    print(f"private key: {info.path} (role {info.role}, mode 0600)")
    print(f"public key:  {info.pub_path}")
    print(f"keyid:       {info.keyid}")
    print(f"public hex:  {info.public_hex}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    path = Path(args.path)
    role = "-"
    kind = "public"
    if path.is_file() and b"PRIVATE KEY" in path.read_bytes()[:65536]:
        priv = load_private_key(path)
        pub = priv.public
        role = priv.role or "none (no '# mpota-role:' line)"
        kind = "private"
        del priv
    else:
        pub = load_public_key(args.path)
        if path.is_file():
            role = read_role(path.read_bytes()) or "-"
    if args.json:
        print(json.dumps({"path": args.path, "kind": kind, "role": role if kind == "private" else None,
                          "keyid": pub.keyid, "public_hex": pub.public_hex}, indent=2))
        return 0
    print(f"key:        {args.path} ({kind})")
    if kind == "private":
        print(f"role:       {role}")
    print(f"keyid:      {pub.keyid}")
    print(f"public hex: {pub.public_hex}")
    return 0
