# Boots the simulated board (simboot.py runs it, then drops it: nothing here stays in the app's
# heap). Two phases, as on a board:
# - boot(): the second-stage bootloader (simota) picks and checks the slot; it may end the run
#   (power cut, no bootable app, crash at boot). With a boot.json path it records its outcome there
#   and the app phase runs in a process of its own, so the bootloader's heap is not the app's:
#   on a board it runs before MicroPython and uses none of its heap.
# - app(): the run's state for the app phase (the fakes and the filesystem are simboot's).
import sys

import simflash

MP = simflash.MP


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


def _config(simdir):
    cfg = simflash.hread_json(simdir + "/board.json")
    if cfg is None:
        print("simboot: no board at %s (create it with sim.board.SimBoard)" % simdir)
        raise SystemExit(2)
    runcfg = simflash.hread_json(simdir + "/run.json", {})
    for k in ("wifi", "rollback_supported"):
        if k in runcfg:
            cfg[k] = runcfg[k]
    return cfg, runcfg


# The bootloader phase. Returns the Run; with record=True it writes boot.json for the app phase.
def boot(simdir, record=False):
    import simota

    cfg, runcfg = _config(simdir)
    simflash.hremove(simdir + "/result.json")
    simflash.hremove(simdir + "/wdt.json")
    simflash.hremove(simdir + "/boot.json")
    run = simflash.Run(simdir, cfg, runcfg)
    simflash.RUN = run
    run.flash = simflash.Flash(simdir + "/flash.bin", cfg["flash_size"], run)
    part = simota.bootloader(run.flash, cfg, run.boot_log)
    run.boot_ops = run.ops
    if part is None:
        print("E (boot): No bootable app partitions in the partition table")
        run.end(simflash.EXIT_NOBOOT, "no bootable app")
    run.running = part.label
    run.firmware = simota.firmware_info(run.flash, part)
    if run.firmware["flags"].get("crash") == "boot":
        msg = "firmware %s crashes at boot" % run.firmware["version"]
        print("Guru Meditation Error: %s" % msg)
        run.end(simflash.EXIT_PANIC, msg)
    if record:
        run.logf.close()
        run.flash.close()
        simflash.hwrite_json(simdir + "/boot.json", {
            "ops": run.ops, "boot_log": run.boot_log, "slot": run.running, "firmware": run.firmware})
    return run


# The app phase's Run (from boot(), or rebuilt from boot.json). simboot installs the fakes
# after this module is gone, so the boot's code is not in the heap at the same time as theirs.
def app(simdir, run=None):
    if run is None:
        cfg, runcfg = _config(simdir)
        rec = simflash.hread_json(simdir + "/boot.json")
        if rec is None:
            print("simboot: %s/boot.json is missing (run the boot phase first)" % simdir)
            raise SystemExit(2)
        run = simflash.Run(simdir, cfg, runcfg, rec)
        simflash.RUN = run
        run.flash = simflash.Flash(simdir + "/flash.bin", cfg["flash_size"], run)
    if not MP:
        _cpython_shims(run.cfg)
    return run
