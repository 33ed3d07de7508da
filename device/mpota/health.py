# Health: the built-in checks a trial boot runs, and HealthReporter (its public API) for
# applications that watch their own health after boot.
#
# A built-in check is fn(session, timeout_ms) -> True (healthy), False (unhealthy) or
# None (not applicable here: no Wi-Fi module, no report_url, no MQTT broker configured).
# Checks are synchronous: each one bounds its own waiting with timeout_ms (socket timeouts,
# polling), and the caller measures the elapsed time as well.
from micropython import const

OK = "OK"
DEGRADED = "DEGRADED"
FAILED = "FAILED"

_POLL_MS = const(50)
_MQTT_PORT = const(1883)


def _sleep_ms(ms):
    import time

    if hasattr(time, "sleep_ms"):
        time.sleep_ms(ms)
    else:
        time.sleep(ms / 1000)


def _feed():
    from mpota.trial import feed

    feed()


# True when a TCP connection to host:port opens within timeout_ms.
def tcp_reachable(host, port, timeout_ms):
    import socket

    s = None
    try:
        ai = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)[0]
        s = socket.socket(ai[0], socket.SOCK_STREAM)
        s.settimeout(timeout_ms / 1000)
        s.connect(ai[-1])
        return True
    except OSError:
        return False
    finally:
        if s is not None:
            s.close()


# Wi-Fi station connected (waits up to timeout_ms for the connection boot.py started).
def wifi_connected(session, timeout_ms):
    try:
        import network
    except ImportError:
        return None
    from mpota.report import ticks_diff, ticks_ms

    wlan = network.WLAN(network.STA_IF)
    t0 = ticks_ms()
    while not wlan.isconnected():
        if ticks_diff(ticks_ms(), t0) >= timeout_ms:
            return False
        _feed()
        _sleep_ms(_POLL_MS)
    return True


def server_reachable(session, timeout_ms):
    url = session.cfg.get("report_url")
    if not url:
        return None
    from mpota.http import split

    try:
        _, host, port, _ = split(url)
    except Exception:  # not an http(s) URL: no report could reach it either
        return False
    return tcp_reachable(host, port, timeout_ms)


def broker_reachable(session, timeout_ms):
    host = session.cfg.get("mqtt_host")
    if not host:
        return None
    return tcp_reachable(host, session.cfg.get("mqtt_port") or _MQTT_PORT, timeout_ms)


# POST a heartbeat straight to report_url (not queued): healthy when it is accepted.
def heartbeat_accepted(session, timeout_ms):
    if not session.cfg.get("report_url"):
        return None
    return session.reporter.send_now("heartbeat", timeout_ms=timeout_ms, health="TRIAL")


BUILTIN_CHECKS = {
    "wifi": wifi_connected,
    "server": server_reachable,
    "mqtt": broker_reachable,
    "heartbeat": heartbeat_accepted,
}

BUILTIN = ("wifi", "server", "mqtt", "heartbeat")


def _name(check, i):
    if isinstance(check, tuple):
        return check[0]
    return getattr(check, "__name__", None) or "check%d" % i


# Run the built-in checks named in `builtin`, then the application's `checks` (callables,
# or (name, callable) pairs, returning True/False or raising), each within timeout_ms.
# MicroPython cannot interrupt a synchronous call: the time is measured and an overrun
# counts as a failure; a hang is left to the watchdog (fed before every check).
# -> (name of the first failed check or None, [(name, ok, ms, note)]); stops at the first
# failure unless run_all.
def run_checks(session, checks, timeout_ms, builtin=BUILTIN, run_all=False):
    from mpota.report import ticks_diff, ticks_ms

    todo = []  # type: list
    for name in builtin:
        fn = BUILTIN_CHECKS.get(name)
        if fn is not None:
            todo.append((name, fn, (session, timeout_ms)))
    i = 0
    for c in checks:
        i += 1
        todo.append((_name(c, i), c[1] if isinstance(c, tuple) else c, ()))
    results = []
    failed = None
    for name, fn, args in todo:
        _feed()
        t0 = ticks_ms()
        note = None
        try:
            ok = fn(*args)
        except Exception as e:
            ok, note = False, repr(e)
        ms = ticks_diff(ticks_ms(), t0)
        if ok is None:
            ok, note = True, "skipped"
        elif ms > timeout_ms:
            ok, note = False, "timeout"
        ok = bool(ok)
        results.append((name, ok, ms, note))
        if not ok and failed is None:
            failed = name
            if not run_all:
                break
    _feed()
    return failed, results


# Failing one of these makes the status DEGRADED (a service is down); any other failure
# (Wi-Fi, an application check) makes it FAILED.
_SERVICES = ("server", "mqtt", "heartbeat")


# Seed parity: HealthReporter(config) tracks the board's health, sends it as heartbeats,
# and during a trial boot can decide to roll back.
#   hr = HealthReporter(checks=[sensor_ok])
#   hr.report_health()                      # runs the checks, sends a heartbeat
#   if hr.should_rollback(): hr.trigger_rollback()
class HealthReporter:
    def __init__(self, config="/mpota.json", checks=(), timeout_ms=5000, session=None,
                 builtin=("wifi", "server", "mqtt")):
        if session is None:
            from mpota.trial import Session

            session = Session(config)
        self.session = session
        self.checks = list(checks)
        self.timeout_ms = timeout_ms
        self.builtin = builtin
        self.status = OK
        self.failed = None   # name of the last failing check
        self.results = []    # [(name, ok, ms, note)] of the last run
        self._broker = None
        self._heartbeat = None

    @property
    def boot_count(self):
        return self.session.state["boots"]

    @property
    def watchdog_resets(self):
        return self.session.state["wdt"]

    @property
    def in_trial(self):
        return self.session.situation() == "trial"

    def can_connect_to_broker(self, timeout_ms=None):
        ok = broker_reachable(self.session, timeout_ms or self.timeout_ms)
        self._broker = ok
        return ok is not False

    def can_send_heartbeat(self, timeout_ms=None):
        ok = heartbeat_accepted(self.session, timeout_ms or self.timeout_ms)
        self._heartbeat = ok
        return ok is not False

    # Run all checks (every one, not stopping at the first failure) and set status.
    def check(self):
        self.failed, self.results = run_checks(self.session, self.checks, self.timeout_ms,
                                               self.builtin, run_all=True)
        status = OK
        for name, ok, _ms, _note in self.results:
            if name == "mqtt":
                self._broker = ok
            if not ok:
                if name not in _SERVICES:
                    status = FAILED
                elif status == OK:
                    status = DEGRADED
        self.status = status
        return status

    # Send a heartbeat with the health status (runs the checks when status is not given).
    # Returns the report seq (None when it could not be queued).
    def report_health(self, status=None, **detail):
        if status is None:
            status = self.check()
        else:
            self.status = status
        detail["boots"] = self.boot_count
        detail["wdt"] = self.watchdog_resets
        if self.failed and self.status != OK:
            detail["check"] = self.failed
        return self.session.reporter.heartbeat(health=status, **detail)

    # Roll back when this is the trial boot of an update and the firmware is not healthy.
    def should_rollback(self):
        return self.status == FAILED and self.in_trial

    # During a trial: record, report health_failed, boot the previous slot (resets, does
    # not return). Outside a trial there is nothing proven-good to go back to: False.
    def trigger_rollback(self, check=None):
        if not self.in_trial:
            return False
        self.session.rollback("health_failed", check or self.failed or "app")
        return True
