"""The simulated ESP32 board, CPython side: create a board directory, run scripts on it.

A board is a directory (the "simdir") holding everything a real board keeps across resets:

    board.json   chip, chip id/revision, flash size, partition table, rollback, Wi-Fi, unique id
    flash.bin    the whole NOR flash (sparse; stored bit-inverted so holes read as erased 0xFF)
    nvs.json     committed NVS contents
    fs/          the board's filesystem: /mpota.json, /lib/mpota (the device package), ...

``SimBoard.create(simdir, "esp32-generic-4mb")`` makes a board in its factory state (an app
image in ota_0, blank otadata, the device package in /lib/mpota). ``board.run(script)`` boots
it once under the MicroPython unix port or CPython (sim/fakes/simboot.py: bootloader model,
fakes of esp32/machine/network, filesystem root) and returns a ``RunResult``: how the run
ended (exit, crash, reset, powercut, watchdog, panic, deepsleep, noboot, timeout), its output,
the flash operations it made and the slot it booted. ``boot_until_settled`` boots again after
every reset, power cut or watchdog, like a board left plugged in.

Boards share nothing but the read-only repository, so many can run in parallel.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from sim.deviceproc import DEVICE_DIR, FAKES_DIR, REPO, import_path_env, micropython_exe, mpy_cross_exe

FAKES = FAKES_DIR
DEVICE_PKG = DEVICE_DIR / "mpota"
SIMBOOT = FAKES / "simboot.py"
MPY_CACHE = REPO / "build" / "mpy-cache"

# machine.reset_cause() values (MicroPython ESP32 port)
PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5

# how a run ended -> the reset cause of the next boot; the board boots again by itself
_NEXT_CAUSE = {
    "reset": SOFT_RESET, "panic": SOFT_RESET, "powercut": PWRON_RESET,
    "watchdog": WDT_RESET, "deepsleep": DEEPSLEEP_RESET,
}
REBOOT_KINDS = frozenset(_NEXT_CAUSE)

# MicroPython's import path on an ESP32 ("" is the current folder, /lib the installed packages);
# the app phase remounts "/" onto the board's filesystem, so "/lib" is <simdir>/fs/lib.
BOARD_PATH: list[str | Path] = ["", ".frozen", "/lib"]

_CHIP_REV = {"esp32": 301, "esp32s3": 2}  # v3.1 and v0.2, as boards ship today
_WDT_SLACK = 0.5


def _load_fake(stem: str) -> ModuleType:
    # Loaded under its board name ("simota" imports "simflash"), as the board's processes load
    # it, so this process and the board share one module object per fake.
    mod = sys.modules.get(stem)
    if mod is None:
        spec = importlib.util.spec_from_file_location(stem, FAKES / f"{stem}.py")
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[stem] = mod
        spec.loader.exec_module(mod)
    return mod


sf = _load_fake("simflash")  # flash, partition table
ota = _load_fake("simota")  # otadata, image check, bootloader

STATE_NAMES: dict[int, str] = dict(ota.STATE_NAMES)
_OP_NAMES: dict[int, str] = {v: k for k, v in sf.OP_CODES.items()}


@dataclass
class RunResult:
    kind: str                  # exit crash reset powercut watchdog panic deepsleep noboot timeout
    returncode: int
    stdout: str
    stderr: str
    ops: int                   # flash writes + sector erases + NVS commits in this run (-1: unknown)
    boot_ops: int              # ... of which the bootloader made
    slot: str | None           # the slot the bootloader started
    version: str | None        # app_desc version of that slot's image
    log: list[tuple[str, int, int]] = field(default_factory=list)  # (kind, flash address, length)
    boot_log: list[str] = field(default_factory=list)  # bootloader decisions, set_boot refusals
    why: str = ""
    reset_cause: int = PWRON_RESET  # what machine.reset_cause() said during this run
    elapsed: float = 0.0

    @property
    def rebooted(self) -> bool:
        """True when the board resets by itself after this run (reset, power cut, watchdog, panic)."""
        return self.kind in REBOOT_KINDS

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def __str__(self) -> str:
        return (f"RunResult({self.kind}, rc={self.returncode}, slot={self.slot}, version={self.version}, "
                f"ops={self.ops}, why={self.why!r})\n--- stdout\n{self.stdout}--- stderr\n{self.stderr}")


def _partitions_of(board: Any) -> list[list[Any]]:
    return [[p.name, p.type, p.subtype, p.offset, p.size, p.flags] for p in board.table.entries]


class SimBoard:
    """A simulated board living in ``simdir``. Use ``SimBoard.create`` for a new one."""

    def __init__(self, simdir: str | os.PathLike[str]):
        self.simdir = Path(simdir).resolve()
        cfg_path = self.simdir / "board.json"
        if not cfg_path.is_file():
            raise FileNotFoundError(f"no simulated board in {self.simdir} (use SimBoard.create)")
        self.cfg: dict[str, Any] = json.loads(cfg_path.read_text())
        self.last: RunResult | None = None

    # ---- creation ----
    @classmethod
    def create(cls, simdir: str | os.PathLike[str], board: str = "esp32-generic-4mb", *,
               image: bytes | None = None, version: str = "1.0.0", project_name: str = "mpota-app",
               secure_version: int = 0, sim_flags: str = "", rollback_supported: bool = True,
               wifi: str = "up", unique_id: str | None = None, device: str | None = "copy",
               config: dict[str, Any] | None = None, heap: int = 111000, fs_model: bool = False,
               fs_size: int | None = None) -> SimBoard:
        """Make a board in factory state: ``image`` (default: a genuine app image built for the
        board's chip with ``version``/``sim_flags``) in ota_0, blank otadata, partition table at
        its offset, the device package installed as /lib/mpota (``device``: "copy", "link",
        "mpy" — compiled with mpy-cross, as `mpota deploy` installs it — or None) and ``config``
        written to /mpota.json. ``fs_model``: the filesystem behaves like a littlefs on the vfs
        partition (sim/fakes/simfs.py: capacity ``fs_size`` or the partition's size, statvfs,
        ENOSPC; file operations as power-cut points with ``run(fs_cuts=[...])``).
        """
        from host_tools.boards import load_board
        from host_tools.partitions import build_binary
        from sim.images import build_sim_image

        b = load_board(board)
        root = Path(simdir).resolve()
        if (root / "board.json").exists():
            raise FileExistsError(f"{root} already holds a simulated board")
        (root / "fs" / "lib").mkdir(parents=True, exist_ok=True)
        uid = unique_id or hashlib.sha256(str(root).encode()).hexdigest()[:12]
        cfg = {
            "name": b.name, "chip": b.chip, "chip_id": b.chip_id, "chip_rev": _CHIP_REV.get(b.chip, 0),
            "flash_size": b.flash_size, "partition_table_offset": b.partition_table_offset,
            "partitions": _partitions_of(b), "rollback_supported": rollback_supported,
            "wifi": wifi, "unique_id": uid, "heap": heap, "fs_model": fs_model, "fs_size": fs_size,
        }
        with open(root / "flash.bin", "wb") as f:
            f.truncate(b.flash_size)  # sparse, all erased
        (root / "board.json").write_text(json.dumps(cfg))
        self = cls(root)
        self._factory_write(b.partition_table_offset, build_binary(b.table))
        if image is None:
            image = build_sim_image(b.chip, version, project_name, secure_version, flags=sim_flags)
        self.flash_slot("ota_0", image)
        if device:
            self.install_device(device)
        if config is not None:
            self.write_config(config)
        return self

    def install_device(self, mode: str = "copy", src: Path = DEVICE_PKG) -> None:
        """Install the device package as /lib/mpota: "copy", "link" (symlink) or "mpy"."""
        dest = self.fs / "lib" / "mpota"
        if dest.is_symlink() or dest.is_file():
            dest.unlink()
        elif dest.exists():
            shutil.rmtree(dest)
        if mode == "link":
            dest.symlink_to(src, target_is_directory=True)
        elif mode == "copy":
            shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif mode == "mpy":
            dest.mkdir(parents=True)
            for py in sorted(src.glob("*.py")):
                shutil.copyfile(compile_mpy(py), dest / (py.stem + ".mpy"))
        else:
            raise ValueError(f"unknown install mode {mode!r} (copy, link, mpy)")

    def write_config(self, config: dict[str, Any]) -> None:
        (self.fs / "mpota.json").write_text(json.dumps(config, indent=1))

    # ---- running ----
    @property
    def fs(self) -> Path:
        return self.simdir / "fs"

    @property
    def next_reset_cause(self) -> int:
        state = self._state()
        return int(state.get("next_cause", PWRON_RESET))

    def run(self, script: str | Path, interpreter: str = "micropython", *, heapsize: int | str | None = None,
            cut: int | tuple[int, str] | dict[str, Any] | None = None, timeout: float = 60.0,
            args: tuple[str, ...] | list[str] = (), reset_cause: int | None = None,
            wifi: str | None = None, env: dict[str, str] | None = None,
            fs_cuts: list[str] | None = None) -> RunResult:
        """Boot the board once and run ``script`` (code text, or a Path to a file).

        ``cut``: power cut at flash operation N (1-based, counted over writes, sector erases and
        NVS commits, bootloader included): ``N`` or ``(N, "before")`` skips it, ``(N, "after")``
        performs it, then the run ends as "powercut". ``heapsize`` is MicroPython's -X heapsize.
        """
        if isinstance(script, Path):
            script_path = script.resolve()
        else:
            script_path = self.simdir / "script.py"
            script_path.write_text(script)
        cause = reset_cause if reset_cause is not None else self.next_reset_cause
        runcfg: dict[str, Any] = {"reset_cause": cause, "cut": _cut_spec(cut), "fs_cuts": fs_cuts}
        if wifi is not None:
            runcfg["wifi"] = wifi
        (self.simdir / "run.json").write_text(json.dumps(runcfg))
        if interpreter == "micropython":
            # the bootloader first, in a process of its own (on a board it runs before
            # MicroPython and takes none of its heap), then the app with the heap asked for
            boot = compiled_fakes() / "boot.py"
            result = self._spawn([micropython_exe(), str(boot), "--boot", str(self.simdir)], timeout, env,
                                 import_path=BOARD_PATH)
            if result.returncode == 0 and (self.simdir / "boot.json").exists():
                cmd = [micropython_exe()]
                if heapsize is not None:
                    cmd += ["-X", f"heapsize={heapsize}"]
                cmd += [str(boot), "--app", str(self.simdir), str(script_path), *args]
                booted = result.elapsed
                result = self._spawn(cmd, timeout, env, append_log=True, import_path=BOARD_PATH)
                result.elapsed += booted
        elif interpreter == "cpython":
            # -c: the current folder comes first on the import path, as "" on a board (an app
            # imports its modules from the folder it is in)
            # (bytecode caches go beside the board, not into its filesystem, which has none)
            cmd = [sys.executable, "-S", "-X", f"pycache_prefix={self.simdir / 'pycache'}", "-c",
                   "import sys, simboot; simboot.main(sys.argv)", str(self.simdir), str(script_path), *args]
            result = self._spawn(cmd, timeout, env, import_path=[FAKES_DIR, self.fs / "lib"])
        else:
            raise ValueError(f"unknown interpreter {interpreter!r} (micropython, cpython)")
        result.reset_cause = cause
        nxt = _NEXT_CAUSE.get(result.kind, PWRON_RESET)
        self._save_state({"next_cause": nxt})
        self.last = result
        return result

    def boot_until_settled(self, script: str | Path, max_boots: int = 10, **kwargs: Any) -> list[RunResult]:
        """Run ``script``; while the board resets by itself (reset, power cut, watchdog, panic,
        deep sleep), boot it again. ``cut`` applies to the first boot only. Returns every run;
        the last one did not reboot unless ``max_boots`` ran out."""
        results: list[RunResult] = []
        for i in range(max_boots):
            if i:
                kwargs.pop("cut", None)
            res = self.run(script, **kwargs)
            results.append(res)
            if not res.rebooted:
                break
        return results

    def _spawn(self, cmd: list[str], timeout: float, env: dict[str, str] | None, *,
               import_path: list[str | Path], append_log: bool = False) -> RunResult:
        """Run one process of a boot; ``import_path``: where the board's code is imported from,
        after the script's own folder (the fakes); ``append_log``: the app phase after a separate
        boot phase (ops.log continues, stdout/stderr are appended to the boot phase's)."""
        out_path, err_path = self.simdir / "stdout.txt", self.simdir / "stderr.txt"
        res_path, wdt_path = self.simdir / "result.json", self.simdir / "wdt.json"
        log_path = self.simdir / "ops.log"
        for p in (res_path, wdt_path) if append_log else (res_path, wdt_path, log_path):
            p.unlink(missing_ok=True)
        penv = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MICROPY"))}
        penv = import_path_env("micropython" if cmd[0] == micropython_exe() else "cpython", import_path, penv)
        penv.update(env or {})
        start = time.monotonic()
        killed = None
        mode = "ab" if append_log else "wb"
        with open(out_path, mode) as out, open(err_path, mode) as err:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=penv,
                                    cwd=str(self.simdir))
            try:
                while True:
                    try:
                        proc.wait(timeout=0.05)
                        break
                    except subprocess.TimeoutExpired:
                        pass
                    now = time.monotonic()
                    wdt = _wdt_deadline(wdt_path)
                    if wdt is not None and now > wdt:
                        killed = "watchdog"
                    elif now - start > timeout:
                        killed = "watchdog" if wdt_path.exists() else "timeout"
                    if killed:
                        proc.kill()
                        proc.wait()
                        break
            except BaseException:
                proc.kill()
                proc.wait()
                raise
        elapsed = time.monotonic() - start
        stdout = out_path.read_text(errors="replace")
        stderr = err_path.read_text(errors="replace")
        rc = proc.returncode
        data: dict[str, Any] | None = None
        if res_path.exists():
            try:
                data = json.loads(res_path.read_text())
            except ValueError:
                data = None
        if data is not None:
            kind = data["kind"]
        elif killed:
            kind = killed
        else:
            kind = "crash"  # died before simboot could record anything (e.g. heap too small)
        d = data or {}
        log: list[tuple[str, int, int]] = []
        if log_path.exists():
            raw = log_path.read_bytes()
            raw = raw[: len(raw) - len(raw) % 9]
            for code, addr, n in struct.iter_unpack("<BII", raw):
                log.append((_OP_NAMES.get(code, "?"), addr, n))
        return RunResult(
            kind=kind, returncode=rc, stdout=stdout, stderr=stderr,
            ops=int(d.get("ops", -1)), boot_ops=int(d.get("boot_ops", -1)),
            slot=d.get("slot"), version=d.get("version"),
            log=log,
            boot_log=list(d.get("boot_log", [])),
            why=str(d.get("why", killed or "")), elapsed=elapsed,
        )

    # ---- inspection (reads the board's flash directly; never counts as an operation) ----
    def _flash(self) -> Any:
        return sf.Flash(str(self.simdir / "flash.bin"), self.cfg["flash_size"])

    def partition(self, label: str) -> Any:
        p = sf.find_part(self.cfg, label=label)
        if p is None:
            raise KeyError(f"no partition {label!r} on {self.cfg['name']}")
        return p

    def read(self, addr: int, n: int) -> bytes:
        fl = self._flash()
        try:
            return bytes(fl.read(addr, n))
        finally:
            fl.close()

    def read_slot(self, label: str, n: int | None = None, offset: int = 0) -> bytes:
        p = self.partition(label)
        return self.read(p.offset + offset, p.size - offset if n is None else n)

    def _factory_write(self, addr: int, data: bytes) -> None:
        fl = self._flash()
        try:
            start = addr - addr % sf.SECTOR
            end = (addr + len(data) + sf.SECTOR - 1) // sf.SECTOR * sf.SECTOR
            fl.erase(start, end - start)
            fl.write(addr, data)
        finally:
            fl.close()

    def flash_slot(self, label: str, image: bytes, erase_all: bool = False) -> None:
        """Write ``image`` into partition ``label`` as esptool would (erase what it covers, write)."""
        p = self.partition(label)
        if len(image) > p.size:
            raise ValueError(f"image of {len(image)} bytes does not fit {label} ({p.size} bytes)")
        fl = self._flash()
        try:
            n = p.size if erase_all else (len(image) + sf.SECTOR - 1) // sf.SECTOR * sf.SECTOR
            fl.erase(p.offset, n)
            fl.write(p.offset, image)
        finally:
            fl.close()

    def erase_partition(self, label: str) -> None:
        p = self.partition(label)
        fl = self._flash()
        try:
            fl.erase(p.offset, p.size)
        finally:
            fl.close()

    def otadata(self) -> list[dict[str, Any]]:
        """Both otadata entries: seq, state (int), state_name, crc_ok, valid, slot (label or None)."""
        fl = self._flash()
        try:
            od, two = ota.read_otadata(fl, self.cfg)
        finally:
            fl.close()
        if od is None:
            return []
        slots = sf.ota_slots(self.cfg)
        out = []
        for e in two:
            blank = e.seq == 0xFFFFFFFF
            out.append({
                "seq": e.seq, "state": e.state, "state_name": STATE_NAMES.get(e.state, hex(e.state)),
                "crc_ok": e.crc == ota.ota_crc(e.seq), "valid": e.valid(),
                "slot": None if blank or not slots else slots[(e.seq - 1) % len(slots)].label,
            })
        return out

    def ota_state(self, label: str) -> str | None:
        """State name of the newest otadata entry selecting slot ``label`` (None if none does)."""
        best: dict[str, Any] | None = None
        for e in self.otadata():
            if e["slot"] == label and e["crc_ok"] and (best is None or e["seq"] > best["seq"]):
                best = e
        return None if best is None else str(best["state_name"])

    def boot_slot(self) -> str | None:
        """What esp_ota_get_boot_partition() says (Partition(Partition.BOOT))."""
        fl = self._flash()
        try:
            p = ota.boot_partition(fl, self.cfg)
        finally:
            fl.close()
        return None if p is None else str(p.label)

    def next_boot_slot(self) -> str | None:
        """The slot the bootloader would start on the next boot (dry run: flash is not changed)."""
        fl = _DryFlash(self._flash())
        try:
            p = ota.bootloader(fl, self.cfg, [])
        finally:
            fl.close()
        return None if p is None else str(p.label)

    # The bootloader and esp_ota_ops in this process, on the board's flash (sim/fakes/simota.py):
    # for a test that runs device code in-process against the same otadata model.
    def power_on(self) -> str | None:
        """One boot's bootloader pass, its otadata writes included (PENDING_VERIFY -> ABORTED,
        NEW -> PENDING_VERIFY, a blank otadata initialised); the slot it starts."""
        fl = self._flash()
        try:
            p = ota.bootloader(fl, self.cfg, [])
        finally:
            fl.close()
        return None if p is None else str(p.label)

    def set_boot(self, label: str) -> None:
        """esp_ota_set_boot_partition(``label``) after its image check: the next otadata entry."""
        slots = [p.label for p in sf.ota_slots(self.cfg)]
        fl = self._flash()
        try:
            ota.rewrite_ota_data(fl, self.cfg, slots.index(label), self.cfg.get("rollback_supported", True))
        finally:
            fl.close()

    def mark_valid(self) -> None:
        """esp_ota_mark_app_valid_cancel_rollback() for the slot the otadata selects."""
        fl = self._flash()
        try:
            ota.mark_valid(fl, self.cfg)
        finally:
            fl.close()

    def verify_slot(self, label: str) -> str | None:
        """None when the slot holds an image the bootloader accepts, else the reason."""
        p = self.partition(label)
        fl = self._flash()
        try:
            why = ota.verify_image(fl, p.offset, p.size, self.cfg["chip_id"], self.cfg.get("chip_rev", 0))
        finally:
            fl.close()
        return None if why is None else str(why)

    def firmware(self, label: str) -> dict[str, Any]:
        """app_desc of the image in ``label``: version, project_name, secure_version, flags."""
        fl = self._flash()
        try:
            return dict(ota.firmware_info(fl, self.partition(label)))
        finally:
            fl.close()

    def nvs(self) -> dict[str, dict[str, int | bytes]]:
        """Committed NVS contents: {namespace: {key: int (i32) or bytes (blob)}}."""
        path = self.simdir / "nvs.json"
        if not path.exists():
            return {}
        raw = json.loads(path.read_text())
        out: dict[str, dict[str, int | bytes]] = {}
        for ns, items in raw.items():
            out[ns] = {k[1:]: (v if k[0] == "i" else bytes.fromhex(v)) for k, v in items.items()}
        return out

    def _state(self) -> dict[str, Any]:
        path = self.simdir / "harness.json"
        if path.exists():
            try:
                return dict(json.loads(path.read_text()))
            except ValueError:
                return {}
        return {}

    def _save_state(self, state: dict[str, Any]) -> None:
        (self.simdir / "harness.json").write_text(json.dumps(state))


class _DryFlash:
    """Flash view whose writes and erases land in memory (for next_boot_slot)."""

    def __init__(self, base: Any):
        self.base = base
        self.size = base.size
        self.sectors: dict[int, bytearray] = {}

    def close(self) -> None:
        self.base.close()

    def _sector(self, addr: int) -> bytearray:
        s = addr - addr % sf.SECTOR
        if s not in self.sectors:
            self.sectors[s] = bytearray(self.base.read(s, sf.SECTOR))
        return self.sectors[s]

    def read(self, addr: int, n: int) -> bytes:
        out = bytearray()
        while n > 0:
            sec = self._sector(addr) if addr - addr % sf.SECTOR in self.sectors else None
            off = addr % sf.SECTOR
            k = min(n, sf.SECTOR - off)
            out += sec[off:off + k] if sec is not None else self.base.read(addr, k)
            addr += k
            n -= k
        return bytes(out)

    def readinto(self, addr: int, buf: Any) -> None:
        buf[:] = self.read(addr, len(buf))

    def write(self, addr: int, data: bytes) -> None:
        for i, b in enumerate(bytes(data)):
            sec = self._sector(addr + i)
            sec[(addr + i) % sf.SECTOR] &= b

    def erase(self, addr: int, n: int) -> None:
        for a in range(addr, addr + n, sf.SECTOR):
            self.sectors[a] = bytearray(b"\xff" * sf.SECTOR)


def _cut_spec(cut: int | tuple[int, str] | dict[str, Any] | None) -> dict[str, Any] | None:
    if cut is None:
        return None
    if isinstance(cut, dict):
        op, when = int(cut["op"]), str(cut.get("when", "before"))
    elif isinstance(cut, tuple):
        op, when = int(cut[0]), str(cut[1])
    else:
        op, when = int(cut), "before"
    if op < 1 or when not in ("before", "after"):
        raise ValueError(f"bad cut {cut!r}: operation number >= 1, 'before' or 'after'")
    return {"op": op, "when": when}


def _wdt_deadline(path: Path) -> float | None:
    # The fake rewrites wdt.json (at most 4 times per timeout) while the app feeds the WDT;
    # a file older than 1.25 x timeout means nobody fed it: a real WDT has reset the chip.
    try:
        st = path.stat()
        timeout_ms = json.loads(path.read_text())["timeout_ms"]
    except (OSError, ValueError, KeyError):
        return None
    mtime_mono = time.monotonic() - (time.time() - st.st_mtime)
    return float(mtime_mono + 1.25 * timeout_ms / 1000 + _WDT_SLACK)


_FAKE_MODULES = ("simflash", "simota", "simstart", "simdown", "simfs", "esp32", "machine", "network",
                 "simboot")


def compiled_fakes() -> Path:
    """The fakes compiled by mpy-cross (cached by content): MicroPython boots skip compiling them.
    Holds boot.py, a two-line stand-in for simboot.py as the main script."""
    srcs = [FAKES / f"{m}.py" for m in _FAKE_MODULES]
    key = hashlib.sha256(b"".join(p.read_bytes() for p in srcs)).hexdigest()[:20]
    out = MPY_CACHE / f"fakes-{key}"
    if not out.exists():
        tmp = MPY_CACHE / f"fakes-{key}.{os.getpid()}.{threading.get_ident()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for src in srcs:
            shutil.copyfile(compile_mpy(src), tmp / f"{src.stem}.mpy")
        (tmp / "boot.py").write_text("import sys\nimport simboot\nsimboot.main(sys.argv)\n")
        try:
            os.rename(tmp, out)
        except OSError:  # another process or thread won the race
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def compile_mpy(py: Path) -> Path:
    """Compile ``py`` with mpy-cross into a shared cache (keyed by content); returns the .mpy path."""
    src = py.read_bytes()
    key = hashlib.sha256(src + py.name.encode()).hexdigest()[:24]
    out = MPY_CACHE / f"{py.stem}-{key}.mpy"
    if not out.exists():
        MPY_CACHE.mkdir(parents=True, exist_ok=True)
        # unique per process and thread: boards compile concurrently from threads and processes
        tmp = out.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        # -march=x64: the unix port on this host runs native/viper code (the fakes use viper)
        subprocess.run([mpy_cross_exe(), "-march=x64", "-o", str(tmp), "-s", py.name, str(py)], check=True,
                       capture_output=True)
        os.replace(tmp, out)
    return out
