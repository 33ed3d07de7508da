"""The operator CLI through the real entry point against a running server: fleet, rollout, devices,
rollback; bad inputs give one line and a non-zero exit."""

from __future__ import annotations

import json
import stat
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import cli

from host_tools.channel import ChannelDoc
from host_tools.cli import main
from host_tools.esp_image import parse_image
from host_tools.fleet import create_secret, device_token, load_secret
from host_tools.keys import load_public_key
from host_tools.server.app import ServerConfig, make_publisher
from host_tools.server.auth import operator_token
from sim.serverkit import ReportingDevice, ServerThread, rollout_feed

REPO = Path(__file__).resolve().parent.parent
BOARD = "esp32-generic-4mb"


@pytest.fixture()
def env(tmp_path: Path) -> Iterator[tuple[Path, ServerThread, list[str]]]:
    feed, key = rollout_feed(tmp_path, BOARD, {"security_version": 2}, {"security_version": 3})
    create_secret(tmp_path / "fleet.secret")
    config = ServerConfig(
        feed_dir=feed,
        db_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        fleet_secret=load_secret(tmp_path / "fleet.secret"),
        tick_s=0.05,
    )
    with ServerThread(config, make_publisher(feed, str(key))) as srv:
        yield tmp_path, srv, ["--server", srv.url, "--fleet-secret", str(tmp_path / "fleet.secret")]


