# main.py: the application template (installed by `mpota deploy` when the board has none).
#
# 1. mpota.boot() first: on the trial boot of a new firmware it runs the health checks and
#    confirms the update or rolls back to the previous one (resetting; it does not return
#    then). On any other boot it is cheap: no network, a few bytes written.
# 2. Then the application loop, which feeds the watchdog armed during a trial, sends a
#    heartbeat now and then and checks for updates (Updater.update() resets into the new
#    firmware when it installs one).
import time

import mpota

CONFIG = "/mpota.json"
HEARTBEAT_S = 300       # heartbeat period
UPDATE_CHECK_S = 3600   # update poll period


# An application check: return True when the firmware can do its job (a sensor answers,
# a peripheral initialises, the settings load). False, an exception or taking longer than
# timeout_ms fails the trial and rolls the update back.
def app_ready():
    import gc

    gc.collect()
    return gc.mem_free() > 16 * 1024


result = mpota.boot(checks=[app_ready], timeout_ms=10000, config=CONFIG)
print("mpota:", result)


def app_step():
    # your application's work goes here (keep each step shorter than the watchdog period)
    time.sleep(1)


def run():
    from mpota.health import HealthReporter
    from mpota.trial import feed

    health = HealthReporter(config=CONFIG, checks=[app_ready])
    last_hb = last_check = None
    while True:
        feed()  # the watchdog armed by a trial boot cannot be stopped on ESP32
        now = time.time()
        if last_hb is None or now - last_hb >= HEARTBEAT_S:
            last_hb = now
            health.report_health()  # runs the checks, queues + sends a heartbeat
        if last_check is None or now - last_check >= UPDATE_CHECK_S:
            last_check = now
            try:
                from mpota.updater import Updater

                Updater.from_config(CONFIG).update()  # resets when it installed one
            except Exception as e:  # reported as `failed` already; try again later
                print("mpota: update:", e)
        app_step()


run()
