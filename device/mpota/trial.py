# Trial boot of a pending update: count the attempt, arm the watchdog, run the health
# checks, then confirm (mark_app_valid_cancel_rollback, raise the security floor) or roll
# back (previous slot to boot, reset). Also the boot after a rollback: report rolled_back,
# remember the version as failed for its rollout, clear pending.
#
# Every step is ordered so a reset or power cut between any two writes ends consistent;
# state["pending"]["phase"] says how far the decision got:
#   (absent)     written by the updater before set_boot(): no trial boot has started
#   "installing" optional: an updater that saves pending with this phase before set_boot()
#                and clears the phase after it lets a board that never left the old slot
#                tell an interrupted install (not a failure: no report of rolled_back, the
#                version may be tried again) from a bootloader rollback
#   "trial"      attempts counted, checks running (a reset here: the bootloader rolls back
#                the unconfirmed image, or the next boot counts another attempt)
#   "confirmed"  image marked valid, floor raised, confirmed report has a reserved seq
#   "rollback"   trial failed: version recorded as failed, health_failed has a reserved seq,
#                the previous slot is being made the boot slot
#   "rolled_back" back on the previous slot, rolled_back has a reserved seq
# An update that carries application files (pending["app"]: the new app folder, mpota.appfiles)
# is tried, confirmed and rolled back with its firmware: app_folder() names the new folder only
# while the trial runs on the new firmware; confirming makes it state["app"]; rolling back
# leaves state["app"], the previous app, as it was. An app-only update (pending["fw"] False)
# keeps the running slot: its trial is the next boot, its rollback a reset into the old app.
# A decision report carries a seq reserved in pending before it is queued, so repeating
# a step after a reset sends the same seq again (the server answers 409 = delivered):
# each decision is reported exactly once as far as the server is concerned.
from micropython import const

_TIMEOUT_MS = const(10000)  # default time limit of one health check
_WDT_MS = const(60000)      # default watchdog timeout while the trial runs
_NO_ROLLBACK = const(-261)  # ESP_ERR_NOT_SUPPORTED: built without app rollback

BUILTIN = ("wifi", "server", "mqtt", "heartbeat")  # mpota.health.BUILTIN

_said_no_rollback = False
_wdt = None


class BootResult:
    def __init__(self, outcome, trial=False):
        self.outcome = outcome  # normal confirmed rolled_back interrupted no_ota error
        self.trial = trial      # this boot ran health checks
        self.check = None       # name of the check that failed (when one did)
        self.results = []       # [(name, ok, ms, note)] of the checks run
        self.rollback_supported = True
        self.wdt = None         # the armed machine.WDT: feed it from the app loop
        self.version = None
        self.reason = None

    def __repr__(self):
        return "BootResult(%s, trial=%s, check=%s)" % (self.outcome, self.trial, self.check)


def _dirname(path):
    i = path.rfind("/")
    if i < 0:
        return "."
    return path[:i] or "/"


# The config (mpota.config.Config when valid). An invalid or missing config does not stop
# the boot: reports need only device_id/report_url/token, so the raw JSON (or {}) is used.
def load_config(path):
    try:
        from mpota.config import load

        return load(path)
    except ImportError:
        pass
    except Exception as e:
        _log("%s" % (e,))
    import json

    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _log(msg):
    print("mpota:", msg)


def feed():
    if _wdt is not None:
        _wdt.feed()


def _arm_wdt(machine, wdt_ms):
    global _wdt
    if not wdt_ms:
        return None
    try:
        if _wdt is None:
            _wdt = machine.WDT(timeout=wdt_ms)
        _wdt.feed()
    except Exception as e:
        _log("no watchdog: %r" % (e,))
    return _wdt


# Mark the running image valid. False when the build has no rollback support (said once).
def mark_valid(esp32):
    global _said_no_rollback
    try:
        esp32.Partition.mark_app_valid_cancel_rollback()
        return True
    except OSError as e:
        if e.args and e.args[0] == _NO_ROLLBACK:
            if not _said_no_rollback:
                _said_no_rollback = True
                _log("firmware built without app rollback (-261): trial boots rely on"
                     " mpota's attempt limit")
            return False
        raise


# Mark the running image valid, repairing otadata that does not select the running slot
# (a power cut inside an otadata write leaves no valid entry: the bootloader then falls
# back to a slot by order and ESP-IDF refuses to mark it, ESP_FAIL): set_boot() on the
# running slot writes a fresh entry, then mark it valid.
def confirm_running(esp32):
    try:
        return mark_valid(esp32)
    except OSError as e:
        _log("cannot mark the running image valid (%r): rewriting otadata" % (e,))
    esp32.Partition(esp32.Partition.RUNNING).set_boot()
    return mark_valid(esp32)


def _label(part):
    return part.info()[4]


def _find(esp32, label):
    found = esp32.Partition.find(esp32.Partition.TYPE_APP, label=label)
    return found[0] if found else None


# A hardware module (esp32, machine), or None where the port lacks it.
def _module(name):
    try:
        return __import__(name)
    except ImportError:
        return None