def test_fleet_secret_and_tokens(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s"
    code, out, _ = cli(capsys, "fleet", "secret", str(path))
    assert code == 0 and "wrote fleet secret" in out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    code, _, err = cli(capsys, "fleet", "secret", str(path))
    assert code == 1 and err.startswith("mpota: error: ") and "already exists" in err and err.count("\n") == 1
    code, out, _ = cli(capsys, "fleet", "token", "dev-1", "--secret", str(path))
    assert code == 0 and out.strip() == device_token(load_secret(path), "dev-1")
    code, out, _ = cli(capsys, "fleet", "token", "--operator", "--secret", str(path))
    assert out.strip() == operator_token(load_secret(path))
    assert cli(capsys, "fleet", "token", "bad id!", "--secret", str(path))[0] == 1
    assert cli(capsys, "fleet", "token", "--secret", str(path))[0] == 2
    assert cli(capsys, "fleet", "token", "dev-1", "--secret", str(tmp_path / "missing"))[0] == 1


def test_rollout_commands(
    env: tuple[Path, ServerThread, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, srv, conn = env
    secret = load_secret(root / "fleet.secret")
    devs = [ReportingDevice(srv.url, secret, f"{g}-1", g) for g in ("canary", "internal", "pilot", "general")]
    for d in devs:
        assert d.register(secret) == 200
        assert d.report("heartbeat", health="OK") == 200
    code, _, err = cli(capsys, "rollout", "status", *conn)
    assert code == 2 and "no rollouts" in err
    code, out, err = cli(capsys, "rollout", "start", "--board", BOARD, "--version", "1.1.0", "--id", "r-cli",
                         "--plan", str(REPO / "examples" / "rollout.toml"), "--soak", "1h", *conn)
    assert code == 0, err
    assert "rollout r-cli: 1.1.0 on esp32-generic-4mb/stable: ACTIVE" in out
    assert "step 1/7: canary" in out and "waiting for: canary: 0 of 1 devices finished" in out
    header = next(line for line in out.splitlines() if line.startswith("stage"))
    assert header.split()[:3] == ["stage", "targeted", "started"] and header.endswith("gate")
    devs[0].update("r-cli", "1.1.0", "rolled_back")
    code, out, _ = cli(capsys, "rollout", "status", "--json", *conn)
    st = json.loads(out)
    assert st["rollout"]["id"] == "r-cli" and st["stages"][0]["counts"]["rolled_back"] == 1
    import time

    for _ in range(100):
        code, out, _ = cli(capsys, "rollout", "status", "r-cli", "--history", *conn)
        if "PAUSED" in out:
            break
        time.sleep(0.05)
    assert "reason: canary: failure rate 100.0% > 20%" in out and "auto-pause" in out
    canary = next(line for line in out.splitlines() if line.startswith("canary"))
    assert canary.split()[1:8] == ["1", "1", "0", "0", "0", "1", "0"] and canary.endswith("fail")
    code, out, _ = cli(capsys, "rollout", "resume", *conn)
    assert code == 0 and "ACTIVE" in out
    code, out, _ = cli(capsys, "rollout", "pause", "r-cli", "--reason", "lunch", *conn)
    assert code == 0 and "reason: lunch" in out
    code, out, _ = cli(capsys, "rollout", "list", *conn)
    assert "r-cli" in out and "paused" in out
    code, out, _ = cli(capsys, "rollout", "abort", "--json", *conn)
    assert json.loads(out)["rollout"]["state"] == "aborted"
    code, _, err = cli(capsys, "rollout", "abort", "r-cli", *conn)
    assert code == 1 and "already aborted" in err
    # inventory
    code, out, _ = cli(capsys, "devices", *conn)
    assert code == 0 and "4 device(s)" in out and "canary-1" in out and "rolled_back" in out
    code, out, _ = cli(capsys, "devices", "--json", *conn)
    assert {d["device_id"] for d in json.loads(out)} == {"canary-1", "internal-1", "pilot-1", "general-1"}
    code, out, _ = cli(capsys, "devices", "canary-1", *conn)
    assert "health: failed:wifi" in out and "health_failed" in out
    for d in devs:
        d.close()


def test_cli_errors_are_one_line(
    env: tuple[Path, ServerThread, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, srv, conn = env
    cases = [
        (["rollout", "status", "--server", "http://127.0.0.1:9", "--token", "x"], "cannot reach the server"),
        (["rollout", "list", "--server", srv.url, "--token", "bad"], "server said 401"),
        (["rollout", "list", "--server", srv.url], "no operator credentials"),
        (
            ["rollout", "start", "--board", BOARD, "--version", "1.1.0", "--soak", "soon", *conn],
            "not a duration",
        ),
        (
            ["rollout", "start", "--board", BOARD, "--version", "1.1.0", "--plan",
             str(tmp_path / "none.toml"), *conn],
            "cannot read plan",
        ),
        (["rollout", "start", "--board", BOARD, "--version", "7.7.7", *conn], "not in the feed"),
        (["rollout", "start", "--board", BOARD, "--version", "1.1.0", "--window", "1-2", *conn], "window"),
        (["rollout", "pause", "nope", *conn], "server said 404"),
        (["devices", "ghost", *conn], "server said 404"),
        (["serve", "--feed", str(tmp_path / "no-feed"), "--port", "0"], "does not exist"),
        (["serve", "--feed", str(root / "feed"), "--db", "postgresql://x/y", "--port", "0"], "PostgreSQL"),
        (
            ["serve", "--feed", str(root / "feed"), "--db", f"sqlite:///{root / 'feed' / 'x.db'}"],
            "inside the feed",
        ),
        (["serve", "--feed", str(root / "feed"), "--rollout-key", str(root / "fleet.secret")], "PEM"),
    ]
    for argv, message in cases:
        code, out, err = cli(capsys, *argv)
        assert code != 0, argv
        assert err.startswith("mpota: error: ") and message in err and err.count("\n") == 1, (argv, err)
        assert "Traceback" not in err


def test_fleet_rollback(
    env: tuple[Path, ServerThread, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    root, srv, conn = env
    feed = root / "feed"
    canary = ReportingDevice(srv.url, load_secret(root / "fleet.secret"), "canary-9", "canary")
    assert canary.register(load_secret(root / "fleet.secret")) == 200
    assert canary.report("heartbeat") == 200  # holds the rollout at its first stage
    canary.close()
    code, _, err = cli(
        capsys, "rollout", "start", "--board", BOARD, "--version", "1.1.0", "--soak", "1h", *conn
    )
    assert code == 0, err
    code, out, err = cli(capsys, "rollout", "rollback", "--feed", str(feed), "--board", BOARD, "--to",
                         "1.0.0", "--version", "1.1.1", "--release-key", str(root / "rollout.pem"),
                         "--any-role", *conn)
    assert code == 0, err
    assert "signed rollback release 1.1.1 (image of 1.0.0, security_version 3)" in out
    assert "aborted rollout" in out and "step 1/1: rollback" in out, out
    doc = ChannelDoc.from_envelope_bytes(
        (feed / "channels" / BOARD / "stable.json").read_bytes(),
        [load_public_key(str(root / "rollout.pem") + ".pub")],
    )
    assert (
        doc.release.version == "1.1.1" and doc.rollout.percentage == 100.0 and doc.rollout.state == "active"
    )
    # the new release carries the old firmware with the new version stamped in, and it verifies
    assert (
        main(["verify", str(feed / "releases" / BOARD / "1.1.1"), "--pubkey", f"{root / 'rollout.pem'}.pub"])
        == 0
    )
    rel = feed / "releases" / BOARD
    manifest = json.loads(
        __import__("base64").b64decode(json.loads((rel / "1.1.1" / "manifest.json").read_text())["payload"])
    )
    assert manifest["security_version"] == 3 and manifest["version"] == "1.1.1"
    new = rel / "1.1.1" / manifest["image"]["url"]
    raw = zlib.decompress(new.read_bytes()) if manifest["image"]["encoding"] == "zlib" else new.read_bytes()
    rep = parse_image(raw)
    assert rep.ok and rep.app_desc is not None and rep.app_desc.version == "1.1.1"
    assert rep.app_desc.secure_version == 3 and rep.app_desc.project_name == "mpota-test"
    tmp = root / "check.bin"
    tmp.write_bytes(raw)
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "esptool"), "--chip", "esp32", "image-info", str(tmp)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and "1.1.1" in proc.stdout, proc.stdout + proc.stderr
    # the same version twice is refused, nothing changes
    code, _, err = cli(capsys, "rollout", "rollback", "--feed", str(feed), "--board", BOARD, "--to", "1.0.0",
                       "--version", "1.1.1", "--release-key", str(root / "rollout.pem"), "--any-role", *conn)
    assert code == 1 and "already has a release 1.1.1" in err


def test_rollback_keeps_the_plan_flags_without_staged(
    env: tuple[Path, ServerThread, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Seen (#14, 3): `rollout rollback` dropped --window, --failure-rate, --min-finished and
    --timeout unless --staged was given, so devices installed outside the maintenance window."""
    root, srv, conn = env
    secret = load_secret(root / "fleet.secret")
    for i in range(2):
        d = ReportingDevice(srv.url, secret, f"general-{i}", "general")
        assert d.register(secret) == 200 and d.report("heartbeat") == 200
        d.close()
    code, out, err = cli(
        capsys, "rollout", "rollback", "--feed", str(root / "feed"), "--board", BOARD, "--to", "1.0.0",
        "--version", "1.1.1", "--release-key", str(root / "rollout.pem"), "--any-role",
        "--window", "01:00-05:00", "--failure-rate", "5", "--min-finished", "2", "--timeout", "10m", *conn,
    )
    assert code == 0, err
    code, out, _ = cli(capsys, "rollout", "status", "--json", *conn)
    st = json.loads(out)
    assert st["rollout"]["version"] == "1.1.1"
    assert st["channel_rollout"]["window"] == {"start": "01:00", "end": "05:00"}
    stage = st["plan"]["stages"][0]
    assert (stage["name"], stage["percentages"], stage["failure_rate_threshold"], stage["min_finished"]) == \
        ("rollback", [100.0], 5.0, 2)
    assert st["plan"]["in_progress_timeout"] == 600.0 and stage["soak"] == 0.0
    doc = ChannelDoc.from_envelope_bytes(
        (root / "feed" / "channels" / BOARD / "stable.json").read_bytes(),
        [load_public_key(str(root / "rollout.pem") + ".pub")],
    )
    assert doc.rollout.window == {"start": "01:00", "end": "05:00"}


def test_actions_without_an_id_never_guess_between_open_rollouts(
    env: tuple[Path, ServerThread, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    """Seen (#14, 6): with stable and beta open, `mpota rollout abort` aborted beta without a word."""
    root, srv, conn = env
    secret = load_secret(root / "fleet.secret")
    for channel in ("stable", "beta"):
        d = ReportingDevice(srv.url, secret, f"canary-{channel}", "canary")
        assert d.report("heartbeat") == 200
        d.close()
        srv_op = ReportingDevice(srv.url, secret, f"canary-{channel}", "canary")
        assert srv_op.register(secret, channel=channel) == 200
        srv_op.close()
        code, _, err = cli(capsys, "rollout", "start", "--board", BOARD, "--version", "1.1.0", "--channel",
                            channel, "--id", f"r-{channel}", *conn)
        assert code == 0, err
    for action in ("abort", "pause"):
        code, _, err = cli(capsys, "rollout", action, *conn)
        assert code == 2 and "2 rollouts are open: r-stable (" in err and "r-beta (" in err, err
        assert err.count("\n") == 1
    code, out, _ = cli(capsys, "rollout", "list", *conn)
    assert out.count(" active ") == 2
    code, out, _ = cli(capsys, "rollout", "abort", "r-beta", *conn)
    assert code == 0 and "ABORTED" in out
    code, out, _ = cli(capsys, "rollout", "pause", *conn)  # one open rollout left: no doubt
    assert code == 0 and "r-stable" in out and "PAUSED" in out
