# ruff: noqa: UP031  (device code: MicroPython has no str.format mini-language parity; % it is)
# The device client: what a board runs to update itself (mpota.boot + Updater + reports).
#
# On a board: copy this file to the board as /main.py, next to the /mpota.json that
# `mpota deploy` wrote (device_id, board, group, feed_url, channel, report_url, token, keys).
# Every boot: mpota.boot() confirms or rolls back a freshly installed firmware; then the loop
# polls the signed channel, installs an update when this board is eligible (the board resets
# into it, and the next boot is its trial) and sends heartbeats.
#
# On this machine it runs on the simulated ESP32 board against the rollout server
# (`mpota serve`'s app: the static feed plus POST /v1/reports) on loopback:
#
#     .venv/bin/python -m examples.device_client_example [--bad] [--cpython]   (from the repository root)
#
# It publishes firmware 1.1.0 as a signed release on the "stable" channel, lets the board
# (running 1.0.0) find it, download it, reset into it and run the trial; with --bad the new
# build fails its health check and the board goes back to 1.0.0 by itself. --cpython runs the
# board under CPython instead of the MicroPython unix port.
import sys

POLL_S = 3600  # update check period on a board
HEARTBEAT_S = 300


# --------------------------------------------------------------------------- device side
def app_ok():
    # The application's own health check (sensor, peripherals, settings). On the simulated
    # board a firmware built with sim flag health=fail has a bug that makes it fail.
    try:
        import esp32

        return esp32.sim_firmware()["flags"].get("health") != "fail"
    except AttributeError:  # a real board
        return True


def device_main():
    import time

    import mpota
    from mpota.trial import feed

    try:
        import simboot

        config, loops = simboot.CONFIG, 1
    except ImportError:
        config, loops = "/mpota.json", None
    res = mpota.boot(checks=[app_ok], config=config)
    print("boot:", res.outcome, res.version or "", res.reason or "")

    from mpota.errors import OTAError
    from mpota.health import HealthReporter
    from mpota.updater import Updater

    updater = Updater.from_config(config)
    health = HealthReporter(config=config, checks=[app_ok])
    n = 0
    last_poll = last_hb = None
    while loops is None or n < loops:
        n += 1
        feed()  # a trial boot armed the watchdog; it cannot be stopped on ESP32
        now = time.time()
        if last_poll is None or now - last_poll >= POLL_S:
            last_poll = now
            try:
                offer = updater.check()
                if offer is None:
                    print("up to date")
                else:
                    print("installing", offer.version, "into", offer.slot)
                    updater.update(offer)  # streams, verifies, set_boot, reset (no return)
            except OTAError as e:  # already reported as `failed` with its reason code
                print("update failed:", e.code, e)
        if last_hb is None or now - last_hb >= HEARTBEAT_S:
            last_hb = now
            health.report_health()
        if loops is None:
            time.sleep(1)


# ----------------------------------------------------------------------------- host side
def host_main(argv):
    import os
    import tempfile
    from pathlib import Path

    from host_tools.fleet import device_token
    from host_tools.keys import generate_key
    from host_tools.server.app import ServerConfig
    from sim.board import SimBoard
    from sim.serverkit import ServerThread, publish_test_release

    interp = "cpython" if "--cpython" in argv else "micropython"
    flags = "health=fail" if "--bad" in argv else ""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        feed_dir = work / "feed"
        feed_dir.mkdir()
        secret = os.urandom(32)
        key = generate_key(work / "demo.key")
        server = ServerThread(ServerConfig(feed_dir=feed_dir, fleet_secret=secret, tick_s=60))
        try:
            cfg = {"device_id": "demo-1", "board": "esp32-generic-4mb", "group": "canary",
                   "feed_url": server.url + "/", "channel": "stable",
                   "report_url": server.url + "/v1/reports", "token": device_token(secret, "demo-1"),
                   "allow_http": True,  # loopback demo; a real board reports over https (docs: TLS)
                   "keys": {"release": [key.public_hex], "rollout": [key.public_hex]}}
            board = SimBoard.create(work / "board", version="1.0.0", config=cfg)
            me = Path(__file__).resolve()

            def boot(title):
                print("==== " + title)
                for run in board.boot_until_settled(me, interpreter=interp, timeout=120):
                    print("-- boot %s (firmware %s) ended: %s" % (run.slot, run.version, run.kind))
                    print(run.output.rstrip())

            boot("firmware 1.0.0, nothing published")
            publish_test_release(feed_dir, work / "rel", key.path, "1.1.0", channel="stable",
                                 security_version=1, sim_flags=flags)
            boot("1.1.0 published on stable%s" % (" (a build with a bug)" if flags else ""))
            boot("later boots")
            print("==== the server received")
            print(server.device_log("demo-1", "target", ("progress", "check", "reason", "health")))
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    try:
        import esp32  # noqa: F401  (a board, or the simulated one)

        device_main()
    except ImportError:
        sys.exit(host_main(sys.argv[1:]))