# The pieces boot() and HealthReporter share: config, state, reporter, hardware modules.
# The state is the boot's one State (mpota.state.shared), whoever made the session first.
class Session:
    def __init__(self, config="/mpota.json", cfg=None, state=None, reporter=None):
        from mpota.state import shared

        self.root = _dirname(config)
        self.cfg = cfg if cfg is not None else load_config(config)
        self.state = state if state is not None else shared(self.root)
        self._reporter = reporter
        self.esp32 = _module("esp32")
        self.machine = _module("machine")

    @property
    def reporter(self):
        if self._reporter is None:
            from mpota.report import Reporter

            self._reporter = Reporter(self.cfg, self.state, self.root)
        return self._reporter

    def running(self):
        if self.esp32 is None:
            return None
        return _label(self.esp32.Partition(self.esp32.Partition.RUNNING))

    # "trial" when this boot runs a pending update that is not decided yet, "back" when
    # a pending update exists but the board runs another slot (or an app-only update was
    # rolled back), else None.
    def situation(self):
        p = self.state["pending"]
        if not p or self.esp32 is None:
            return None
        if p.get("fw") is False:  # app files only: the firmware never changed
            return "back" if p.get("phase") in ("rollback", "rolled_back") else "trial"
        return "trial" if self.running() == p.get("slot") else "back"

    def reserve(self, key):
        p = self.state["pending"]
        if not p.get(key):
            p[key] = self.reporter.next_seq()
        return p[key]

    # Trial failed (reason "health_failed", check = which) or ran out of attempts
    # ("attempts"): record the version as failed, report health_failed (for a failed
    # check), make the previous slot the boot slot, reset. Idempotent: after a reset it
    # repeats the same writes with the same seq.
    def rollback(self, reason, check=None, error=None, budget_ms=3000):
        st = self.state
        p = st["pending"]
        if p.get("phase") != "rollback":
            st.add_failed(p.get("version"), p.get("rollout"))
            p["phase"] = "rollback"
            p["reason"] = reason
            if check is not None:
                p["check"] = check
                if error:
                    p["error"] = error[:60]
                self.reserve("hseq")
            st.save()
        self.report_health_failed()
        self.reporter.flush(budget_ms)
        prev = p.get("prev_slot")
        part = _find(self.esp32, prev) if prev else None
        if p.get("fw") is False:
            pass  # app files only: the reset boots the confirmed app on the same firmware
        elif part is None:
            # No known previous slot: let the bootloader decide (an unconfirmed image is
            # rolled back by the reset itself when rollback is enabled).
            _log("previous slot %r not found; resetting" % (prev,))
        else:
            part.set_boot()
        _log("rolling back %s (%s)" % (p.get("version"), p.get("reason")))
        self.machine.reset()

    def report_health_failed(self):
        p = self.state["pending"]
        if p.get("hseq"):
            d = {"check": p.get("check"), "attempts": p.get("attempts", 0)}
            if p.get("error"):
                d["error"] = p["error"]
            self.reporter.event("health_failed", seq=p["hseq"], flush_ms=0, **d)

    # Back on the previous slot: report rolled_back once, remember the version as failed
    # for this rollout, clear pending.
    def finish_rolled_back(self, result):
        st = self.state
        p = st["pending"]
        phase = p.get("phase")
        if phase in ("rollback", "rolled_back"):
            reason = p.get("reason") or "health_failed"
        else:
            reason = "bootloader"  # the bootloader rolled back an unconfirmed image
        if phase == "rollback":
            # The trial decided but may have been cut before queueing its report.
            self.report_health_failed()
        if phase != "rolled_back":
            st.add_failed(p.get("version"), p.get("rollout"))
            p["phase"] = "rolled_back"
            p["reason"] = reason
            self.reserve("bseq")
            st.save()
        d = {"reason": reason, "attempts": p.get("attempts", 0)}
        if p.get("check") is not None:
            d["check"] = p["check"]
        self.final_report("rolled_back", "bseq", result, "rolled_back", **d)
        result.reason = reason
        _log("rolled back from %s (%s)" % (p.get("version"), reason))

    # The trial's last step, whatever its outcome: the report under the sequence number reserved
    # for it (the same one again after a cut), then no pending record.
    def final_report(self, event, seq, result, outcome, **detail):
        st = self.state
        p = st["pending"]
        self.reporter.event(event, seq=p[seq], flush_ms=0, **detail)
        st["pending"] = None
        st.save()
        self.reporter.flush(3000)
        result.outcome = outcome
        result.version = p.get("version")

    # set_boot() never completed: nothing was tried, so nothing failed. The updater reports
    # the install again when it retries; this boot says why the first one vanished.
    def finish_interrupted(self, result):
        st = self.state
        p = st["pending"]
        if not p.get("iseq"):
            self.reserve("iseq")
            st.save()
        self.final_report("failed", "iseq", result, "interrupted", reason="interrupted")
        _log("install of %s was interrupted" % (p.get("version"),))

    def finish_confirmed(self, result):
        st = self.state
        p = st["pending"]
        if p.get("phase") != "confirmed":
            sv = p.get("security_version") or 0
            if sv > st["floor"]:
                st["floor"] = sv
            if p.get("fw") is not False:
                # a build without a version in its app description is known by this record
                import mpota.firmware as firmware

                firmware.record(st, firmware.running_image(), p.get("version"))
                del firmware
            if p.get("app"):
                st["app"] = p["app"]  # the new app folder is the confirmed one from now on
            p["phase"] = "confirmed"
            self.reserve("cseq")
            st.save()
        sv = getattr(self.reporter, "set_version", None)
        if sv is not None:
            sv(p.get("version"))  # reports from here on name the confirmed firmware
        self.final_report("confirmed", "cseq", result, "confirmed", attempts=p.get("attempts", 0))
        _log("confirmed %s" % (p.get("version"),))


