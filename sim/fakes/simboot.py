# Boots the simulated ESP32 board and runs a script on it:
#     python|micropython sim/fakes/simboot.py SIMDIR SCRIPT [args...]
# SIMDIR holds board.json (written by sim/board.py), flash.bin, nvs.json, fs/ (the board's
# filesystem) and, per run, run.json (cut, reset_cause, wifi) in and result.json out.
# The board's /lib comes on the import path from the environment sim/board.py starts it with
# (MICROPYPATH "/lib", resolved after "/" is remounted; PYTHONPATH <simdir>/fs/lib under CPython).
# simstart does the booting (bootloader model, fakes, filesystem root) and is
# dropped before SCRIPT runs. sim/board.py runs MicroPython boots in two processes, as a board
# runs its bootloader before MicroPython: `simboot.py --boot SIMDIR` (the bootloader; its outcome
# in boot.json) then `simboot.py --app SIMDIR SCRIPT [args...]` with the -X heapsize asked for.
# Scripts find the filesystem root as `import simboot; simboot.ROOT` ("" on MicroPython,
# where "/" is remounted; "<simdir>/fs" under CPython), so paths are ROOT + "/mpota.json".
import sys

ROOT = None
SIMDIR = None
FS = None
CONFIG = None
# MicroPython: heap bytes in use when the script starts (the simulator's own share; on a board
# esp32/machine/network are C in flash). bench/bench_heap.py measures floors above an empty run.
BOARD_HEAP = 0


class _OS:
    # MicroPython unix port: os.rename fails (ENOENT) on a VfsPosix mounted with a root
    # folder; a board's LittleFS renames fine, so rename goes through the host path.
    def __init__(self, real, raw, fs):
        self._os = real
        self._raw = raw
        self._fs = fs
        self._mounted = []

    def __getattr__(self, name):
        return getattr(self._os, name)

    def _host(self, path):
        if not path.startswith("/"):
            cwd = self._os.getcwd()
            path = (cwd if cwd.endswith("/") else cwd + "/") + path
        return self._fs + path

    def rename(self, src, dst):
        self._raw.rename(self._host(src), self._host(dst))

    # The same VfsPosix resolves a relative path (an import from "", the current folder) against
    # its root, not the current folder; a board's LittleFS uses the current folder (an app in its
    # own folder imports its modules from there): the folder is mounted onto itself first.
    def chdir(self, path):
        import vfs
        if path.startswith("/") and path.rstrip("/") and path not in self._mounted:
            vfs.mount(vfs.VfsPosix(self._fs + path), path.rstrip("/"))
            self._mounted.append(path)
        self._os.chdir(path)


# The esp32/machine/network fakes and the board's filesystem as "/". Returns ROOT.
def _install(simdir):
    import esp32
    import machine
    import network
    import simflash

    sys.modules["esp32"] = esp32
    sys.modules["machine"] = machine
    sys.modules["network"] = network
    if not network.wifi_up():
        import simdown
        simdown.install(simflash.MP)
        sys.modules.pop("simdown", None)
    fs = simdir + "/fs"
    import os
    # the filesystem model (simfs: capacity, statvfs, ENOSPC, file operations as cut points) on
    # a board created with fs_model=True
    run = simflash.RUN
    simfs = None
    if run.cfg.get("fs_model"):
        import simfs
    if simflash.MP:
        import vfs
        raw = vfs.VfsPosix()
        simflash.RAW = raw
        vfs.umount("/")
        vfs.mount(vfs.VfsPosix(fs), "/")
        os.chdir("/")
        sys.modules["os"] = _OS(os, raw, fs)
        if simfs is not None:
            simfs.install(sys.modules["os"], "/", "", run.cfg, run.fs_cuts)
        return ""
    os.chdir(fs)
    if simfs is not None:
        simfs.install(os, fs, fs, run.cfg, run.fs_cuts)
    return fs


def main(argv):
    global ROOT, SIMDIR, FS, CONFIG, BOARD_HEAP
    phase = None
    if len(argv) > 1 and argv[1] in ("--boot", "--app"):
        phase = argv.pop(1)
    if len(argv) < (2 if phase == "--boot" else 3):
        print("usage: simboot.py [--boot SIMDIR | [--app] SIMDIR SCRIPT [args...]]")
        raise SystemExit(2)
    simdir = argv[1]
    import simflash
    import simstart

    if phase == "--boot":
        simstart.boot(simdir, record=True)
        return
    run = simstart.app(simdir, None if phase == "--app" else simstart.boot(simdir))
    # the boot's code leaves the heap (on a board it is the bootloader)
    sys.modules.pop("simstart", None)
    simstart = None
    import gc
    gc.collect()
    ROOT = _install(simdir)
    FS = simdir + "/fs"
    SIMDIR = simdir
    CONFIG = ROOT + "/mpota.json"
    script = argv[2]
    f = simflash.hopen(script, "r")
    try:
        code = f.read()
    finally:
        f.close()
    sys.argv[:] = [script] + argv[3:]
    gc.collect()  # the app starts on a heap without the boot's leftovers
    if simflash.MP:
        BOARD_HEAP = gc.mem_alloc()
    code = compile(code, script, "exec")
    try:
        exec(code, {"__name__": "__main__", "__file__": script})
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
