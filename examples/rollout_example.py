"""Staged rollout example on the mpota server API, runnable anywhere (temp folder, loopback only).

    .venv/bin/python -m examples.rollout_example   (from the repository root)

1. a feed with firmware 1.0.0 (everyone runs it) and 1.1.0 (good) and 1.2.0 (bad on pilot boards);
2. `mpota serve` in a thread, a simulated fleet of 24 devices in groups canary/internal/pilot/general;
3. roll 1.1.0 out: canary -> internal -> pilot -> general 50% -> 100%, the server advancing by itself;
4. roll 1.2.0 out: pilot devices roll back, the pilot gate trips, the rollout pauses before general;
5. fleet rollback: 1.0.0's image republished as 1.2.1 and rolled out to everyone.
Devices here are plain HTTP clients that read the signed channel document like a board does.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from host_tools.channel import ChannelDoc
from host_tools.commands.rollout import print_status
from host_tools.fleet import create_secret
from host_tools.keys import generate_key, load_public_key
from host_tools.server.app import ServerConfig, make_publisher
from host_tools.server.auth import operator_token
from host_tools.server.bucket import is_eligible
from host_tools.server.client import ServerClient
from host_tools.server.rollback import prepare_rollback
from sim.serverkit import HttpClient, ReportingDevice, ServerThread, publish_test_release

BOARD = "esp32-generic-4mb"
PLAN = {"soak": "0.3s", "min_finished": 1, "in_progress_timeout": "1m",
        "stages": [{"name": "canary"}, {"name": "internal"}, {"name": "pilot", "min_finished": 2},
                   {"name": "general", "batch_size_percentage": 50}]}


def channel(url: str, pub: object) -> ChannelDoc:
    c = HttpClient(url)
    status, _, data = c.request("GET", f"/channels/{BOARD}/stable.json")
    c.close()
    return ChannelDoc.from_envelope_bytes(data, [pub])


def run_fleet(api: ServerClient, url: str, pub: object, fleet: list[ReportingDevice], rid: str, version: str,
              bad_groups: tuple[str, ...] = ()) -> dict[str, object]:
    """Every device acts on the channel document it reads; returns the final rollout status."""
    tried: set[str] = set()
    for _ in range(400):
        doc = channel(url, pub)
        ro = doc.rollout.to_dict()
        if ro["state"] == "active" and doc.release.version == version:
            for d in fleet:
                if d.device_id not in tried and d.version != version \
                        and is_eligible(ro, d.device_id, d.group):
                    tried.add(d.device_id)
                    d.update(rid, version, "rolled_back" if d.group in bad_groups else "confirmed")
        status = api.call("GET", f"/v1/rollouts/{rid}")
        if status["rollout"]["state"] != "active":
            return dict(status)
        time.sleep(0.05)
    raise SystemExit("the rollout did not finish")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        key = root / "demo.pem"
        generate_key(key, "both")  # demo single-key mode: signs releases and channel documents
        secret = create_secret(root / "fleet.secret")
        feed = root / "feed"
        publish_test_release(feed, root / "work", key, "1.0.0", BOARD, channel="stable", security_version=1)
        publish_test_release(feed, root / "work", key, "1.1.0", BOARD, security_version=1)
        publish_test_release(feed, root / "work", key, "1.2.0", BOARD, security_version=1)
        pub = load_public_key(str(key) + ".pub")
        config = ServerConfig(feed_dir=feed, db_url=f"sqlite:///{root / 'mpota.db'}", fleet_secret=secret,
                              tick_s=0.1)
        with ServerThread(config, make_publisher(feed, str(key))) as srv:
            print(f"server on {srv.url} (status page at {srv.url}/)")
            api = ServerClient(srv.url, operator_token(secret))
            groups = ["canary"] * 2 + ["internal"] * 2 + ["pilot"] * 4 + ["general"] * 16
            fleet = [ReportingDevice(srv.url, secret, f"esp32-{i:03d}", g) for i, g in enumerate(groups)]
            for d in fleet:  # registered with the operator token: the group rollouts count it in
                d.register(secret)
                d.report("heartbeat", health="OK")

            print("\n== rollout of 1.1.0 ==")
            api.call("POST", "/v1/rollouts",
                     {"board": BOARD, "version": "1.1.0", "plan": PLAN, "id": "r-1.1.0"})
            print_status(run_fleet(api, srv.url, pub, fleet, "r-1.1.0", "1.1.0"), history=True)

            print("\n== rollout of 1.2.0 (bad on pilot boards) ==")
            api.call("POST", "/v1/rollouts",
                     {"board": BOARD, "version": "1.2.0", "plan": PLAN, "id": "r-1.2.0"})
            print_status(run_fleet(api, srv.url, pub, fleet, "r-1.2.0", "1.2.0", bad_groups=("pilot",)))

            print("\n== fleet rollback: 1.1.0's image republished as 1.2.1 ==")
            rb = prepare_rollback(feed, BOARD, "stable", "1.1.0", "1.2.1", key, root / "rollback",
                                  any_role=True)
            print(f"signed {rb.version} (image of {rb.from_version}, security_version {rb.security_version})")
            api.call("POST", "/v1/rollouts/r-1.2.0/abort", {"reason": "rolled back"})
            plan = {"soak": 0, "stages": [{"name": "rollback", "groups": [], "percentages": [100]}]}
            api.call("POST", "/v1/rollouts",
                     {"board": BOARD, "version": "1.2.1", "plan": plan, "id": "r-1.2.1"})
            print_status(run_fleet(api, srv.url, pub, fleet, "r-1.2.1", "1.2.1"))
            versions = sorted({d.version for d in fleet})
            print(f"\nfleet now runs: {', '.join(versions)}")
            for d in fleet:
                d.close()


if __name__ == "__main__":
    main()
