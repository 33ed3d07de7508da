"""`mpota feed publish|add|verify|refresh`: the static update feed."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from host_tools.commands._options import actions, flags, release_into_feed
from host_tools.errors import UsageError
from host_tools.manifest import DEFAULT_WINDOW_BITS, parse_expires


def register(sub: Any) -> None:
    fsub = actions(sub, "feed", "publish releases to a static feed and verify feeds",
                   "Publish releases to a static feed (plain files any web server or CDN serves) and verify "
                   "feeds.")

    pub = fsub.add_parser(
        "publish", help="copy a signed release into the feed and point a channel at it",
        description="Copy RELEASE_DIR to releases/<board>/<version>/ (image first, then manifest), then sign "
                    "and write channels/<board>/<channel>.json last (seq = previous + 1), every file through "
                    "a temp file and a rename. Refuses a different release already published under the same "
                    "version and a lower security_version than the channel's current release (unless "
                    "--allow-downgrade). Without rollout options the channel gets a full release: "
                    "state active, no groups, 100%.",
        epilog="The key must have role rollout or both (see `mpota keygen --help`) unless --any-role is "
               "given (the demo's single-key mode).")
    release_into_feed(pub)
    pub.add_argument("--channel", "-c", required=True, metavar="CHANNEL", help="e.g. stable, beta")
    pub.add_argument("--key", "-k", required=True, metavar="ROLLOUT_KEY", help="rollout private key (PEM)")
    pub.add_argument("--rollout-id", metavar="ID", help="rollout id (default <board>-<version>-<UTC time>)")
    pub.add_argument("--groups", metavar="G1,G2", help="device groups in the rollout, comma separated")
    pub.add_argument("--percentage", type=float, metavar="P",
                     help="share of the other devices, 0..100 (default 100, or 0 with --groups)")
    pub.add_argument("--state", choices=("active", "paused", "halted"), default="active")
    pub.add_argument("--window", metavar="HH:MM-HH:MM", help="maintenance window, UTC")
    pub.add_argument("--expires", metavar="WHEN", default=None,
                     help="channel document expiry: UTC time, a duration (30d, 12h) or never (default 7d; "
                          "keep it fresh with `mpota feed refresh` or `mpota serve`)")
    pub.add_argument("--allow-downgrade", action="store_true",
                     help="publish a lower security_version than the channel's current release (warns)")
    flags(pub, json="print the channel document written, as JSON")
    pub.set_defaults(func=cmd_publish)

    add = fsub.add_parser(
        "add", help="copy a signed release into the feed without touching any channel",
        description="Stage a release: copy RELEASE_DIR to releases/<board>/<version>/ (image first, then "
                    "manifest, each atomically). No channel document changes, so no device is offered it "
                    "until `mpota feed publish` or a rollout points a channel at it.")
    release_into_feed(add)
    add.add_argument("--deltas", type=int, default=0, metavar="N",
                     help="also make patches from the last N earlier releases of the board in the feed "
                          "(boards running one download the patch instead of the image); needs --key")
    add.add_argument("--key", "-k", metavar="RELEASE_KEY",
                     help="release private key (PEM) that re-signs the manifest with the patches listed")
    add.add_argument("--window-bits", type=int, default=DEFAULT_WINDOW_BITS, metavar="N",
                     help=f"zlib window of the patches, 2**N bytes (default {DEFAULT_WINDOW_BITS})")
    flags(add, any_role="a --key")
    add.set_defaults(func=cmd_add)

    ver = fsub.add_parser(
        "verify", help="check every channel document and release in a feed",
        description="Verify every channels/<board>/<channel>.json (signature, manifest pin, expiry) and "
                    "every releases/<board>/<version>/ (signature, hashes, image). "
                    "Exit 0 only when all hold.")
    ver.add_argument("feed", metavar="DIR")
    ver.add_argument("--pubkey", "-p", action="append", default=[], metavar="PUB",
                     help="a public key accepted for both roles (PEM file or 130-digit hex); repeatable")
    ver.add_argument("--release-pubkey", action="append", default=None, metavar="PUB",
                     help="a release-role public key; repeatable")
    ver.add_argument("--rollout-pubkey", action="append", default=None, metavar="PUB",
                     help="a rollout-role public key; repeatable")
    ver.add_argument("--json", action="store_true", help="print the report as JSON (exit status unchanged)")
    ver.set_defaults(func=cmd_verify)

    ref = fsub.add_parser(
        "refresh", help="re-sign channel documents before they expire (run it from cron)",
        description="Re-sign every channels/<board>/<channel>.json that expires within --within (default: "
                    "half of --expires): the same content with seq + 1 and a new expiry. "
                    "Channel documents expire so that a mirror or a man in the middle cannot keep serving "
                    "an old one (a freeze attack): a board whose clock is set refuses an expired one. "
                    "Only documents that verify with the key are re-signed.",
        epilog="Example (hourly): 0 * * * * mpota feed refresh --feed /srv/feed --key rollout.pem")
    ref.add_argument("--feed", "-f", required=True, metavar="DIR", help="feed root folder")
    ref.add_argument("--key", "-k", required=True, metavar="ROLLOUT_KEY", help="rollout private key (PEM)")
    ref.add_argument("--expires", default=None, metavar="DURATION",
                     help="new validity from now: 7d, 12h, 30m (default 7d)")
    ref.add_argument("--within", metavar="DURATION",
                     help="re-sign documents that expire sooner than this (default: half of --expires)")
    ref.add_argument("--add-expiry", action="store_true",
                     help="also give documents published without expiry (--expires never) one")
    ref.add_argument("--previous-key", action="append", default=[], metavar="PUB",
                     help="after a rollout key rotation: a public key this feed's channels were signed "
                          "with before; documents it signed are re-signed with --key at once; repeatable")
    ref.add_argument("--any-role", action="store_true", help="accept a key of any role (or without one)")
    ref.set_defaults(func=cmd_refresh)


def _window(text: str | None) -> dict[str, str] | None:
    if text is None:
        return None
    m = re.fullmatch(r"\s*([0-2][0-9]:[0-5][0-9])\s*-\s*([0-2][0-9]:[0-5][0-9])\s*", text)
    if not m or int(m.group(1)[:2]) > 23 or int(m.group(2)[:2]) > 23:
        raise UsageError(f"--window {text!r} must be HH:MM-HH:MM (UTC), e.g. 01:00-05:00")
    return {"start": m.group(1), "end": m.group(2)}


def cmd_publish(args: argparse.Namespace) -> int:
    from host_tools.feed import DEFAULT_CHANNEL_EXPIRES, default_rollout, publish_release
    from host_tools.keys import load_private_key, load_public_keys
    from host_tools.release import load_release

    key = load_private_key(args.key, None if args.any_role else "rollout")
    release_keys = load_public_keys(args.release_pubkey) if args.release_pubkey else None
    rollout: dict[str, Any] | None = None
    if any(v is not None for v in (args.rollout_id, args.groups, args.percentage, args.window)) \
            or args.state != "active":
        m = load_release(args.release, release_keys)[0].manifest
        board = args.board or m.target_hardware[0]
        groups = [g.strip() for g in args.groups.split(",") if g.strip()] if args.groups else []
        pct = args.percentage if args.percentage is not None else (0.0 if groups else 100.0)
        rollout = default_rollout(board, m.version)
        if args.rollout_id:
            rollout["id"] = args.rollout_id
        rollout["state"] = args.state
        rollout["groups"] = groups
        rollout["percentage"] = pct
        rollout["window"] = _window(args.window)
    doc = publish_release(
        args.release, args.feed, args.channel, key, rollout=rollout,
        expires=parse_expires(args.expires or DEFAULT_CHANNEL_EXPIRES),
        allow_downgrade=args.allow_downgrade, board=args.board, release_keys=release_keys,
        any_role=args.any_role, warn=lambda msg: print(f"mpota: {msg}", file=sys.stderr),
    )
    if args.json:
        print(json.dumps({"path": f"{args.feed}/{doc.path}", "channel": doc.to_dict()}, indent=2))
        return 0
    ro = doc.rollout
    print(f"published {doc.board} {doc.release.version} -> {args.feed}/{doc.path} (seq {doc.seq})")
    shown = ",".join(ro.groups) or "-"
    print(f"rollout {ro.id}: {ro.state}, groups {shown}, {ro.percentage:g}%"
          + (f", window {ro.window['start']}-{ro.window['end']} UTC" if ro.window else ""))
    print(f"expires {doc.expires}" if doc.expires else
          "expires never: a stale copy of this channel stays valid forever")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from host_tools.feed import add_release
    from host_tools.keys import load_private_key, load_public_keys

    release_keys = load_public_keys(args.release_pubkey) if args.release_pubkey else None
    if args.deltas and not args.key:
        raise UsageError("--deltas re-signs the manifest: give the release key with --key")
    key = load_private_key(args.key, None if args.any_role else "release") if args.key else None
    rel = add_release(args.release, args.feed, board=args.board, release_keys=release_keys,
                      deltas=args.deltas, release_key=key, window_bits=args.window_bits,
                      any_role=args.any_role)
    from host_tools.release import load_release

    img = load_release(Path(args.feed) / Path(rel).parent, None)[0].manifest.image
    deltas = img.deltas if img is not None else []
    if args.json:
        print(json.dumps({"added": f"{args.feed}/{rel}", "channel_changed": False,
                          "deltas": [d.to_dict() for d in deltas]}, indent=2))
        return 0
    print(f"added {args.feed}/{rel} (no channel changed)")
    for d in deltas:
        assert img is not None
        print(f"patch {d.url}: {d.size} bytes ({d.encoding}, {d.size / img.size:.3f} of the image)")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from host_tools.feed import FeedError, verify_feed
    from host_tools.keys import load_public_keys

    if not args.pubkey and (args.release_pubkey is None or args.rollout_pubkey is None):
        raise UsageError("give --pubkey, or both --release-pubkey and --rollout-pubkey")
    rep = verify_feed(
        args.feed, load_public_keys(args.pubkey),
        release_keys=load_public_keys(args.release_pubkey) if args.release_pubkey else None,
        rollout_keys=load_public_keys(args.rollout_pubkey) if args.rollout_pubkey else None,
    )
    if args.json:
        print(json.dumps({"feed": str(args.feed), "ok": rep.ok, "checked": rep.checked,
                          "warnings": rep.warnings, "problems": rep.problems,
                          "channels": [{"board": c.board, "channel": c.channel, "seq": c.seq,
                                        "version": c.release.version} for c in rep.channels],
                          "releases": [{"board": b, "version": v} for b, v in rep.releases]}, indent=2))
        return 0 if rep.ok else 1
    for line in rep.checked:
        print(f"ok: {line}")
    for w in rep.warnings:
        print(f"warning: {w}")
    for p in rep.problems:
        print(f"problem: {p}")
    if not rep.ok:
        raise FeedError(f"feed {args.feed}: {len(rep.problems)} problem(s), first: {rep.problems[0]}")
    print(f"feed {args.feed}: {len(rep.channels)} channel(s), {len(rep.releases)} release(s) verified")
    return 0


def cmd_refresh(args: argparse.Namespace) -> int:
    from host_tools.feed import DEFAULT_CHANNEL_EXPIRES, expires_seconds, refresh_channels
    from host_tools.keys import load_private_key, load_public_key

    key = load_private_key(args.key, None if args.any_role else "rollout")
    valid = expires_seconds(args.expires or DEFAULT_CHANNEL_EXPIRES)
    within = expires_seconds(args.within) if args.within else None
    if within is not None and within >= valid:
        raise UsageError(f"--within {args.within} must be shorter than --expires (else every run re-signs)")
    previous = [load_public_key(p) for p in args.previous_key]
    done = refresh_channels(args.feed, key, valid, within_s=within, add_expiry=args.add_expiry,
                            any_role=args.any_role, previous=previous)
    for r in done:
        print(f"refreshed {args.feed}/{r.path}: seq {r.seq}, expires {r.expires or 'never'}"
              + (f" (was {r.was})" if r.was else " (had no expiry)"))
    if not done:
        print(f"feed {args.feed}: every channel document is fresh")
    return 0
