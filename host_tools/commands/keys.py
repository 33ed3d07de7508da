"""`mpota keygen`, `mpota key show` (key pairs with roles) and `mpota keys init|rotate|revoke|sign|publish|
show` (the fleet's keys document in its feed)."""

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
  root     signs the fleet's keys documents (`mpota keys init|rotate|revoke`); offline
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
    register_keys(sub)


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


_KEYS_HELP = """\
The keys document (keys/<version>.json in the feed, signed by the root role) lists the keys and
threshold of each role: root, release, rollout. Boards walk its versions one at a time and take a
version only when a threshold of the root keys they trust signed it and, when the root keys
change, a threshold of the new root keys too. Each command checks that rule before it writes.
"""


def _keys_common(p: Any) -> None:
    p.add_argument("--feed", required=True, metavar="DIR", help="the feed folder (keys/ inside it)")
    p.add_argument("--key", "-k", action="append", required=True, metavar="PRIV",
                   help="a private key that signs the new version (a root key; repeat up to the "
                        "threshold; the first version of a fleet whose boards still hold bare key "
                        "lists also needs one of their release keys)")
    p.add_argument("--out", metavar="FILE",
                   help="write the signed document to FILE instead of the feed, below the threshold if "
                        "need be: other root holders add theirs with `mpota keys sign FILE`, then "
                        "`mpota keys publish FILE` puts it in the feed")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def register_keys(sub: Any) -> None:
    keys = sub.add_parser("keys", help="the fleet's keys document: init, rotate, revoke, sign, publish, show",
                          description="Manage the fleet's keys document.", epilog=_KEYS_HELP,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    ksub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    init = ksub.add_parser("init", help="write version 1 of the keys document",
                           description="Write keys/1.json: the fleet's root, release and rollout keys and "
                                       "thresholds, signed by a threshold of the root keys.",
                           epilog=_KEYS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    init.add_argument("--fleet", required=True, metavar="NAME", help="the fleet's name (boards refuse "
                                                                     "keys documents of another fleet)")
    for role in ("root", "release", "rollout"):
        init.add_argument(f"--{role}", action="append", required=True, metavar="PUB",
                          help=f"a {role} public key (PEM file or 130-digit hex); repeatable")
        init.add_argument(f"--{role}-threshold", type=int, default=1, metavar="N",
                          help=f"{role} signatures needed (default 1)")
    init.add_argument("--legacy-release", action="append", default=[], metavar="PUB",
                      help="a release key of boards deployed with bare key lists: version 1 must be "
                           "signed by one of them too, and is checked for it; repeatable")
    _keys_common(init)
    init.set_defaults(func=cmd_keys_init)

    rot = ksub.add_parser("rotate", help="write the next version with one role's keys changed",
                          description="Write the next keys version: add and/or remove keys of one role "
                                      "and/or change its threshold.",
                          epilog=_KEYS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    rot.add_argument("--role", required=True, choices=("root", "release", "rollout"))
    rot.add_argument("--add", action="append", default=[], metavar="PUB", help="a public key to add")
    rot.add_argument("--remove", action="append", default=[], metavar="PUB|KEYID", help="a key to drop")
    rot.add_argument("--threshold", type=int, metavar="N", help="the role's new threshold")
    _keys_common(rot)
    rot.set_defaults(func=cmd_keys_rotate)

    rev = ksub.add_parser("revoke", help="write the next version without a key (every role)",
                          description="Write the next keys version with KEY removed from every role that "
                                      "lists it (e.g. a leaked or departed engineer's key).",
                          epilog=_KEYS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    rev.add_argument("revoked", metavar="KEY", help="the key to revoke: public key file, hex or keyid")
    _keys_common(rev)
    rev.set_defaults(func=cmd_keys_revoke)

    sg = ksub.add_parser("sign", help="add root signatures to a keys document file (--out)",
                         description="Add the signatures of --key to a keys document FILE written with "
                                     "--out (a root holder on another machine). Each key must be a root key "
                                     "of the document or of the version before it (with --feed; a root "
                                     "change needs a threshold of both); with --feed, says whether boards "
                                     "would take it now.",
                         epilog=_KEYS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    sg.add_argument("file", metavar="FILE", help="the keys document file (changed in place)")
    sg.add_argument("--key", "-k", action="append", required=True, metavar="PRIV",
                    help="a root key; repeatable")
    _before_args(sg, required=False)
    sg.set_defaults(func=cmd_keys_sign)

    pb = ksub.add_parser("publish", help="put a keys document file into the feed as its next version",
                         description="Write keys document FILE (made with --out and `mpota keys sign`) into "
                                     "the feed as keys/<N>.json, once boards trusting version N-1 would take "
                                     "it.",
                         epilog=_KEYS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    pb.add_argument("file", metavar="FILE", help="the keys document file")
    _before_args(pb, required=True)
    pb.set_defaults(func=cmd_keys_publish)

    show = ksub.add_parser("show", help="print the feed's current keys document (or one file)",
                           description="Print a keys document: version, fleet, each role's threshold and "
                                       "keyids, and who signed it. With --feed, the chain from version 1 is "
                                       "checked as a board walks it.")
    show.add_argument("file", nargs="?", metavar="FILE", help="a keys document file (instead of --feed)")
    show.add_argument("--feed", metavar="DIR", help="the feed folder")
    show.add_argument("--version", type=int, metavar="N", help="this version (default: the newest)")
    show.add_argument("--json", action="store_true", help="print the result as JSON")
    show.set_defaults(func=cmd_keys_show)


def _before_args(p: Any, required: bool) -> None:
    p.add_argument("--feed", required=required, metavar="DIR",
                   help="the feed folder: its version before the document's names the root keys that must "
                        "sign it too" + ("" if required else " (needed for a key the document drops)"))
    p.add_argument("--legacy-release", action="append", default=[], metavar="PUB",
                   help="for version 1: a release key of boards deployed with bare key lists (see init)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _pub_hex(item: str) -> str:
    return load_public_key(item).public_hex


def _signers(paths: list[str]) -> list[Any]:
    return [load_private_key(p) for p in paths]


# One listing for every keys command: the document's roles and who signed it (JSON: the same
# fields), then `notes` (what is still missing, where it went).
def _listing(where: str, signed: Any, as_json: bool, head: str = "", notes: tuple[str, ...] = ()) -> int:
    from host_tools.dsse import parse_envelope

    doc = signed.doc
    keyids = [s.get("keyid", "") for s in parse_envelope(signed.data, where)["signatures"]]
    roles = {r: doc.role(r) for r in ("root", "release", "rollout")}
    if as_json:
        print(json.dumps({"path": where, "version": doc.version, "fleet": doc.fleet, "signed_by": keyids,
                          "roles": {n: {"threshold": r.threshold, "keyids": r.keyids(), "keys": r.keys}
                                    for n, r in roles.items()}, "notes": list(notes)}, indent=2))
        return 0
    print(f"{head}{where}: keys version {doc.version} of fleet {doc.fleet}")
    for name, r in roles.items():
        print(f"  {name:8} {r.threshold} of {len(r.keys)}: {', '.join(k[:16] for k in r.keyids())}")
    print(f"  signed by {', '.join(k[:16] or '(no keyid)' for k in keyids)}")
    for n in notes:
        print(n)
    return 0


def _legacy(args: argparse.Namespace, doc: Any) -> Any:
    from host_tools.keydoc import KeysDoc

    if not getattr(args, "legacy_release", None):
        return None
    return KeysDoc.legacy([_pub_hex(k) for k in args.legacy_release], doc.role("rollout").keys)


# The next version `doc` after `before`: into the feed, or with --out into a file for more
# signatures (what boards would still refuse is printed, not an error).
def _write(args: argparse.Namespace, doc: Any, before: Any, legacy: Any = None) -> int:
    from host_tools import keyring
    from host_tools.keydoc import keys_path

    if args.out is None:
        signed = keyring.add(args.feed, doc, _signers(args.key), legacy)
        return _listing(str(Path(args.feed) / keys_path(doc.version)), signed, args.json, "wrote ")
    if doc.version == 1:
        before = legacy
    signed = keyring.write_file(args.out, doc, _signers(args.key), before)
    return _listing(args.out, signed, args.json, "wrote ", _status(signed, before))


def _status(signed: Any, before: Any) -> tuple[str, ...]:
    from host_tools import keyring

    why = keyring.refusal(signed.data, signed.doc, before)
    if why is None:
        return ("  boards would take it now: mpota keys publish FILE --feed DIR",)
    return (f"  not yet: {why}", "  more root signatures: mpota keys sign FILE --key ROOT.pem")


def cmd_keys_init(args: argparse.Namespace) -> int:
    from host_tools import keyring
    from host_tools.keydoc import KeysDoc, RoleKeys
    from host_tools.manifest import ManifestError

    try:
        roles = {r: RoleKeys(getattr(args, f"{r}_threshold"), [_pub_hex(k) for k in getattr(args, r)])
                 for r in ("root", "release", "rollout")}
        doc = KeysDoc(args.fleet, 1, roles)
    except ManifestError as exc:
        raise keyring.KeyringError(f"keys v1: {exc}") from None
    return _write(args, doc, None, _legacy(args, doc))


def _next(args: argparse.Namespace, edit: Any) -> int:
    from host_tools import keyring
    from host_tools.manifest import ManifestError

    cur = keyring.current(args.feed)
    if cur is None:
        raise keyring.KeyringError(f"{args.feed} has no keys document yet (start with `mpota keys init`)")
    try:
        doc = cur.doc.next(edit(cur.doc))
    except ManifestError as exc:
        raise keyring.KeyringError(f"keys v{cur.doc.version + 1}: {exc}") from None
    return _write(args, doc, cur.doc)


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from host_tools import keyring

    if not args.add and not args.remove and args.threshold is None:
        raise keyring.KeyringError("nothing to change: give --add, --remove and/or --threshold")
    adds = [_pub_hex(k) for k in args.add]
    removes = [k if len(k) == 64 and all(c in "0123456789abcdefABCDEF" for c in k) else _pub_hex(k)
               for k in args.remove]
    return _next(args, lambda doc: {args.role: keyring.edit_role(doc.role(args.role), adds, removes,
                                                                 args.threshold)})


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    from host_tools import keyring
    from host_tools.keys import keyid_of

    k = args.revoked
    kid = k.lower() if len(k) == 64 and all(c in "0123456789abcdefABCDEF" for c in k) else keyid_of(
        bytes.fromhex(_pub_hex(k)))

    def edit(doc: Any) -> dict[str, Any]:
        out = {}
        for name in ("root", "release", "rollout"):
            role = doc.role(name)
            if kid in role.keyids():
                try:
                    out[name] = keyring.edit_role(role, remove=[kid])
                except keyring.KeyringError as exc:
                    raise keyring.KeyringError(f"cannot revoke {kid[:16]} from {name}: {exc}; add its "
                                               f"replacement first (mpota keys rotate --role {name} "
                                               "--add NEW.pub)") from None
        if not out:
            raise keyring.KeyringError(f"key {kid[:16]} is in no role of keys v{doc.version}")
        return out

    return _next(args, edit)


def cmd_keys_show(args: argparse.Namespace) -> int:
    from host_tools import keyring
    from host_tools.errors import UsageError
    from host_tools.keydoc import KeysDoc

    if (args.file is None) == (args.feed is None):
        raise UsageError("give a keys document FILE or --feed DIR")
    if args.file is not None:
        try:
            data = Path(args.file).read_bytes()
        except OSError as exc:
            raise keyring.KeyringError(f"cannot read {args.file}: {exc.strerror or exc}") from None
        doc = KeysDoc.from_envelope_unverified(data, args.file)
        where = args.file
    else:
        cur = keyring.current(args.feed)
        if cur is None:
            raise keyring.KeyringError(f"{args.feed} has no keys document")
        sel = cur if args.version is None else keyring.read_version(args.feed, args.version)
        doc, data, where = sel.doc, sel.data, f"{args.feed}/keys/{sel.doc.version}.json"
    return _listing(where, keyring.Signed(doc, data), args.json)


def cmd_keys_sign(args: argparse.Namespace) -> int:
    from host_tools import keyring
    from host_tools.keydoc import KeysDoc

    try:
        doc = KeysDoc.from_envelope_unverified(Path(args.file).read_bytes(), args.file)
    except OSError as exc:
        raise keyring.KeyringError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    before = keyring.before_of(args.feed, doc, _legacy(args, doc))
    signed = keyring.cosign(args.file, _signers(args.key), before)
    notes = _status(signed, before) if before is not None or doc.version == 1 else ()
    return _listing(args.file, signed, args.json, "signed ", notes)


def cmd_keys_publish(args: argparse.Namespace) -> int:
    from host_tools import keyring
    from host_tools.keydoc import KeysDoc, keys_path

    try:
        data = Path(args.file).read_bytes()
    except OSError as exc:
        raise keyring.KeyringError(f"cannot read {args.file}: {exc.strerror or exc}") from None
    doc = KeysDoc.from_envelope_unverified(data, args.file)
    signed = keyring.publish(args.feed, data, _legacy(args, doc))
    return _listing(str(Path(args.feed) / keys_path(doc.version)), signed, args.json, "wrote ")
