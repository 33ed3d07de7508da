# Boots the simulated ESP32 board and runs a script on it:
#     python|micropython tests/fakes/simboot.py SIMDIR SCRIPT [args...]
# SIMDIR holds board.json (written by sim/board.py), flash.bin, nvs.json, fs/ (the board's
# filesystem) and, per run, run.json (cut, reset_cause, wifi) in and result.json out.
# Steps: install the esp32/machine/network fakes, run the bootloader model (slot choice,
# rollback), make fs/ the filesystem root, put /lib on sys.path, run SCRIPT.
# Scripts find the filesystem root as `import simboot; simboot.ROOT` ("" on MicroPython,
# where "/" is remounted; "<simdir>/fs" under CPython), so paths are ROOT + "/mpota.json".
import sys

MP = sys.implementation.name == "micropython"
ROOT = None
SIMDIR = None
FS = None
CONFIG = None
# MicroPython: heap bytes the simulator itself holds when the script starts (the fakes are
# Python here; on a board esp32/machine/network are C in flash). Subtract it from heap floors.
BOARD_HEAP = 0


def _cpython_shims(cfg):
    import gc
    import time

    period = 1 << 30
    half = period >> 1
    t0 = time.monotonic_ns()

    def ticks_ms():
        return ((time.monotonic_ns() - t0) // 1000000) & (period - 1)

    def ticks_us():
        return ((time.monotonic_ns() - t0) // 1000) & (period - 1)

    def ticks_diff(a, b):
        return ((a - b + half) & (period - 1)) - half

    def ticks_add(a, d):
        return (a + d) & (period - 1)

    time.ticks_ms = ticks_ms
    time.ticks_us = ticks_us
    time.ticks_cpu = ticks_us
    time.ticks_diff = ticks_diff
    time.ticks_add = ticks_add
    time.sleep_ms = lambda ms: time.sleep(ms / 1000)
    time.sleep_us = lambda us: time.sleep(us / 1000000)
    heap = cfg.get("heap", 111000)
    gc.mem_free = lambda: heap - 10000
    gc.mem_alloc = lambda: 10000

    def print_exception(exc, file=None):
        import traceback
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=file or sys.stdout)

    sys.print_exception = print_exception


class _OS:
    # MicroPython unix port: os.rename fails (ENOENT) on a VfsPosix mounted with a root
    # folder; a board's LittleFS renames fine, so rename goes through the host path.
    def __init__(self, real, raw, fs):
        self._os = real
        self._raw = raw
        self._fs = fs

    def __getattr__(self, name):
        return getattr(self._os, name)

    def _host(self, path):
        if not path.startswith("/"):
            cwd = self._os.getcwd()
            path = (cwd if cwd.endswith("/") else cwd + "/") + path
        return self._fs + path

    def rename(self, src, dst):
        self._raw.rename(self._host(src), self._host(dst))


def main(argv):
    global ROOT, SIMDIR, FS, CONFIG
    if len(argv) < 3:
        print("usage: simboot.py SIMDIR SCRIPT [args...]")
        raise SystemExit(2)
    simdir = argv[1]
    script = argv[2]
    import simflash

    cfg = simflash.hread_json(simdir + "/board.json")
    if cfg is None:
        print("simboot: no board at %s (create it with sim.board.SimBoard)" % simdir)
        raise SystemExit(2)
    runcfg = simflash.hread_json(simdir + "/run.json", {})
    for k in ("wifi", "rollback_supported"):
        if k in runcfg:
            cfg[k] = runcfg[k]
    simflash.hremove(simdir + "/result.json")
    simflash.hremove(simdir + "/wdt.json")
    run = simflash.Run(simdir, cfg, runcfg)
    simflash.RUN = run
    run.flash = simflash.Flash(simdir + "/flash.bin", cfg["flash_size"], run)
    if not MP:
        _cpython_shims(cfg)

    import esp32
    import machine
    import network

    sys.modules["esp32"] = esp32
    sys.modules["machine"] = machine
    sys.modules["network"] = network
    if not network.wifi_up():
        import socket
        if MP:
            sys.modules["socket"] = network.DownSocketModule(socket)
        else:
            def _down(*a, **k):
                raise OSError(113, "EHOSTUNREACH")

            def _nodns(*a, **k):
                raise OSError(-202, "getaddrinfo failed")
            socket.socket.connect = _down
            socket.socket.connect_ex = lambda *a: 113
            socket.getaddrinfo = _nodns
            socket.create_connection = _down

    # the second-stage bootloader
    part = simflash.bootloader(run.flash, cfg, run.boot_log)
    run.boot_ops = run.ops
    if part is None:
        print("E (boot): No bootable app partitions in the partition table")
        run.end(simflash.EXIT_NOBOOT, "no bootable app")
    run.running = part.label
    run.firmware = simflash.firmware_info(run.flash, part)
    if run.firmware["flags"].get("crash") == "boot":
        esp32.sim_panic("firmware %s crashes at boot" % run.firmware["version"])

    f = simflash.hopen(script, "r")
    try:
        src = f.read()
    finally:
        f.close()

    fs = simdir + "/fs"
    FS = fs
    SIMDIR = simdir
    if MP:
        import os

        import vfs
        raw = vfs.VfsPosix()
        simflash.RAW = raw
        vfs.umount("/")
        vfs.mount(vfs.VfsPosix(fs), "/")
        os.chdir("/")
        sys.modules["os"] = _OS(os, raw, fs)
        ROOT = ""
        sys.path[:] = ["", ".frozen", "/lib"]
    else:
        import os
        os.chdir(fs)
        ROOT = fs
        sys.path.insert(1, fs + "/lib")
    CONFIG = ROOT + "/mpota.json"

    sys.argv[:] = [script] + argv[3:]
    g = {"__name__": "__main__", "__file__": script}
    import gc
    gc.collect()  # the app starts on a heap without the boot's leftovers
    if MP:
        global BOARD_HEAP
        BOARD_HEAP = gc.mem_alloc()
    code = compile(src, script, "exec")
    src = None
    try:
        exec(code, g)
    except SystemExit:
        if run.dead is not None:
            raise SystemExit(run.dead)
    except KeyboardInterrupt:
        run.end(simflash.EXIT_CRASH, "KeyboardInterrupt")
    except Exception as e:
        if run.dead is not None:  # device code caught our SystemExit and failed later
            raise SystemExit(run.dead)
        sys.print_exception(e, sys.stderr)
        run.end(simflash.EXIT_CRASH, "%s: %s" % (type(e).__name__, e))
    run.end(simflash.EXIT_OK, "")


if __name__ == "__main__":
    import simboot as _self  # the importable module: scripts read simboot.ROOT from it
    _self.main(sys.argv)
