"""`mpota inspect`: decode a signed document (release manifest or channel document) for a human."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from host_tools.errors import MpotaError, UsageError

MAX_DOC = 64 * 1024  # manifests and channel documents are a few KB (the device caps them lower)


class InspectError(MpotaError):
    pass


def register(sub: Any) -> None:
    p = sub.add_parser(
        "inspect", help="decode a signed manifest or channel document and check its signatures",
        description="Decode a DSSE envelope (a release's manifest.json, a channel document, or a release "
                    "folder) and print its payload type, its signatures with their status, a summary and "
                    "the payload. With --pubkey each signature is checked against the given keys; exit 1 "
                    "when keys are given and no signature verifies. For app images use `mpota image info`.")
    p.add_argument("path", metavar="FILE|RELEASE_DIR")
    p.add_argument("--pubkey", "-p", action="append", default=[], metavar="PUB",
                   help="public key to check the signatures with (PEM or 130-digit hex); repeatable")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_inspect)


def _read(path: Path) -> bytes:
    if path.is_dir():
        path = path / "manifest.json"
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_DOC + 1)
    except OSError as exc:
        raise InspectError(f"cannot read {path}: {exc.strerror or exc}") from None
    if data[:1] == b"\xe9":
        raise UsageError(f"{path} is an ESP32 image, not a signed document: use `mpota image info`")
    if len(data) > MAX_DOC:
        raise InspectError(f"{path} is larger than {MAX_DOC} bytes: not a manifest or channel document")
    return data


def inspect_document(data: bytes, keys: list[Any], source: str) -> dict[str, Any]:
    from host_tools.dsse import (
        CHANNEL_PAYLOAD_TYPE,
        RELEASE_PAYLOAD_TYPE,
        DsseError,
        envelope_payload,
        parse_envelope,
        verify_envelope,
    )

    try:
        env = parse_envelope(data, source)
        payload = envelope_payload(env, source)
    except DsseError as exc:
        raise InspectError(str(exc)) from None
    ptype = env["payloadType"]
    kind = {RELEASE_PAYLOAD_TYPE: "release manifest", CHANNEL_PAYLOAD_TYPE: "channel document"}.get(
        ptype, "unknown payload type")
    sigs = []
    for entry in env["signatures"]:
        one = dict(env, signatures=[entry])
        status, signer = ("not checked (give --pubkey)", None) if not keys else ("does not verify", None)
        for k in keys:
            try:
                verify_envelope(one, ptype, [k], source=source)
            except DsseError:
                continue
            status, signer = "valid", getattr(k, "source", "") or k.keyid
            break
        sigs.append({"keyid": entry.get("keyid", ""), "status": status, "signer": signer})
    try:
        doc = json.loads(payload)
    except ValueError:
        doc = None
    return {"source": source, "payload_type": ptype, "kind": kind, "bytes": len(data), "signatures": sigs,
            "verified": any(s["status"] == "valid" for s in sigs), "payload": doc,
            "summary": _summary(kind, doc) if isinstance(doc, dict) else []}


def _summary(kind: str, d: dict[str, Any]) -> list[str]:
    if kind == "release manifest":
        img = d.get("image") or {}
        return [f"version {d.get('version')} (security_version {d.get('security_version')}) for "
                f"{', '.join(d.get('target_hardware') or [])} ({d.get('chip')})",
                f"image {img.get('size')} bytes {img.get('hash')}, {img.get('encoding')} on the wire"
                + (f" ({img.get('transfer_size')} bytes)" if img.get("encoding") == "zlib" else ""),
                f"expires {d.get('expires') or 'never'}"]
    if kind == "channel document":
        rel = d.get("release") or {}
        ro = d.get("rollout") or {}
        return [f"{d.get('board')}/{d.get('channel')} seq {d.get('seq')}: release {rel.get('version')}",
                f"rollout {ro.get('id')}: {ro.get('state')}, "
                f"groups {', '.join(ro.get('groups') or []) or '-'}, {ro.get('percentage')}%",
                f"expires {d.get('expires') or 'never'}"]
    return []


def cmd_inspect(args: argparse.Namespace) -> int:
    from host_tools.keys import load_public_keys

    keys = load_public_keys(args.pubkey) if args.pubkey else []
    path = Path(args.path)
    info = inspect_document(_read(path), keys, str(path))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"{info['source']}: {info['kind']} ({info['payload_type']}), {info['bytes']} bytes")
        for s in info["signatures"]:
            by = f" by {s['signer']}" if s["signer"] else ""
            print(f"signature {s['keyid'][:16] or '(no keyid)'}: {s['status']}{by}")
        for line in info["summary"]:
            print(line)
        payload = info["payload"]
        print(json.dumps(payload, indent=2) if payload is not None else "(payload is not JSON)")
    return 1 if keys and not info["verified"] else 0
