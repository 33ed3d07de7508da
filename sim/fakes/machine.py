# Fake of MicroPython's machine module (ESP32 port) on the simulated board.
import simflash as _sf

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

_freq = 160000000


def _run():
    return _sf.current("machine")


# esp_restart(): the run ends here; the harness boots the board again (reset_cause SOFT_RESET).
def reset():
    _run().end(_sf.EXIT_RESET, "machine.reset()")


def soft_reset():
    raise SystemExit


def deepsleep(time_ms=0):
    _run().end(_sf.EXIT_DEEPSLEEP, "machine.deepsleep(%d)" % time_ms)


def lightsleep(time_ms=0):
    import time
    _run()
    time.sleep_ms(time_ms)


def reset_cause():
    return _run().reset_cause


def unique_id():
    return bytes.fromhex(_run().cfg.get("unique_id", "246f28000001"))


def freq(hz=None):
    global _freq
    _run()
    if hz is None:
        return _freq
    if hz not in (20000000, 40000000, 80000000, 160000000, 240000000):
        raise ValueError("frequency must be 20MHz, 40MHz, 80Mhz, 160MHz or 240MHz")
    _freq = hz


def idle():
    _run()


def disable_irq():
    return 0


def enable_irq(state=0):
    pass


# Task watchdog: once started it cannot be stopped. A run that does not feed it within the
# timeout ends as a watchdog reset at its next call into the board (feed, flash, NVS, ...);
# a process that never calls in is reset by the harness (sim/board.py) from wdt.json.
class WDT:
    def __init__(self, id=0, timeout=5000):
        if id != 0:
            raise ValueError
        if timeout < 1:
            raise ValueError("WDT timeout too short")
        _run().wdt_start(timeout)

    def feed(self):
        _run().wdt_feed()


class Pin:
    IN = 1
    OUT = 3
    OPEN_DRAIN = 7
    PULL_UP = 2
    PULL_DOWN = 1
    IRQ_RISING = 1
    IRQ_FALLING = 2

    def __init__(self, id, mode=-1, pull=-1, value=None):
        self._id = id
        self._v = value or 0

    def value(self, v=None):
        if v is None:
            return self._v
        self._v = 1 if v else 0

    def on(self):
        self._v = 1

    def off(self):
        self._v = 0

    def __call__(self, v=None):
        return self.value(v)

    def irq(self, handler=None, trigger=3):
        return None
