"""The fleet simulator: N simulated boards running the real device code against a real server.

Every board is a ``sim.board.SimBoard`` (its own simdir: flash, NVS, filesystem) with the device
package installed in /lib/mpota and a /mpota.json like ``mpota deploy`` writes. One *poll cycle*
of a board is what a board left plugged in does between two update checks::

    boot (bootloader model; mpota.boot(): trial handling, confirm or roll back)
      -> Updater.update() (channel, eligibility, manifest, stream, set_boot, machine.reset())
      -> the board resets -> boot again (trial) ... until a boot ends without a reset.

Boards run under the MicroPython unix port (fidelity: the code a board runs, compiled to .mpy
as deployed) or CPython (scale), as subprocesses, at most ``workers`` at a time (default 2x
cores). Fault profiles give boards a harder life:

- ``flaky``: their HTTP goes through a loopback proxy that cuts some connections mid-response
  (the updater resumes with Range); ``slow``: a proxy that throttles to a slow link and adds
  latency; ``powercut``: a boot may lose power at a random flash write/erase/NVS commit;
  ``nowifi``: some boots have no Wi-Fi. Failing health is a property of a firmware image
  (``sim_flags="health=fail"``, sim/images.py: a broken sensor driver), read by the
  app's health check; it fails on boards that have the sensor (``sensor_groups``, default all).

    fleet = Fleet(tmp, server_url, feed_url, n=50, secret=secret, keys=keys, image=v1_image)
    fleet.register()            # POST /v1/devices for each board (group known before reports)
    summary = fleet.poll_all()  # one poll cycle for every board
    fleet.versions()            # {device_id: version the board boots next, read from its flash}
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sim.board import RunResult, SimBoard

DEFAULT_GROUPS: dict[str, int] = {"canary": 2, "internal": 3, "pilot": 5}
BOARD = "esp32-generic-4mb"


# ----------------------------------------------------------------------------- fault profiles
@dataclass(frozen=True)
class FaultProfile:
    name: str = "clean"
    drop_rate: float = 0.0          # share of HTTP connections cut somewhere in the response
    drop_within: int = 256 * 1024   # ... at a byte offset uniform in [0, drop_within)
    bytes_per_s: int = 0            # slow link (0: unthrottled)
    latency_ms: int = 0             # added before the first response byte
    powercut_rate: float = 0.0      # share of poll cycles with one power cut at a random flash op
    cut_within: int = 80            # ... the op number uniform in [1, cut_within] of the cycle's first boot
    nowifi_rate: float = 0.0        # share of poll cycles whose first boot has no Wi-Fi

    @property
    def needs_proxy(self) -> bool:
        return self.drop_rate > 0 or self.bytes_per_s > 0 or self.latency_ms > 0


PROFILES: dict[str, FaultProfile] = {
    "clean": FaultProfile(),
    "flaky": FaultProfile("flaky", drop_rate=0.4, drop_within=96 * 1024),
    "slow": FaultProfile("slow", bytes_per_s=256 * 1024, latency_ms=150),
    "powercut": FaultProfile("powercut", powercut_rate=1.0),
    "nowifi": FaultProfile("nowifi", nowifi_rate=0.5),
}


class FaultProxy:
    """A TCP proxy on 127.0.0.1 (port from the OS) in front of the server, injecting a profile's
    network faults per connection: cut the response at a random byte, throttle, add latency."""

    def __init__(self, target_url: str, profile: FaultProfile, seed: int = 0) -> None:
        parts = urlsplit(target_url)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.profile = profile
        self.seed = seed
        self.rng = random.Random(seed)
        self.connections = 0
        self.dropped = 0
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True,
                                        name=f"fault-proxy-{profile.name}")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("fault proxy did not start")

    def url_for(self, url: str) -> str:
        """``url`` (on the target server) rewritten to go through this proxy."""
        parts = urlsplit(url)
        return parts._replace(netloc=f"127.0.0.1:{self.port}").geturl()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()

    async def _handle(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        p = self.profile
        self.connections += 1
        drop_at = self.rng.randrange(p.drop_within) if self.rng.random() < p.drop_rate else None
        try:
            ureader, uwriter = await asyncio.open_connection(*self.target)
        except OSError:
            cwriter.close()
            return

        async def upstream() -> None:
            try:
                while data := await creader.read(65536):
                    uwriter.write(data)
                    await uwriter.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                try:
                    uwriter.write_eof()
                except (OSError, RuntimeError):
                    pass

        async def downstream() -> None:
            sent = 0
            first = True
            chunk = max(512, p.bytes_per_s // 20) if p.bytes_per_s else 65536
            try:
                while data := await ureader.read(chunk):
                    if first and p.latency_ms:
                        await asyncio.sleep(p.latency_ms / 1000)
                    first = False
                    if drop_at is not None and sent + len(data) > drop_at:
                        cwriter.write(data[: drop_at - sent])
                        await cwriter.drain()
                        self.dropped += 1
                        return
                    cwriter.write(data)
                    await cwriter.drain()
                    sent += len(data)
                    if p.bytes_per_s:
                        await asyncio.sleep(len(data) / p.bytes_per_s)
            except (ConnectionError, OSError):
                pass

        up = asyncio.ensure_future(upstream())
        try:
            await downstream()
        finally:
            up.cancel()
            for w in (cwriter, uwriter):
                try:
                    w.close()
                except (OSError, RuntimeError):
                    pass

    def close(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


# ----------------------------------------------------------------------------- the board's app
# What runs on every boot: main.py's start (mpota.boot with an application health check that
# fails on a firmware built with the sim flag health=fail), then one update check (which resets
# into the new firmware when it installs one), then a heartbeat. One "RESULT {json}" line.
BOARD_APP = r'''
import simboot, esp32, json
CONFIG = simboot.ROOT + "/mpota.json"
import mpota
fw = esp32.sim_firmware()
flags = fw.get("flags") or {}

# The application's own check: its sensor answers. A firmware built with the sim flag
# health=fail has a broken sensor driver: boards with the sensor fail this check.
def sensor_ok():
    try:
        with open(CONFIG) as f:
            has_sensor = json.load(f).get("sim_sensor", True)
    except Exception:
        has_sensor = True
    return not (has_sensor and flags.get("health") == "fail")

# The release's application files (mpota sign --app): into the active app folder,
# its own check (app_health.check) in the trial, as the main.py template does.
import os
from mpota.trial import app_folder
app = app_folder(CONFIG)
checks = [("sensor", sensor_ok)]
if app:
    os.chdir(app)  # the current folder is first on the board's import path
    try:
        import app_health
        checks.append(("app", app_health.check))
    except ImportError:
        pass
res = mpota.boot(checks=checks, timeout_ms=5000, config=CONFIG, wdt_ms=30000)
out = {"boot": res.outcome, "version": fw.get("version"), "slot": fw.get("slot"), "app": app}
try:
    from mpota.updater import Updater
    u = Updater.from_config(CONFIG)
    offer = u.update()
    out["update"] = "none" if offer is None else "installed"
except Exception as e:
    out["update"] = "failed"
    out["reason"] = getattr(e, "code", type(e).__name__)
try:
    from mpota.report import Reporter
    from mpota.state import shared
    cfg = u.cfg
    st = shared(cfg.root)  # the boot's one state, as boot() and the updater hold it
    Reporter(cfg, st, cfg.root).heartbeat(flush_ms=2000)
    st.save()
except Exception as e:
    out["heartbeat"] = repr(e)
print("RESULT " + json.dumps(out))
'''


def _result_line(run: RunResult) -> dict[str, Any]:
    for line in reversed(run.stdout.splitlines()):
        if line.startswith("RESULT "):
            try:
                return dict(json.loads(line[7:]))
            except ValueError:
                break
    return {}


@dataclass
class FleetDevice:
    device_id: str
    group: str
    profile: FaultProfile
    board: SimBoard
    token: str
    feed_url: str
    report_url: str
    cycles: int = 0
    boots: int = 0
    powercuts: int = 0
    last: dict[str, Any] = field(default_factory=dict)


@dataclass
class CycleOutcome:
    device_id: str
    runs: list[RunResult]
    result: dict[str, Any]      # the RESULT line of the last run (boot, update, version, ...)
    powercut: bool = False

    @property
    def settled(self) -> bool:
        return bool(self.runs) and not self.runs[-1].rebooted

    @property
    def kinds(self) -> list[str]:
        return [r.kind for r in self.runs]


@dataclass
class PollSummary:
    outcomes: list[CycleOutcome]
    seconds: float

    @property
    def boots(self) -> int:
        return sum(len(o.runs) for o in self.outcomes)

    def count(self, key: str) -> Counter[str]:
        return Counter(str(o.result.get(key)) for o in self.outcomes)

    @property
    def unsettled(self) -> list[str]:
        return [o.device_id for o in self.outcomes if not o.settled]

    @property
    def crashed(self) -> list[str]:
        return [o.device_id for o in self.outcomes if any(r.kind in ("crash", "timeout", "noboot")
                                                          for r in o.runs)]

    def line(self) -> str:
        c = self.count("boot")
        return (f"{len(self.outcomes)} boards, {self.boots} boots in {self.seconds:.1f} s: "
                f"confirmed {c.get('confirmed', 0)}, "
                f"rolled back {c.get('rolled_back', 0) + c.get('health_failed', 0)}, "
                f"power cuts {sum(o.powercut for o in self.outcomes)}")


def device_token(secret: bytes, device_id: str) -> str:
    return hmac.new(secret, device_id.encode(), hashlib.sha256).hexdigest()


def operator_token(secret: bytes) -> str:
    # host_tools.server.auth.operator_token (kept here so the simulator needs no server import)
    return hmac.new(secret, b"mpota operator", hashlib.sha256).hexdigest()


def group_plan(n: int, groups: Mapping[str, int]) -> list[str]:
    """Group of each of n boards: the named groups first (in order), the rest "general"."""
    out: list[str] = []
    for g, count in groups.items():
        out += [g] * count
    if len(out) > n:
        raise ValueError(f"{len(out)} boards in groups but only {n} boards")
    return out + ["general"] * (n - len(out))


class Fleet:
    """N simulated boards in ``workdir`` polling ``feed_url`` and reporting to ``server_url``.

    ``profiles`` maps a profile name (PROFILES) or FaultProfile to a share of the fleet (the
    rest is clean); boards are assigned deterministically from ``seed``.
    """

    def __init__(self, workdir: str | os.PathLike[str], server_url: str, feed_url: str, n: int, *,
                 secret: bytes, keys: Mapping[str, Iterable[str]], image: bytes,
                 factory_version: str | None = None,
                 groups: Mapping[str, int] | None = None, interpreter: str = "micropython",
                 board: str = BOARD, channel: str = "stable", prefix: str = "dev-",
                 profiles: Mapping[str | FaultProfile, float] | None = None, seed: int = 1,
                 profile_groups: Iterable[str] | None = None, sensor_groups: Iterable[str] | None = None,
                 workers: int | None = None, device_mode: str | None = None,
                 report_url: str | None = None, heapsize: str | None = None,
                 timeout_ms: int = 3000, retries: int = 4, run_timeout: float = 120.0,
                 on_board: Callable[[FleetDevice, CycleOutcome], None] | None = None,
                 fs_model: bool = False) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.server_url = server_url.rstrip("/")
        self.feed_url = feed_url if feed_url.endswith("/") else feed_url + "/"
        self.report_url = report_url or self.server_url + "/v1/reports"
        self.secret = secret
        self.channel = channel
        self.interpreter = interpreter
        self.heapsize = heapsize
        self.run_timeout = run_timeout
        self.workers = workers or max(2, 2 * (os.cpu_count() or 1))
        self.seed = seed
        self.rng = random.Random(seed)
        self.on_board = on_board
        self.proxies: dict[str, FaultProxy] = {}
        # app_elf_sha256 (hex) -> release version, for images that carry no version (stock builds)
        self.names: dict[str, str] = {}
        factory: dict[str, str] = {}
        if factory_version is not None:
            self.name_image(image, factory_version)
            if not _desc_version(image):  # what `mpota deploy` writes for a stock build
                factory = {"version": factory_version, "version_elf": _elf(image)}
        mode = device_mode or ("mpy" if interpreter == "micropython" else "link")

        shares = list((profiles or {}).items())
        names = group_plan(n, DEFAULT_GROUPS if groups is None else groups)
        allowed = None if profile_groups is None else set(profile_groups)
        eligible = [i for i in range(n) if allowed is None or names[i] in allowed]
        assigned = self._assign_profiles(n, eligible, shares)
        sensors = None if sensor_groups is None else set(sensor_groups)
        self.devices: list[FleetDevice] = []
        width = max(4, len(str(n)))
        try:
            for i in range(n):
                device_id = f"{prefix}{i + 1:0{width}d}"
                profile = assigned[i]
                feed, report = self.feed_url, self.report_url
                if profile.needs_proxy:
                    proxy = self._proxy(profile, seed + i)
                    feed, report = proxy.url_for(feed), proxy.url_for(report)
                token = device_token(secret, device_id)
                config = {
                    "device_id": device_id, "board": board, "group": names[i], "channel": channel,
                    "feed_url": feed, "report_url": report, "token": token, "allow_http": True,
                    "keys": {role: list(v) for role, v in keys.items()},
                    "timeout_ms": timeout_ms, "retries": retries, "backoff_ms": 50, "max_backoff_ms": 400,
                    # hardware the app's health check looks at (a firmware with health=fail breaks it)
                    "sim_sensor": sensors is None or names[i] in sensors,
                    **factory,
                }
                uid = hashlib.sha256(device_id.encode()).hexdigest()[:12]
                sb = SimBoard.create(self.workdir / device_id, board, image=image, device=mode,
                                     config=config, unique_id=uid, fs_model=fs_model)
                self.devices.append(FleetDevice(device_id, names[i], profile, sb, token, feed, report))
        except BaseException:
            self.close()
            raise
        self.by_id = {d.device_id: d for d in self.devices}

    def _assign_profiles(self, n: int, eligible: list[int],
                         shares: list[tuple[str | FaultProfile, float]]) -> list[FaultProfile]:
        out = [PROFILES["clean"]] * n
        order = list(eligible)
        random.Random(self.rng.random()).shuffle(order)
        pos = 0
        for key, share in shares:
            prof = PROFILES[key] if isinstance(key, str) else key
            count = round(share * len(eligible))
            for i in order[pos:pos + count]:
                out[i] = prof
            pos += count
        return out

    def _proxy(self, profile: FaultProfile, seed: int) -> FaultProxy:
        if profile.name not in self.proxies:
            self.proxies[profile.name] = FaultProxy(self.server_url, profile, seed)
        return self.proxies[profile.name]

    # ------------------------------------------------------------------ server side
    def register(self) -> int:
        """Register every board with the server (POST /v1/devices with the operator token: the
        group a rollout counts a board in is the operator's, not what the board claims)."""
        done = 0
        for d in self.devices:
            body = json.dumps({"device_id": d.device_id, "board": d.board.cfg["name"], "group": d.group,
                               "channel": self.channel})
            status, _ = http_json(self.server_url + "/v1/devices", "POST", body.encode(),
                                  {"Authorization": f"Bearer {operator_token(self.secret)}"})
            if status != 200:
                raise RuntimeError(f"registering {d.device_id}: HTTP {status}")
            done += 1
        return done

    def operator(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        return http_json(self.server_url + path, method, data,
                         {"Authorization": f"Bearer {operator_token(self.secret)}"})

    def rollout_status(self, rollout_id: str) -> dict[str, Any]:
        status, doc = self.operator("GET", f"/v1/rollouts/{rollout_id}")
        if status != 200:
            raise RuntimeError(f"rollout status {rollout_id}: HTTP {status} {doc}")
        return dict(doc)

    def inventory(self) -> dict[str, dict[str, Any]]:
        status, doc = self.operator("GET", "/v1/devices")
        if status != 200:
            raise RuntimeError(f"inventory: HTTP {status} {doc}")
        items = doc.get("devices", doc) if isinstance(doc, dict) else doc
        return {str(d["device_id"]): dict(d) for d in items}

    # ------------------------------------------------------------------ boards
    def cycle(self, dev: FleetDevice, max_boots: int = 8) -> CycleOutcome:
        """One poll cycle of one board: boot, and boot again after every reset, until it settles."""
        p = dev.profile
        cut = None
        cut_boot = -1
        # the dice of this board's n-th cycle: the same whatever order the workers run boards in
        rng = random.Random(f"{self.seed}:{dev.device_id}:{dev.cycles}")
        if p.powercut_rate and rng.random() < p.powercut_rate:
            # in the first boot of the cycle, somewhere in an update's flash traffic (a 4 KiB
            # block is an erase + a write). A cut during a trial boot makes the bootloader roll
            # the update back for good (the torture tests cover that); the fleet keeps it out
            # so a rollout's outcome does not depend on the dice.
            cut_boot = 0
            cut = (rng.randint(1, p.cut_within), rng.choice(("before", "after")))
        nowifi = p.nowifi_rate and rng.random() < p.nowifi_rate
        runs: list[RunResult] = []
        powercut = False
        for i in range(max_boots):
            kw: dict[str, Any] = {"timeout": self.run_timeout}
            if self.heapsize:
                kw["heapsize"] = self.heapsize
            if i == cut_boot and cut is not None:
                kw["cut"] = cut
            if i == 0 and nowifi:
                kw["wifi"] = "down"
            r = dev.board.run(BOARD_APP, self.interpreter, **kw)
            runs.append(r)
            powercut = powercut or r.kind == "powercut"
            if not r.rebooted:
                break
        out = CycleOutcome(dev.device_id, runs, _result_line(runs[-1]), powercut)
        dev.cycles += 1
        dev.boots += len(runs)
        dev.powercuts += powercut
        dev.last = out.result
        if self.on_board is not None:
            self.on_board(dev, out)
        return out

    def poll_all(self, devices: Iterable[FleetDevice] | None = None, max_boots: int = 8) -> PollSummary:
        """One poll cycle for every board (or the given ones), ``workers`` boards at a time."""
        todo = list(self.devices if devices is None else devices)
        start = time.monotonic()
        pool = ThreadPoolExecutor(self.workers, thread_name_prefix="fleet")
        try:
            futures = [pool.submit(self.cycle, d, max_boots) for d in todo]
            outcomes = [f.result() for f in futures]
        except BaseException:
            # Ctrl-C or a failing board: start no further boards (running ones end by themselves)
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        return PollSummary(outcomes, time.monotonic() - start)

    def name_image(self, image: bytes, version: str) -> None:
        """Say which release ``image`` is: boards running it count as ``version`` (the image itself
        may carry no version, as MicroPython's own builds)."""
        self.names[_elf(image)] = version

    def slot_version(self, board: SimBoard, slot: str | None) -> str | None:
        """The release the image in ``slot`` is: its app_desc version, else the name it was given."""
        if slot is None:
            return None
        head = board.read_slot(slot, 0x20 + 176)
        return _desc_version(head) or self.names.get(_elf(head))

    def versions(self) -> dict[str, str | None]:
        """{device_id: version of the image the board boots next}, read from its flash."""
        return {d.device_id: self.slot_version(d.board, d.board.next_boot_slot()) for d in self.devices}

    def device_state(self, device_id: str) -> dict[str, Any]:
        """The device's persistent mpota state (NVS namespace mpota, blob state)."""
        blob = self.by_id[device_id].board.nvs().get("mpota", {}).get("state")
        if not isinstance(blob, bytes):
            return {}
        return dict(json.loads(blob.decode()))

    def flash_report(self, device_id: str) -> dict[str, Any]:
        """What the board's flash says: boot slot, its otadata state, image valid?, version, state."""
        b = self.by_id[device_id].board
        slot = b.next_boot_slot()
        return {"slot": slot, "ota_state": None if slot is None else b.ota_state(slot),
                "valid": slot is not None and b.verify_slot(slot) is None,
                "version": self.slot_version(b, slot),
                "state": self.device_state(device_id)}

    def close(self) -> None:
        for p in self.proxies.values():
            p.close()
        self.proxies.clear()

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _elf(image: bytes) -> str:
    return image[0x20 + 144 : 0x20 + 176].hex()  # esp_app_desc_t.app_elf_sha256


def _desc_version(image: bytes) -> str:
    raw = image[0x20 + 16 : 0x20 + 48]
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def http_json(url: str, method: str = "GET", body: bytes | None = None,
              headers: Mapping[str, str] | None = None, timeout: float = 30.0) -> tuple[int, Any]:
    """A small JSON request over urllib: (status, decoded body or text)."""
    h = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(url, data=body, method=method, headers=h)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, data = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, data = exc.code, exc.read()
    try:
        return status, json.loads(data) if data else None
    except ValueError:
        return status, data.decode("utf-8", "replace")
