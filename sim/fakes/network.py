# Fake of MicroPython's network module (ESP32 port) on the simulated board.
# Wi-Fi is up (as if boot.py had connected) unless board.json / the run says "wifi": "down";
# then the station never connects and simboot makes sockets fail like an unreachable network.
import simflash as _sf

STA_IF = 0
AP_IF = 1

STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202
STAT_BEACON_TIMEOUT = 200
STAT_ASSOC_FAIL = 203
STAT_HANDSHAKE_TIMEOUT = 204

_state = {}


def _run():
    return _sf.current("network")


def wifi_up():
    return _run().cfg.get("wifi", "up") != "down"


def hostname(name=None):
    if name is None:
        return _state.get("hostname", "mpy-esp32")
    _state["hostname"] = name


class WLAN:
    IF_STA = STA_IF
    IF_AP = AP_IF
    PM_NONE = 0
    PM_PERFORMANCE = 1
    PM_POWERSAVE = 2

    def __init__(self, interface_id=STA_IF):
        _run()
        self._if = interface_id
        st = _state.get(interface_id)
        if st is None:
            # the station is active and has tried to connect, as boot.py does
            sta = interface_id == STA_IF
            up = sta and wifi_up()
            st = {"active": sta, "connected": up, "ssid": "sim-wifi" if sta else None}
            _state[interface_id] = st
        self._st = st

    def active(self, is_active=None):
        _run()
        if is_active is None:
            return self._st["active"]
        self._st["active"] = bool(is_active)
        if not is_active:
            self._st["connected"] = False

    def connect(self, ssid=None, key=None, *, bssid=None):
        _run()
        if not self._st["active"]:
            raise OSError("Wifi Not Started")
        self._st["ssid"] = ssid
        self._st["connected"] = self._if == STA_IF and wifi_up()

    def disconnect(self):
        _run()
        self._st["connected"] = False

    def isconnected(self):
        _run()
        return self._st["active"] and self._st["connected"]

    def status(self, param=None):
        _run()
        if param == "rssi":
            if not self.isconnected():
                raise OSError("STA is not connected")
            return -55
        if param is not None:
            raise ValueError("unknown status param")
        if self.isconnected():
            return STAT_GOT_IP
        if self._st["active"] and not wifi_up():
            return STAT_NO_AP_FOUND
        return STAT_IDLE

    def ifconfig(self, cfg=None):
        run = _run()
        if cfg is not None:
            self._st["ifconfig"] = tuple(cfg)
            return
        if "ifconfig" in self._st:
            return self._st["ifconfig"]
        if not self.isconnected():
            return ("0.0.0.0", "0.0.0.0", "0.0.0.0", "0.0.0.0")
        return (run.cfg.get("ip", "10.0.0.2"), "255.255.255.0", "10.0.0.1", "10.0.0.1")

    def config(self, *args, **kwargs):
        _run()
        if kwargs:
            self._st.update(kwargs)
            return
        if len(args) == 1:
            name = args[0]
            if name == "mac":
                return bytes.fromhex(_run().cfg.get("unique_id", "246f28000001"))
            if name in ("ssid", "essid"):
                return self._st.get("ssid") or ""
            return self._st.get(name)
        raise ValueError

    def scan(self):
        _run()
        if not wifi_up():
            return []
        return [(b"sim-wifi", b"\x24\x6f\x28\x00\x00\x01", 6, -55, 3, False)]
