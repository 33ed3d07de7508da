# Wi-Fi down on the simulated board (network.py): DNS fails like lwIP (-202) and connecting
# fails with EHOSTUNREACH. Loaded only on a board whose Wi-Fi is down.
import sys


class _DownSocket:
    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def connect(self, addr):
        raise OSError(113)  # EHOSTUNREACH

    def connect_ex(self, addr):
        return 113


class DownSocketModule:
    def __init__(self, real):
        self._mod = real

    def __getattr__(self, name):
        return getattr(self._mod, name)

    def getaddrinfo(self, *args, **kwargs):
        raise OSError(-202)

    def socket(self, *args, **kwargs):
        return _DownSocket(self._mod.socket(*args, **kwargs))

    def create_connection(self, *args, **kwargs):
        raise OSError(113)


def install(mp):
    import socket
    if mp:
        sys.modules["socket"] = DownSocketModule(socket)
        return

    def _down(*a, **k):
        raise OSError(113, "EHOSTUNREACH")

    def _nodns(*a, **k):
        raise OSError(-202, "getaddrinfo failed")
    socket.socket.connect = _down
    socket.socket.connect_ex = lambda *a: 113
    socket.getaddrinfo = _nodns
    socket.create_connection = _down
