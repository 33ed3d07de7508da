"""`make demo`: the whole story on one machine, with the real tools, in a few minutes.

1. keys (release + rollout) and a fleet secret            `mpota keygen`, `mpota fleet secret`
2. genuine firmware images v1.0.0, v1.1.0 (good), v1.2.0 (a broken sensor driver: health=fail),
   built like MicroPython's own: no version or project name in their app description
3. sign and publish them (the version is given: the images carry none)   `mpota sign --version`,
   v1.1.0 with a patch from v1.0.0                          `mpota sign --delta-from`,
                                                            `mpota feed publish`
4. start the rollout server on a free loopback port         `mpota serve`
5. a fleet of simulated boards flashed with v1.0.0 (its version recorded in /mpota.json, as
   `mpota deploy` does for a stock build) running the real device code under the MicroPython
   unix port (canary/internal lab boards without the sensor, pilot and general field boards with
   it; a few general boards on a flaky network or losing power during updates)
6. roll v1.1.0 out through every stage to 100%              `mpota rollout start`, boards poll
   v1.1.0 goes out as a patch from v1.0.0 (`mpota sign --delta-from`): the boards rebuild it from
   their running slot; the bytes the patches saved, from the boards' installed reports on the
   server, are printed and checked
   then keys (sim/demo_keys.py): root keys sign keys document v1, every board takes it; the
   rollout key leaks: v2 replaces it, the running server switches key files, every board follows
   and refuses the leaked key's channel                     `mpota keys init|rotate`
7. roll v1.2.0 out: canary and internal (no sensor) pass, the pilot boards fail their health
   check and roll back by themselves, the pilot gate trips and the rollout pauses; a screenshot
   of the console's rollout page (headless Chromium, logged in as the operator) goes to build/
8. check the outcome on every board's flash and in the server inventory
9. application files with the firmware, on 4 boards of their own (channel apps): an app-only
   release (no firmware flashed, the trial is the next boot) is confirmed; then a firmware + app
   release whose app fails its own health check: firmware and app roll back together
10. print the status table

Exit 0 only when every expectation held (a FAILED line says which did not). Every process it
starts is stopped on the way out, also on Ctrl-C. Work files: demo-work/ (recreated each run).

    python -m sim.demo [--boards 50] [--interpreter micropython|cpython] [--workdir DIR] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sim.fleet import Fleet, PollSummary

REPO = Path(__file__).resolve().parent.parent

BOARD = "esp32-generic-4mb"
CHANNEL = "stable"
GROUPS = {"canary": 2, "internal": 3, "pilot": 5}
LAB_GROUPS = ("canary", "internal")          # boards without the sensor v1.2.0 breaks
FIELD_GROUPS = ("pilot", "general")
PLAN_FLAGS = ["--stages", "canary,internal,pilot,general", "--batch-size-percentage", "50",
              "--soak", "1s", "--min-finished", "2", "--timeout", "10m"]
APP_CHANNEL = "apps"  # the application-files stage's own channel and boards
CODE_BYTES = 160 * 1024  # machine code per image: a small app, so 50 boards update in seconds
DELTA_ROLLOUT = ("1.1.0", "1.0.0")  # (release, the release its patch is from)


class DemoFailed(Exception):
    pass


def next_release_code(code: bytes | None, version: str) -> bytes | None:
    """The machine code of each demo release: v1.0.0 the first CODE_BYTES of `code`; from v1.1.0 on,
    a release that rewrote two functions (4 KiB replaced by 6 KiB of other real code, 512 bytes
    elsewhere) and so moved everything after them, as a compiler's next build does."""
    if code is None or len(code) < CODE_BYTES + 8 * 1024:
        return None
    base = code[:CODE_BYTES]
    if version == "1.0.0":
        return base
    new = code[CODE_BYTES:CODE_BYTES + 8 * 1024]
    a, b = 40 * 1024, 120 * 1024
    return base[:a] + new[:6144] + base[a + 4096:b] + new[6144:6656] + base[b + 512:]


