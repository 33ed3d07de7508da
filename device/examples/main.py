# main.py: the application template (installed by `mpota deploy` when the board has none).
#
# 1. Into the active app folder (a release's application files, `mpota sign --app DIR`: /app.a
#    or /app.b): the current folder comes first on a board's import path, so the app's modules
#    come from the release being tried or confirmed (and /lib still holds mpota). A bundle may
#    ship app_health.py with check() -> bool: the trial runs it.
# 2. mpota.boot(): on the trial boot of a new firmware or app it runs the health checks and
#    confirms the update or rolls back firmware and app together (resetting; it does not
#    return then). On any other boot it is cheap: no network, a few bytes written.
# 3. Then the application loop (the bundle's app_main.step() when it has one), which feeds
#    the watchdog armed during a trial, sends a heartbeat now and then and checks for
#    updates (Updater.update() resets into the new firmware or app when it installs one).
import os
import time

import mpota
from mpota.trial import app_folder

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


APP = app_folder(CONFIG)
if APP:
    os.chdir(APP)
checks = [app_ready]
try:
    import app_health  # the bundle's own check, run against the new app during its trial

    checks.append(("app", app_health.check))
except ImportError:
    pass
result = mpota.boot(checks=checks, timeout_ms=10000, config=CONFIG)
print("mpota:", result, "app:", APP)
try:
    import app_main  # the bundle's application
except ImportError:
    app_main = None


def app_step():
    # your application's work goes here (keep each step shorter than the watchdog period)
    if app_main is not None:
        app_main.step()
    else:
        time.sleep(1)


def run():
    from mpota.health import HealthReporter
    from mpota.trial import feed

    health = HealthReporter(config=CONFIG, checks=checks)
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
