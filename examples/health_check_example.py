# ruff: noqa: UP031  (device code: MicroPython has no str.format mini-language parity; % it is)
# Health checks on the device: the trial boot (mpota.boot) and the heartbeat loop (HealthReporter).
#
# On a board: copy this file to the board as /main.py, next to the /mpota.json that
# `mpota deploy` wrote. When a new firmware boots for the first time, mpota.boot() runs the
# checks below (plus Wi-Fi, report server, MQTT broker if configured, heartbeat accepted),
# then confirms the update or rolls back to the previous firmware. After that the loop sends
# heartbeats with the health status (OK / DEGRADED / FAILED).
#
# On this machine it runs on the simulated ESP32 board, reporting to the rollout server
# (`mpota serve`'s app) on loopback:
#
#     .venv/bin/python -m examples.health_check_example [--bad] [--cpython]   (from the repository root)
#
# It boots firmware 1.0.0, installs 1.1.0 as a pending update (--bad: a 1.1.0 build whose
# sensor check fails), boots the board until it settles and prints what the server got.
# --cpython runs the board under CPython instead of the MicroPython unix port.
import sys

LOOPS = None  # heartbeats to send before returning (None: forever, as on a board)


# --------------------------------------------------------------------------- device side
def sensor_ok():
    # Replace with a real check: read the sensor, compare with a plausible range.
    # On the simulated board a firmware built with sim flag health=fail has a broken sensor.
    try:
        import esp32

        return esp32.sim_firmware()["flags"].get("health") != "fail"
    except AttributeError:  # a real board: no simulator extras
        return True


def memory_ok():
    import gc

    gc.collect()
    return gc.mem_free() > 16 * 1024


def device_main():
    import time

    import mpota
    from mpota.trial import feed

    try:
        import simboot  # the simulated board: its filesystem root is not "/" under CPython

        config, loops = simboot.CONFIG, 2
    except ImportError:
        config, loops = "/mpota.json", LOOPS
    # Early, before the application starts anything that could hide a broken firmware.
    res = mpota.boot(checks=[sensor_ok, ("memory", memory_ok)], timeout_ms=5000, config=config)
    print("boot:", res.outcome, "trial" if res.trial else "", res.check or "", res.reason or "")
    for name, ok, ms, note in res.results:
        print("  check %-10s %s %4d ms %s" % (name, "ok  " if ok else "FAIL", ms, note or ""))
    hr = mpota.HealthReporter(config=config, checks=[sensor_ok, ("memory", memory_ok)])
    n = 0
    while loops is None or n < loops:
        n += 1
        feed()
        seq = hr.report_health()  # runs the checks, queues + sends a heartbeat
        print("health %s (boots %d, watchdog resets %d, broker %s, heartbeat seq %s)" % (
            hr.status, hr.boot_count, hr.watchdog_resets, hr.can_connect_to_broker(), seq))
        if hr.should_rollback():  # only during a trial boot
            hr.trigger_rollback()
        time.sleep(1 if loops else 60)


# ----------------------------------------------------------------------------- host side
INSTALL = """
import esp32
import simboot
from mpota.state import State, open_store

# What Updater.update() leaves behind: the new image in ota_1 set to boot, pending recorded.
st = State(open_store(simboot.ROOT or "/"))
st["pending"] = {"version": "1.1.0", "slot": "ota_1", "prev_slot": "ota_0", "security_version": 1,
                 "rollout": "example", "manifest_sha256": "00" * 32, "attempts": 0}
st.save()
esp32.Partition.find(esp32.Partition.TYPE_APP, label="ota_1")[0].set_boot()
"""


def host_main(argv):
    import os
    import tempfile
    from pathlib import Path

    from host_tools.fleet import device_token
    from host_tools.keys import generate_key
    from host_tools.server.app import ServerConfig
    from sim.board import SimBoard
    from sim.images import build_sim_image
    from sim.serverkit import ServerThread

    interp = "cpython" if "--cpython" in argv else "micropython"
    flags = "health=fail" if "--bad" in argv else ""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "feed").mkdir()
        secret = os.urandom(32)
        key = generate_key(work / "release.key").public_hex
        server = ServerThread(ServerConfig(feed_dir=work / "feed", fleet_secret=secret, tick_s=60))
        try:
            cfg = {"device_id": "demo-1", "board": "esp32-generic-4mb", "group": "canary",
                   "feed_url": server.url + "/", "channel": "stable",
                   "report_url": server.url + "/v1/reports", "token": device_token(secret, "demo-1"),
                   "allow_http": True,  # loopback demo; a real board reports over https (docs: TLS)
                   "keys": {"release": [key], "rollout": [key]}}
            board = SimBoard.create(work / "board", version="1.0.0", config=cfg)
            me = Path(__file__).resolve()

            def boot(title):
                print("==== " + title)
                for run in board.boot_until_settled(me, interpreter=interp):
                    print("-- boot %s (firmware %s) ended: %s" % (run.slot, run.version, run.kind))
                    print(run.output.rstrip())

            boot("firmware 1.0.0")
            board.flash_slot("ota_1", build_sim_image("esp32", "1.1.0", "mpota-app", 1, flags=flags))
            inst = board.run(INSTALL, interp)
            assert inst.kind == "exit", inst
            boot("update to 1.1.0 pending%s" % (" (a build with a broken sensor)" if flags else ""))
            print("==== the server received")
            print(server.device_log("demo-1", "slot", ("check", "reason", "health")))
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    try:
        import esp32  # noqa: F401  (a board, or the simulated one)

        device_main()
    except ImportError:
        sys.exit(host_main(sys.argv[1:]))