class Demo:
    def __init__(self, workdir: Path, boards: int, interpreter: str, workers: int | None) -> None:
        self.work = workdir
        self.n = boards
        self.interpreter = interpreter
        self.workers = workers
        self.step_no = 0
        self.failures: list[str] = []
        self.procs: list[subprocess.Popen[str]] = []
        self.env = dict(os.environ)
        self.fleet: Fleet | None = None
        self.server_url = ""
        self.t0 = time.monotonic()
        exe = Path(sys.executable).with_name("mpota")
        self.mpota = [str(exe)] if exe.exists() else [sys.executable, "-m", "host_tools.cli"]

    # ------------------------------------------------------------------ output
    def step(self, text: str) -> None:
        self.step_no += 1
        print(f"\n[{self.step_no}] {text}  (t+{time.monotonic() - self.t0:.0f}s)", flush=True)

    def say(self, text: str) -> None:
        print(f"    {text}", flush=True)

    def expect(self, ok: bool, what: str, detail: str = "") -> bool:
        if ok:
            self.say(f"ok: {what}")
        else:
            msg = what + (f" ({detail})" if detail else "")
            self.failures.append(msg)
            print(f"    FAILED: {msg}", flush=True)
        return ok

    def rel(self, p: Path | str) -> str:
        try:
            return str(Path(p).resolve().relative_to(Path.cwd()))
        except ValueError:
            return str(p)

    def cli(self, *args: str, show: bool = True, echo: bool = True, expect_exit: int = 0) -> str:
        shown = " ".join(self.rel(a) if os.sep in a else a for a in args)
        if echo:
            print(f"    $ mpota {shown}", flush=True)
        proc = subprocess.run([*self.mpota, *args], capture_output=True, text=True, timeout=300, env=self.env)
        out = proc.stdout.rstrip()
        if show and out:
            for line in out.splitlines():
                print(f"      {line}")
        if proc.returncode != expect_exit:
            raise DemoFailed(f"`mpota {shown}` exited {proc.returncode}, not {expect_exit}: "
                             f"{proc.stderr.strip() or out}")
        return out

    # ------------------------------------------------------------------ the story
    def run(self) -> int:
        print(f"mpota demo: {self.n} simulated ESP32 boards ({self.interpreter}), work files in "
              f"{self.rel(self.work)}/", flush=True)
        self.keys_and_secret()
        self.images()
        self.sign_and_publish()
        self.serve()
        self.start_fleet()
        self.rollout_good()
        self.delta_savings("r-1.1.0")
        from sim.demo_keys import rotate_rollout_key

        rotate_rollout_key(self)
        self.rollout_bad()
        self.console_screenshot()
        self.app_bundles()
        self.final_status()
        took = time.monotonic() - self.t0
        if self.failures:
            print(f"\nFAILED: the story did not happen as expected ({len(self.failures)} problem(s), "
                  f"{took:.0f} s):", flush=True)
            for f in self.failures:
                print(f"  - {f}")
            return 1
        print(f"\nOK: the whole story happened as expected in {took:.0f} s.", flush=True)
        return 0

    def keys_and_secret(self) -> None:
        self.step("Keys: a release key (kept offline) and a rollout key (on the server), a fleet secret")
        keys = self.work / "keys"
        keys.mkdir(parents=True)
        self.release_key = keys / "release.pem"
        self.rollout_key = keys / "rollout.pem"
        self.secret_path = self.work / "fleet.secret"
        self.cli("keygen", str(self.release_key), "--role", "release")
        self.cli("keygen", str(self.rollout_key), "--role", "rollout")
        self.cli("fleet", "secret", str(self.secret_path))
        from host_tools.fleet import load_secret
        from host_tools.keys import load_public_key

        self.secret = load_secret(self.secret_path)
        self.device_keys = {
            "release": [load_public_key(str(self.release_key) + ".pub").public_hex],
            "rollout": [load_public_key(str(self.rollout_key) + ".pub").public_hex],
        }

    def images(self) -> None:
        self.step("Firmware: genuine ESP32 app images v1.0.0, v1.1.0 (good), v1.2.0 (broken sensor driver), "
                  "built like MicroPython's own: no version in their app description")
        from sim.images import build_sim_image

        code: bytes | None = None
        try:
            from bench.bench_wire import firmware_code

            code = firmware_code()[0][:CODE_BYTES + 8 * 1024]  # (the rest: code v1.1.0 gains)
            self.say(f"each carries {len(code) // 1024} KiB of real compiled machine code "
                     "(from PyPI binaries)")
        except Exception as exc:  # no unix-port library: filler code, same sizes
            self.say(f"(filler code: {exc})")
        out = self.work / "images"
        out.mkdir()
        self.image_paths: dict[str, Path] = {}
        for version, flags in (("1.0.0", ""), ("1.1.0", ""), ("1.2.0", "health=fail")):
            # as MicroPython's ESP32 builds: CONFIG_APP_EXCLUDE_PROJECT_VER_VAR / _NAME_VAR=y
            # one build seed for the filler segments when the code tells the releases apart, so
            # that a patch carries what changed in the code, not fresh random filler
            rel_code = next_release_code(code, version)
            img = build_sim_image("esp32", "", "", 0, code=rel_code, code_size=CODE_BYTES, flags=flags,
                                  build="demo" if rel_code is not None else version)
            path = out / f"app-{version}.bin"
            path.write_bytes(img)
            self.image_paths[version] = path
            self.say(f"{self.rel(path)}: {len(img)} bytes{'  (sim flag ' + flags + ')' if flags else ''}")
        self.cli("image", "info", str(self.image_paths["1.2.0"]), show=False)
        self.say("`mpota image info` accepts them (header, segments, checksum, SHA-256, app_desc); their "
                 "app_desc version is empty, only app_elf_sha256 tells the builds apart")

    def sign_and_publish(self) -> None:
        self.step("Sign each image into a release (zlib, 4 KiB window) and publish it to the static feed")
        self.feed = self.work / "feed"
        rel = self.work / "releases"
        rel.mkdir()
        try:  # an image without a version of its own cannot be signed without one
            self.cli("sign", "--key", str(self.release_key), "--board", BOARD, "--out", str(rel / "unnamed"),
                     str(self.image_paths["1.1.0"]), show=False)
            self.expect(False, "`mpota sign` refuses a stock image without --version", "it signed it")
        except DemoFailed as exc:
            why = str(exc).split(": mpota: error: ", 1)[-1]
            self.say(f"without --version, refused: {why}")
        for version in ("1.0.0", "1.1.0", "1.2.0"):
            delta = ["--delta-from", str(rel / DELTA_ROLLOUT[1])] if version == DELTA_ROLLOUT[0] else []
            self.cli("sign", "--key", str(self.release_key), "--board", BOARD, "--version", version,
                     "--compress", "--window-bits", "12", "--notes", f"demo release {version}", *delta,
                     "--out", str(rel / version), str(self.image_paths[version]), show=bool(delta))
        self.cli("feed", "publish", "--feed", str(self.feed), "--channel", CHANNEL, "--key",
                 str(self.rollout_key), str(rel / "1.0.0"), show=False)
        self.say("v1.0.0 is the fleet's current release (channel: active, 100%)")
        for version in ("1.1.0", "1.2.0"):
            # staged, not offered: a paused channel document makes devices start nothing
            self.cli("feed", "publish", "--feed", str(self.feed), "--channel", CHANNEL, "--key",
                     str(self.rollout_key), "--state", "paused", "--rollout-id", f"staged-{version}",
                     str(rel / version), show=False)
        self.say("v1.1.0 and v1.2.0 are in the feed, not offered yet (channel paused) until a rollout starts")
        self.cli("feed", "verify", str(self.feed), "--release-pubkey", str(self.release_key) + ".pub",
                 "--rollout-pubkey", str(self.rollout_key) + ".pub", show=False)
        self.say("`mpota feed verify`: every signature checks")

    def serve(self) -> None:
        self.step("Start the rollout server: the feed, device reports, staged rollouts")
        cmd = [*self.mpota, "serve", "--feed", str(self.feed), "--db", f"sqlite:///{self.work / 'mpota.db'}",
               "--port", "0", "--fleet-secret", str(self.secret_path), "--rollout-key", str(self.rollout_key),
               "--tick", "0.5"]
        print(f"    $ mpota serve --feed {self.rel(self.feed)} --port 0 --fleet-secret "
              f"{self.rel(self.secret_path)} --rollout-key {self.rel(self.rollout_key)} --tick 0.5",
              flush=True)
        log = open(self.work / "server.log", "w")
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True)
        self.procs.append(proc)
        assert proc.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("serving on "):
                self.server_url = line.split()[-1].strip()
                break
        if not self.server_url:
            raise DemoFailed(f"mpota serve did not start (see {self.rel(self.work / 'server.log')})")
        self.say(f"serving on {self.server_url} (rollout console: {self.server_url}/, operator login), "
                 f"pid {proc.pid}")
        # what an operator would export; kept to our own commands (the demo also runs in-process in tests)
        self.env.update(MPOTA_SERVER=self.server_url, MPOTA_FLEET_SECRET=str(self.secret_path))

    def start_fleet(self) -> None:
        general = self.n - sum(GROUPS.values())
        self.step(f"A fleet of {self.n} simulated boards on v1.0.0: canary {GROUPS['canary']}, internal "
                  f"{GROUPS['internal']}, pilot {GROUPS['pilot']}, general {general}")
        self.say("each: own flash/NVS/filesystem, mpota compiled to .mpy in /lib, /mpota.json with its token")
        self.say(f"canary+internal are lab boards (no sensor); a few general boards have a flaky network "
                 f"or lose power mid-update; {self.interpreter} runs the device code")
        self.fleet = Fleet(self.work / "boards", self.server_url, self.server_url + "/", self.n,
                           secret=self.secret, keys=self.device_keys,
                           image=self.image_paths["1.0.0"].read_bytes(), factory_version="1.0.0",
                           groups=GROUPS,
                           interpreter=self.interpreter, workers=self.workers,
                           profiles={"flaky": 0.1, "powercut": 0.1}, profile_groups=("general",),
                           sensor_groups=FIELD_GROUPS, seed=7)
        for version in ("1.1.0", "1.2.0"):  # how the demo itself tells the images apart on a board's flash
            self.fleet.name_image(self.image_paths[version].read_bytes(), version)
        self.fleet.register()
        faults = Counter(d.profile.name for d in self.fleet.devices if d.profile.name != "clean")
        self.say(f"registered {self.n} devices with the server; fault profiles: "
                 f"{', '.join(f'{k} {v}' for k, v in sorted(faults.items())) or 'none'}")
        s = self.fleet.poll_all()
        self.say(f"first poll: {s.line()}")
        vers = Counter(self.fleet.versions().values())
        self.expect(vers == Counter({"1.0.0": self.n}), f"all {self.n} boards run v1.0.0", str(vers))

    # ------------------------------------------------------------------ rollouts
    def drive(self, rid: str, until: set[str], max_rounds: int = 14) -> dict[str, Any]:
        fleet = self.fleet
        assert fleet is not None
        st = fleet.rollout_status(rid)
        for rnd in range(1, max_rounds + 1):
            before = (st["step"]["index"], st["rollout"]["state"])
            s = fleet.poll_all()
            st = self._settle_status(rid, before)
            self._round_line(rnd, s, st)
            if st["rollout"]["state"] in until:
                return st
        raise DemoFailed(f"rollout {rid} did not reach {'/'.join(sorted(until))} in {max_rounds} poll "
                         f"rounds: {st['next'].get('waiting_for') or st['next']}")

    def _settle_status(self, rid: str, before: tuple[int, str]) -> dict[str, Any]:
        # give the server a moment to judge the reports (it ticks every 0.5 s, plus soak)
        assert self.fleet is not None
        deadline = time.monotonic() + 4
        while True:
            st = self.fleet.rollout_status(rid)
            if (st["step"]["index"], st["rollout"]["state"]) != before or time.monotonic() > deadline:
                return st
            time.sleep(0.25)

    def _round_line(self, rnd: int, s: PollSummary, st: dict[str, Any]) -> None:
        assert self.fleet is not None
        vers = Counter(v for v in self.fleet.versions().values())
        step = st["step"]
        where = f"{step['stage']} ({', '.join(step['groups'])}{' + ' if step['percentage'] else ''}"
        where += f"{step['percentage']:g}% of the rest)" if step["percentage"] else ")"
        state = st["rollout"]["state"]
        drops = sum(p.dropped for p in self.fleet.proxies.values())
        self.say(f"poll {rnd}: {s.line()}, connections cut so far {drops}")
        boards = ", ".join(f"v{k} x{v}" for k, v in sorted(vers.items(), key=lambda kv: str(kv[0])))
        self.say(f"        server: {state}, step {step['index'] + 1}/{step['count']} {where}; "
                 f"boards: {boards}")
        if s.crashed:
            self.say(f"        (boards with a crashed run: {', '.join(s.crashed[:5])})")

    def start_rollout(self, version: str, rid: str) -> None:
        self.cli("rollout", "start", "--board", BOARD, "--version", version, "--id", rid, *PLAN_FLAGS,
                 show=False)
        assert self.fleet is not None
        st = self.fleet.rollout_status(rid)
        ro = st["channel_rollout"]
        self.say(f"rollout {rid} started: channel re-signed for groups {ro['groups']}, {ro['percentage']:g}%")

    def rollout_good(self) -> None:
        self.step("Roll v1.1.0 out: canary -> internal -> pilot -> general 50% -> 100% (boards poll; the "
                  "server advances by itself)")
        self.start_rollout("1.1.0", "r-1.1.0")
        st = self.drive("r-1.1.0", {"completed", "paused", "aborted"})
        self.expect(st["rollout"]["state"] == "completed", "rollout r-1.1.0 completed every stage",
                    f"state {st['rollout']['state']}: {st['rollout'].get('reason')}")
        assert self.fleet is not None
        for _ in range(3):  # boards that polled before the last step pick it up on their next poll
            behind = [d for d, v in self.fleet.versions().items() if v != "1.1.0"]
            if not behind:
                break
            s = self.fleet.poll_all()
            self.say(f"next poll ({len(behind)} board(s) had not polled since the last step): {s.line()}")
        flash = {d: self.fleet.flash_report(d) for d in self.fleet.by_id}
        bad = [d for d, f in flash.items()
               if not (f["version"] == "1.1.0" and f["ota_state"] == "VALID" and f["valid"]
                       and not f["state"].get("pending"))]
        self.expect(not bad, f"flash: all {self.n} boards boot a valid, confirmed v1.1.0",
                    f"{len(bad)} not: {', '.join(bad[:5])}")
        inv = self.fleet.inventory()
        off = [d for d in self.fleet.by_id if inv.get(d, {}).get("version") != "1.1.0"]
        self.expect(not off, f"server inventory: all {self.n} devices report v1.1.0",
                    f"{len(off)} not: {', '.join(off[:5])}")
        cuts = sum(d.powercuts for d in self.fleet.devices)
        self.say(f"(power cuts survived so far: {cuts}; dropped connections resumed: "
                 f"{sum(p.dropped for p in self.fleet.proxies.values())})")

    def delta_savings(self, rid: str) -> None:
        """The rollout went out as patches: what the boards reported installing (the server's events
        and its rollout status, not the feed's file sizes), checked against their flash."""
        fleet = self.fleet
        assert fleet is not None
        status, doc = fleet.operator("GET", "/v1/events?limit=10000")
        if status != 200:
            raise DemoFailed(f"GET /v1/events: HTTP {status} {doc}")
        last: dict[str, dict[str, Any]] = {}  # device -> its last installed report's detail
        for e in doc["events"]:
            if e["event"] == "installed" and e.get("rollout") == rid:
                last[e["device_id"]] = e.get("detail") or {}
        applied = {d: x for d, x in last.items() if x.get("delta") == "applied"}
        wire = sum(int(x["bytes"]) for x in applied.values())
        full = sum(int(x["full_bytes"]) for x in applied.values())
        how = Counter("delta" if x.get("delta") == "applied" else str(x.get("delta") or "full")
                      for x in last.values())
        self.say(f"{rid} installs as the boards reported them: "
                 f"{', '.join(f'{k} {v}' for k, v in sorted(how.items()))}")
        if full:
            self.say(f"the {len(applied)} patched boards downloaded {wire} bytes instead of {full} "
                     f"({wire / full:.3f} of the compressed image): {full - wire} bytes saved on the wire")
        inst = fleet.rollout_status(rid).get("installs") or {}
        self.expect(inst.get("delta") == len(applied) and inst.get("bytes_saved") == full - wire,
                    "`mpota rollout status` counts the same delta installs and bytes saved",
                    f"status {inst}, events {len(applied)} / {full - wire}")
        clean = {d.device_id for d in fleet.devices if d.profile.name == "clean"}
        flash = {d: fleet.flash_report(d) for d in fleet.by_id}
        new = DELTA_ROLLOUT[0]
        on_new = {d for d, f in flash.items() if f["version"] == new and f["ota_state"] == "VALID"}
        patched = on_new & set(applied)
        self.expect(clean <= patched and wire < full,
                    f"{len(patched)} boards (every board without a fault profile among them) confirmed "
                    f"v{DELTA_ROLLOUT[0]} rebuilt from a patch of their running v{DELTA_ROLLOUT[1]}",
                    f"not patched: {', '.join(sorted(clean - patched)[:5])}")

    def rollout_bad(self) -> None:
        self.step("Roll v1.2.0 out: its sensor driver is broken (the health check fails on boards with "
                  "the sensor)")
        self.start_rollout("1.2.0", "r-1.2.0")
        st = self.drive("r-1.2.0", {"completed", "paused", "aborted"})
        ro = st["rollout"]
        self.expect(ro["state"] == "paused", "rollout r-1.2.0 paused itself",
                    f"state {ro['state']}")
        self.expect(st["step"]["stage"] == "pilot" and "pilot" in str(ro.get("reason")),
                    "the pilot gate tripped", f"stage {st['step']['stage']}, reason {ro.get('reason')!r}")
        self.say(f"server: {ro.get('reason')}")
        assert self.fleet is not None
        s = self.fleet.poll_all()
        self.say(f"one more poll while paused: {s.line()}")
        self.check_bad_outcome()

    def console_screenshot(self) -> None:
        """What an operator sees at that moment: the console's page of the paused rollout."""
        from host_tools.fleet import load_secret
        from host_tools.server.auth import operator_token
        from sim.browser import console_screenshot, missing

        why = missing()
        if why is not None:
            self.say(f"(no console screenshot: {why})")
            return
        out = REPO / "build" / "console-demo-r-1.2.0.png"
        try:
            console_screenshot(self.server_url, operator_token(load_secret(self.secret_path)),
                               "/console/rollouts/r-1.2.0", out, "tr[data-stage='pilot'] .badge.fail")
        except Exception as exc:  # the story does not depend on the picture; say why there is none
            self.expect(False, "console screenshot", f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
            return
        self.say(f"the console at {self.server_url}/ shows it (operator login): screenshot {self.rel(out)}")

    def check_bad_outcome(self) -> None:
        fleet = self.fleet
        assert fleet is not None
        inv = fleet.inventory()
        tried: list[str] = []
        for dev in fleet.devices:
            f = fleet.flash_report(dev.device_id)
            failed = [list(x) for x in f["state"].get("failed") or []]
            if ["1.2.0", "r-1.2.0"] in failed:
                tried.append(dev.device_id)
        groups = {d.device_id: d.group for d in fleet.devices}
        by_group = Counter(groups[d] for d in tried)
        self.say(f"boards whose v1.2.0 trial failed: {len(tried)} ({dict(by_group)}); the other pilot "
                 "boards polled after the pause and started nothing")
        self.expect(set(by_group) == {"pilot"} and by_group["pilot"] >= 2,
                    "only pilot boards with the sensor tried v1.2.0 (at least the 2 the gate needs), "
                    "failed their health check and rolled back by themselves", str(dict(by_group)))
        bad_flash, bad_inv = [], []
        for d in tried:
            f = fleet.flash_report(d)
            if not (f["version"] == "1.1.0" and f["valid"] and f["ota_state"] == "VALID"
                    and not f["state"].get("pending")):
                bad_flash.append(f"{d}: {f['version']} {f['ota_state']}")
            i = inv.get(d, {})
            if i.get("version") != "1.1.0" or i.get("last_event") not in ("rolled_back", "heartbeat"):
                bad_inv.append(f"{d}: {i.get('version')} {i.get('last_event')}")
        self.expect(bool(tried) and not bad_flash, "flash: every board that failed v1.2.0 boots its valid "
                    "v1.1.0 again, no update pending", "; ".join(bad_flash[:5]))
        self.expect(bool(tried) and not bad_inv, "server inventory: those boards are on v1.1.0, rolled back",
                    "; ".join(bad_inv[:5]))
        general = [d.device_id for d in fleet.devices if d.group == "general"]
        gen_vers = Counter(fleet.flash_report(d)["version"] for d in general)
        self.expect(gen_vers == Counter({"1.1.0": len(general)}),
                    f"the {len(general)} general boards never got v1.2.0 (rollout paused before general)",
                    str(gen_vers))
        lab = [d.device_id for d in fleet.devices if d.group in LAB_GROUPS]
        lab_vers = Counter(fleet.flash_report(d)["version"] for d in lab)
        self.expect(lab_vers == Counter({"1.2.0": len(lab)}),
                    f"the {len(lab)} lab boards (canary, internal; no sensor) passed and run v1.2.0",
                    str(lab_vers))

    # ------------------------------------------------------------------ application files
    def app_bundles(self, n: int = 4) -> None:
        """A self-contained stage: boards of their own on channel `apps`, releases with app files."""
        self.step(f"Application files with the firmware: {n} boards of their own (channel {APP_CHANNEL}) "
                  "get an app-only release, then firmware + app whose app fails its own health check")
        src = self.work / "apps"
        for version, healthy in (("1.0.1", True), ("1.1.1", False)):
            d = src / version
            (d / "lib").mkdir(parents=True)
            (d / "app_health.py").write_text(f"# the app's own trial check\ndef check():\n"
                                             f"    return {healthy}\n")
            (d / "app_main.py").write_text(f"VERSION = {version!r}\n\n\ndef step():\n    pass\n")
            (d / "lib" / "sensor.py").write_text("def read():\n    return 21.5\n")
        rel = self.work / "releases"
        mpy = ["--mpy"] if self.interpreter == "micropython" else []  # .mpy for the boards' MicroPython
        self.cli("sign", "--key", str(self.release_key), "--board", BOARD, "--version", "1.0.1",
                 "--app", str(src / "1.0.1"), *mpy, "--out", str(rel / "app-1.0.1"), show=False)
        self.cli("sign", "--key", str(self.release_key), "--board", BOARD, "--version", "1.1.1", "--compress",
                 "--window-bits", "12", "--app", str(src / "1.1.1"), *mpy, "--out", str(rel / "app-1.1.1"),
                 str(self.image_paths["1.1.0"]), show=False)
        out = self.cli("verify", str(rel / "app-1.1.1"), "--pubkey", str(self.release_key) + ".pub",
                       show=False)
        self.say("`mpota sign --app` (v1.0.1: app only; v1.1.1: v1.1.0's firmware + an app whose check "
                 "fails); `mpota verify` shows the bundle:")
        for line in out.splitlines():
            if line.startswith(("app:", "  ")):
                self.say("  " + line.strip())
        fleet = Fleet(self.work / "app-boards", self.server_url, self.server_url + "/", n, secret=self.secret,
                      keys=self.device_keys, image=self.image_paths["1.0.0"].read_bytes(),
                      factory_version="1.0.0", groups={}, interpreter=self.interpreter, workers=self.workers,
                      channel=APP_CHANNEL, prefix="app-", fs_model=True, seed=11)
        try:
            fleet.name_image(self.image_paths["1.1.0"].read_bytes(), "1.1.1")
            fleet.register()
            self._app_only(fleet, rel / "app-1.0.1")
            self._app_and_firmware_fail(fleet, rel / "app-1.1.1")
        finally:
            fleet.close()

    def _publish_app(self, fleet: Fleet, release: Path, what: str) -> None:
        self.cli("feed", "publish", "--feed", str(self.feed), "--channel", APP_CHANNEL, "--key",
                 str(self.rollout_key), str(release), show=False)
        s = fleet.poll_all()
        self.say(f"{what} published on channel {APP_CHANNEL}; one poll: {s.line()}")

    # Every board through `wrong` (its board, state, flash report and app record: what is wrong,
    # or None); the demo expects none wrong.
    def _expect_boards(self, fleet: Fleet, wrong: Any, good: str) -> None:
        bad = []
        for d, dev in fleet.by_id.items():
            st, f = fleet.device_state(d), fleet.flash_report(d)
            app = st.get("app") or {}
            why = wrong(dev.board, st, f, app)
            if why is not None:
                bad.append(f"{d}: app {app.get('version')}, firmware {f['version']} in {f['slot']}{why}")
        self.expect(not bad, f"all {len(fleet.devices)} boards {good}", "; ".join(bad[:4]))

    def _app_only(self, fleet: Fleet, release: Path) -> None:
        self._publish_app(fleet, release, "v1.0.1 (app only)")

        def wrong(board: Any, st: dict[str, Any], f: dict[str, Any], app: dict[str, Any]) -> str | None:
            ok = (app.get("version") == "1.0.1" and app.get("slot") == "a" and not st.get("pending")
                  and f["version"] == "1.0.0" and f["slot"] == "ota_0"
                  and (board.fs / "app.a" / "lib").is_dir())
            return None if ok else ""

        self._expect_boards(fleet, wrong, "confirmed app v1.0.1 in /app.a and kept firmware v1.0.0 in ota_0 "
                            "(no firmware flashed)")

    def _app_and_firmware_fail(self, fleet: Fleet, release: Path) -> None:
        self._publish_app(fleet, release, "v1.1.1 (firmware + app)")

        def wrong(board: Any, st: dict[str, Any], f: dict[str, Any], app: dict[str, Any]) -> str | None:
            tried = fleet.slot_version(board, "ota_1") == "1.1.1" and (board.fs / "app.b").is_dir()
            failed = any(list(x)[:1] == ["1.1.1"] for x in st.get("failed") or [])
            ok = (tried and failed and app.get("version") == "1.0.1" and app.get("slot") == "a"
                  and f["version"] == "1.0.0" and f["slot"] == "ota_0" and f["ota_state"] == "VALID"
                  and not st.get("pending"))
            return None if ok else f", tried {tried}, failed {failed}"

        self._expect_boards(fleet, wrong, "flashed v1.1.1 and its app, failed the app's health check on "
                            "trial and rolled back firmware (v1.0.0, ota_0) and app (v1.0.1, /app.a) "
                            "together")

    def final_status(self) -> None:
        self.step("Final status")
        print("    $ mpota rollout status r-1.1.0", flush=True)
        self.cli("rollout", "status", "r-1.1.0", echo=False)
        print("    $ mpota rollout status r-1.2.0 --history   # exit status 3: paused", flush=True)
        self.cli("rollout", "status", "r-1.2.0", "--history", echo=False, expect_exit=3)
        assert self.fleet is not None
        self.say(f"(boards booted {sum(d.boots for d in self.fleet.devices)} times in all, "
                 f"{sum(d.powercuts for d in self.fleet.devices)} power cuts)")

    # ------------------------------------------------------------------ cleanup
    def stop(self) -> None:
        if self.fleet is not None:
            self.fleet.close()
        for proc in self.procs:
            # Ctrl-C first (the server shuts down cleanly), then SIGTERM (SIGINT may be ignored,
            # e.g. in a background job), then SIGKILL; each to the process group it leads
            for sig, wait in ((signal.SIGINT, 3), (signal.SIGTERM, 5), (signal.SIGKILL, 10)):
                if proc.poll() is not None:
                    break
                try:
                    os.killpg(proc.pid, sig)
                    proc.wait(wait)
                except subprocess.TimeoutExpired:
                    continue
                except ProcessLookupError:
                    break
            if proc.stdout is not None:
                proc.stdout.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--boards", type=int, default=50, help="fleet size (default 50, at least 15)")
    parser.add_argument("--interpreter", choices=("micropython", "cpython"), default="micropython")
    parser.add_argument("--workdir", type=Path, default=REPO / "demo-work")
    parser.add_argument("--workers", type=int, default=None, help="boards running at once (default 2x cores)")
    args = parser.parse_args(argv)
    if args.boards < sum(GROUPS.values()) + 5:
        parser.error(f"--boards must be at least {sum(GROUPS.values()) + 5}")
    work: Path = args.workdir.resolve()
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    demo = Demo(work, args.boards, args.interpreter, args.workers)
    try:
        return demo.run()
    except DemoFailed as exc:
        print(f"\nFAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("\ndemo: interrupted; stopping everything it started", file=sys.stderr, flush=True)
        return 130
    finally:
        demo.stop()


if __name__ == "__main__":
    sys.exit(main())
