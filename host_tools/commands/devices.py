"""`mpota devices`: the inventory kept by a running `mpota serve`."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def add_server_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--server", metavar="URL",
                   help="server base URL (default $MPOTA_SERVER or http://127.0.0.1:8080)")
    p.add_argument("--fleet-secret", metavar="PATH",
                   help="fleet secret, to derive the operator token (or $MPOTA_FLEET_SECRET)")
    p.add_argument("--token", metavar="TOKEN", help="operator token (or $MPOTA_OPERATOR_TOKEN)")


def register(sub: Any) -> None:
    p = sub.add_parser("devices", help="list the device inventory of a running server",
                       description="Per device: last seen, version, slot, group, last event, health.")
    p.add_argument("device_id", nargs="?", metavar="DEVICE_ID", help="show one device and its recent events")
    p.add_argument("--board", metavar="BOARD", help="only this board")
    p.add_argument("--json", action="store_true", help="print JSON")
    add_server_args(p)
    p.set_defaults(func=cmd_devices)


def _ago(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    s = max(0, int(now - ts))
    return f"{s}s ago" if s < 120 else f"{s // 60}m ago" if s < 7200 else f"{s // 3600}h ago"


def cmd_devices(args: argparse.Namespace) -> int:
    from host_tools.server.client import ServerClient, resolve_token

    client = ServerClient(args.server, resolve_token(args.token, args.fleet_secret))
    if args.device_id:
        device = client.call("GET", f"/v1/devices/{args.device_id}")
        if args.json:
            print(json.dumps(device, indent=2))
            return 0
        now = time.time()
        for key in ("device_id", "board", "group", "claimed_group", "channel", "version", "slot", "health",
                    "last_event", "rollout", "target", "free_mem", "last_seq"):
            print(f"{key:>11}: {device.get(key) if device.get(key) is not None else '-'}")
        print(f"{'last seen':>11}: {_ago(device.get('last_seen'), now)}")
        for e in device.get("events", []):
            detail = " ".join(f"{k}={v}" for k, v in (e.get("detail") or {}).items())
            print(f"  {_ago(e['received'], now):>8}  #{e['seq']:<5} {e['event']:<13} {e.get('target') or ''} "
                  f"{detail}".rstrip())
        return 0
    path = "/v1/devices" + (f"?board={args.board}" if args.board else "")
    devices = client.call("GET", path)["devices"]
    if args.json:
        print(json.dumps(devices, indent=2))
        return 0
    now = time.time()
    cols = ("device", "group", "version", "slot", "last event", "health", "last seen")
    rows = [(d["device_id"], _group(d), d.get("version") or "-", d.get("slot") or "-",
             d.get("last_event") or "-", d.get("health") or "-", _ago(d.get("last_seen"), now))
            for d in devices]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    print(f"{len(rows)} device(s)")
    return 0


def _group(device: dict[str, Any]) -> str:
    """The registered group; what the device claims in its reports only when it differs."""
    group, claimed = device.get("group"), device.get("claimed_group")
    text = group or "-"
    if claimed is not None and claimed != group:
        text += f" (claims {claimed})"
    return text