# The app folder this boot imports (os.chdir() into it before the app's modules are imported
# and before boot() runs their health checks: the current folder is first on a board's import
# path), or None when no app bundle was installed: the pending
# update's new folder while its trial runs, else the confirmed one.
def app_folder(config="/mpota.json"):
    s = Session(config, cfg={})
    a = s.state["app"]
    p = s.state["pending"]
    if p and p.get("app") and p.get("phase") not in ("installing", "rollback", "rolled_back"):
        if s.situation() == "trial":
            a = p["app"]
    if not isinstance(a, dict) or a.get("slot") not in ("a", "b") or not isinstance(a.get("root"), str):
        return None
    return ("" if s.root == "/" else s.root) + a["root"] + "." + a["slot"]


# Call early in main.py on every boot. Outside a trial it is cheap (no network): it marks
# the running image valid, counts the boot and returns. On the trial boot of a pending
# update it decides: confirm and return, or roll back (reset, does not return).
# checks: callables returning True/False (or raising), or (name, callable) pairs.
# builtin: which built-in checks run ("wifi", "server", "mqtt", "heartbeat").
# wdt_ms: watchdog armed for the trial (0: none). On ESP32 a watchdog cannot be stopped:
# the application must keep feeding result.wdt (or mpota.trial.feed()) after a trial.
def boot(checks=(), timeout_ms=_TIMEOUT_MS, config="/mpota.json", rollback_attempts=2,
         wdt_ms=_WDT_MS, builtin=BUILTIN, reporter=None):
    s = Session(config, reporter=reporter)
    if s.esp32 is None:
        return BootResult("no_ota")
    if s.state.booted is not None:
        return s.state.booted  # called again in the same boot: decided already, counted once
    result = s.state.booted = BootResult("normal")
    where = s.situation()
    try:
        if where == "trial":
            return _trial(s, result, checks, timeout_ms, rollback_attempts, wdt_ms, builtin)
        result.rollback_supported = confirm_running(s.esp32)
        _count_boot(s)
        if where == "back" and s.state["pending"].get("phase") == "installing":
            s.finish_interrupted(result)
        elif where == "back":
            s.finish_rolled_back(result)
        else:
            s.state.save()
    except Exception as e:
        if where == "trial":
            # Broken decision machinery during a trial: reset; the bootloader or the attempt
            # limit takes the board back.
            _log("trial error %r: resetting" % (e,))
            s.machine.reset()
        _log("boot: %r" % (e,))
        result.outcome = "error"
    return result


def _count_boot(s):
    st = s.state
    st["boots"] = st["boots"] + 1
    try:
        if s.machine is not None and s.machine.reset_cause() == s.machine.WDT_RESET:
            st["wdt"] = st["wdt"] + 1
    except Exception:
        pass


def _trial(s, result, checks, timeout_ms, rollback_attempts, wdt_ms, builtin):
    st = s.state
    p = st["pending"]
    phase = p.get("phase")
    result.version = p.get("version")
    if phase == "confirmed":
        s.finish_confirmed(result)
        return result
    if phase == "rollback" or phase == "rolled_back":
        p["phase"] = "rollback"
        s.rollback(p.get("reason") or "health_failed")
        return result  # not reached on a board (reset)
    # Count the attempt before anything else.
    p["attempts"] = p.get("attempts", 0) + 1
    p["phase"] = "trial"
    _count_boot(s)
    st.save()
    result.trial = True
    result.wdt = _arm_wdt(s.machine, wdt_ms)
    if p["attempts"] > rollback_attempts:
        s.rollback("attempts")
        return result
    _log("trial boot of %s (attempt %d)" % (p.get("version"), p["attempts"]))
    from mpota.health import run_checks

    failed, result.results = run_checks(s, checks, timeout_ms, builtin)
    if failed is not None:
        result.check = failed
        note = None
        for name, _ok, _ms, n in result.results:
            if name == failed:
                note = n
        s.rollback("health_failed", failed, note)
        result.outcome = "health_failed"
        return result  # not reached on a board (reset)
    result.rollback_supported = confirm_running(s.esp32)
    s.finish_confirmed(result)
    return result
