# mpota: resilient OTA updates for MicroPython on ESP32.
# Imports are lazy (module __getattr__) so `import mpota.p256` needs no hardware module
# and a normal boot pays only for what it uses.

__version__ = "0.1.0"


def __getattr__(name):
    if name == "Updater":
        from mpota.updater import Updater
        return Updater
    if name == "boot":
        from mpota.trial import boot
        return boot
    if name == "HealthReporter":
        from mpota.health import HealthReporter
        return HealthReporter
    # `from mpota import state` on MicroPython asks here before trying the submodule.
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        return __import__("mpota." + name, None, None, (name,))
    except ImportError:
        raise AttributeError(name)
