# The report outbox: the part of device reporting an update needs (docs/ARCHITECTURE.md
# "Reports"): build a report, append it to a bounded queue file next to the config, POST the
# oldest ones in batches within a time budget. mpota.report.Reporter (heartbeats, download
# progress steps, send_now) builds on it; the updater loads this module alone, so a download
# carries about half the report code (heap: bench/bench_heap.py).
#
# Queue file (<root>/mpota_reports.q), one record a line, a line counts only once its "\n"
# is written (a torn tail from a power cut is dropped on load):
#   r <highest seq ever queued>          first line, rewritten on every trim
#   <kind> <seq> <report json>           kind: d decision, p progress, h heartbeat
# Appends go to the end; trims (delivered / dropped records) rewrite the file to a temp
# name and rename it over the old one, so the queue is always either before or after.
# The file is read as bytes and untrusted: a line that is not a record (a bit flip, bytes
# that are not UTF-8, a torn tail) is skipped and gone at the next rewrite; it costs the
# reports it held, never a boot or an update. Report seqs are never issued twice: the state
# stores their high-water mark (mpota.state next_report_seq) and the file's first line
# holds it too, so losing either one is harmless.
import json

from micropython import const

try:
    from time import ticks_add, ticks_diff, ticks_ms
except ImportError:  # CPython without the simulator's shims; MicroPython's stubs lack these
    import time as _t

    _T0 = _t.monotonic()  # type: ignore[attr-defined]

    def ticks_ms():
        return int((_t.monotonic() - _T0) * 1000)  # type: ignore[attr-defined]

    def ticks_diff(a, b):  # type: ignore[no-redef]
        return a - b

    def ticks_add(a, b):  # type: ignore[misc]
        return a + b


_QUEUE = "mpota_reports.q"
_MAX_RECORDS = const(32)   # queue bound; a full queue drops heartbeats, then progress, then decisions
_BATCH = const(8)          # reports per POST (server takes <= 50)
POST_MS = const(2500)      # one POST attempt (mpota.report's send_now default too)
_FLUSH_MS = const(3000)    # default budget of an event()'s opportunistic flush
_BACKOFF_MS = const(30000) # after a failed flush, event() does not try again for this long
_MAX_STR = const(80)       # detail strings are cut to this length
_Y2000 = const(946684800)  # epoch-2000 ports (ESP32) -> Unix time


def join(root, name):
    if not root or root == "/":
        return "/" + name
    return root.rstrip("/") + "/" + name


# Seconds since 1970 when the clock looks set (NTP), else None.
def unix_time():
    import time

    try:
        t = int(time.time())
        if time.gmtime(0)[0] == 2000:
            t += _Y2000
    except Exception:
        return None
    return t if t > 1700000000 else None


def running_slot():
    try:
        import esp32

        # the stub types the id as a label (str); BOOT/RUNNING are ints (esp32.rst)
        return esp32.Partition(esp32.Partition.RUNNING).info()[4]  # type: ignore[arg-type]
    except Exception:
        return None


def _post_http(url, body, headers, timeout_ms):
    from mpota.http import open as http_open

    r = http_open(url, "POST", headers, body, timeout_ms)
    try:
        return r.status
    finally:
        r.close()


# The headers of a POST to the report URL.
def headers(cfg):
    return {"Content-Type": "application/json",
            "Authorization": "Bearer %s" % (cfg.get("token") or ""),
            "X-Mpota-Device": cfg.get("device_id") or ""}


# b"<kind> <seq> <json>\n" or b"r <seq>\n" -> (kind, seq, json bytes or None); (None, 0,
# None) for anything else (torn, damaged: skipped, never an error).
def _split(line):
    try:
        if len(line) < 4 or line[1] != 32 or line[-1] != 10:
            return None, 0, None
        kind = chr(line[0])
        if kind not in "rdph":
            return None, 0, None
        b = line.find(b" ", 2)
        if b < 0:
            return kind, int(line[2:-1]), None
        return kind, int(line[2:b]), line[b + 1:-1]
    except Exception:  # ValueError: not a number
        return None, 0, None


def _records(f):
    for line in f:
        kind, seq, js = _split(line)
        if kind is not None and kind != "r":
            yield kind, seq, js, line


# The queue file of one folder, shared by every Reporter of this process that uses it
# (the trial, the updater and the application may each hold one): one in-memory index,
# one highest seq, one backoff.
class _Queue:
    def __init__(self, path):
        self.path = path
        self.index = []  # [(kind, seq)] of queued records, oldest first
        self.top = 0     # highest seq ever issued for this queue
        self.retry_at = None
        self._load()

    def _load(self):
        dirty = False
        try:
            f = open(self.path, "rb")
        except OSError:
            return
        try:
            for line in f:
                kind, seq, _ = _split(line)
                if kind is None:
                    dirty = True  # torn tail or damaged line: rewritten without it
                    continue
                if kind != "r":
                    self.index.append((kind, seq))
                if seq > self.top:
                    self.top = seq
        except Exception:  # unreadable from here on: keep what was read
            dirty = True
        finally:
            f.close()
        if dirty:
            try:
                self.rewrite(0, None, None)
            except Exception:
                pass

    # Rewrite the queue without its first `skip` records and without the record at index
    # `drop`, then append `extra` (kind, seq, line) if given: temp file + rename.
    def rewrite(self, skip, drop, extra):
        import os

        tmp = self.path + ".tmp"
        keep = []
        out = open(tmp, "wb")
        try:
            out.write(b"r %d\n" % self.top)
            try:
                f = open(self.path, "rb")
            except OSError:
                f = None
            if f is not None:
                try:
                    i = 0
                    for kind, seq, _, line in _records(f):
                        if i >= skip and i != drop:
                            out.write(line)
                            keep.append((kind, seq))
                        i += 1
                except Exception:  # unreadable from here on: the rest is lost
                    pass
                finally:
                    f.close()
            if extra is not None:
                out.write(extra[2].encode())
                keep.append((extra[0], extra[1]))
        finally:
            out.close()
        os.rename(tmp, self.path)
        self.index = keep

    # False when the queue is full of more important reports (the new one is dropped).
    def append(self, kind, seq, line):
        rec = (kind, seq, "%s %d %s\n" % (kind, seq, line))
        if len(self.index) < _MAX_RECORDS:
            try:
                f = open(self.path, "a")  # text: the JSON is ASCII (the file is read as bytes)
            except OSError:
                f = None
            if f is None or not self.index and f.tell() == 0:
                if f is not None:
                    f.close()
                self.rewrite(0, None, rec)  # new file: header first
                return True
            try:
                f.write(rec[2])
            finally:
                f.close()
            self.index.append((kind, seq))
            return True
        victim = self.victim(kind)
        if victim is None:
            return False
        self.rewrite(0, victim, rec)
        return True

    # Oldest record of the lowest rank that is not above the new one (h < p < d), or None
    # when the queue holds only more important reports.
    def victim(self, kind):
        rank = "hpd"
        top = rank.index(kind)
        best = None
        for i, (qk, _) in enumerate(self.index):
            r = rank.index(qk) if qk in rank else 0
            if r <= top and (best is None or r < best[0]):
                best = (r, i)
                if r == 0:
                    break
        return None if best is None else best[1]

    # (records taken, POST body or None): the oldest `limit` records (a damaged one the
    # server refuses with 400 is then sent alone and dropped).
    def batch(self, limit):
        n = 0
        parts = []
        f = open(self.path, "rb")
        try:
            for _, _, js, _ in _records(f):
                if n >= limit:
                    break
                n += 1
                if js:
                    parts.append(js)
        finally:
            f.close()
        if not parts:
            return n, None
        if len(parts) == 1:
            return n, parts[0]
        return n, b'{"reports": [' + b", ".join(parts) + b"]}"


# Forget the shared queues and states (tests that boot several times in one process).
def reset_queues():
    import mpota.state as st

    st.queues.clear()
    st.forget()


# A trial boot arms a watchdog that cannot be stopped: work that reports as it goes keeps it
# fed. boot() leaves its BootResult (and that watchdog) on the shared state.
def feed(state):
    try:
        b = state.booted
        if b is not None and b.wdt is not None:
            b.wdt.feed()
    except Exception:
        pass


# Outbox(cfg, state, root): cfg is the config (dict-like: device_id, board, group,
# report_url, token), state a mpota.state.State, root the config's folder.
# event() never raises and never blocks for longer than its budget.
# post(url, body_bytes, headers, timeout_ms) -> HTTP status (raises on network errors)
# can be replaced for tests; the default uses mpota.http.
class Outbox:
    def __init__(self, cfg, state, root, post=None):
        self.cfg = cfg
        self.state = state
        self.path = join(root, _QUEUE)
        self._post = post or _post_http
        if post is None:  # the transport policy (tls_ca, allow_http) of whatever config this is
            import mpota.http as http

            http.trust(cfg)
        # the registry lives in mpota.state, which is never unloaded: an outbox module loaded
        # again after the updater took it out of RAM finds the same queue
        import mpota.state as st

        q = st.queues.get(self.path)
        if q is None:
            q = st.queues[self.path] = _Queue(self.path)
        self._q = q
        self._slot = None
        self._version = -1  # not looked up yet
        self.sent = 0  # reports delivered by this Reporter (for tests / diagnostics)
        self.last_status = None
        self._sync()

    def _sync(self):
        try:
            if self._q.top > self.state["rseq"]:
                self.state["rseq"] = self._q.top
            else:
                self._q.top = self.state["rseq"]
        except Exception:
            pass

    # A new report seq: above the state's and above anything this queue ever held.
    def next_seq(self):
        self._sync()
        seq = self.state.next_report_seq()
        self._q.top = seq
        return seq

    def build(self, name, seq, target=None, rollout=None, detail=None):
        p = None
        try:
            p = self.state["pending"]
        except Exception:
            pass
        if p:
            if target is None:
                target = p.get("version")
            if rollout is None:
                rollout = p.get("rollout")
        if self._slot is None:
            self._slot = running_slot()
        if self._version == -1:
            # what the updater compares with (mpota.firmware: app_desc, mpota's record, config)
            try:
                from mpota.firmware import version

                self._version = version(self.state, self.cfg)
            except Exception:
                self._version = None  # type: ignore[assignment]
        d = {}
        if detail:
            for k in detail:
                v = detail[k]
                if isinstance(v, str) and len(v) > _MAX_STR:
                    v = v[:_MAX_STR]
                d[k] = v
        cfg = self.cfg
        r = {"device_id": cfg.get("device_id"), "seq": seq, "event": name, "uptime_ms": ticks_ms(),
             "board": cfg.get("board"), "group": cfg.get("group"), "version": self._version,
             "slot": self._slot, "rollout": rollout, "target": target, "detail": d}
        t = unix_time()
        if t is not None:
            r["time"] = t
        return r

    # (report URL, headers, report, POST timeout in ms) for a report sent without this module
    # in RAM (the updater's progress during a transfer): the caller sets seq, uptime_ms,
    # time, detail.
    def template(self, name, target=None, rollout=None):
        return (self.cfg.get("report_url"), headers(self.cfg), self.build(name, None, target, rollout),
                POST_MS)

    # Queue one report and try to deliver it (and older ones) within flush_ms.
    # `seq` reuses a seq reserved earlier (trial decisions): a record already queued with
    # that seq is not queued twice, and one already delivered comes back as 409 = delivered.
    # Returns the seq, or None when the report could not be queued. Never raises.
    def event(self, name, target=None, rollout=None, seq=None, flush_ms=_FLUSH_MS, **detail):
        feed(self.state)
        try:
            q = self._q
            if seq is None:
                seq = self.next_seq()
            elif seq > q.top:
                q.top = seq
                self._sync()
            queued = False
            for _, s in q.index:
                if s == seq:
                    queued = True
            if not queued:
                r = self.build(name, seq, target, rollout, detail)
                # record kind; a full queue drops h (heartbeat) before p (progress) before d
                kind = "h" if name == "heartbeat" else "p" if name in ("checking", "downloading") else "d"
                if not q.append(kind, seq, json.dumps(r)):
                    return None
        except Exception as e:
            self._log("report: cannot queue %s: %r" % (name, e))
            return None
        if flush_ms:
            self.flush(flush_ms, force=False)
        return seq

    # POST queued reports oldest first, _BATCH at a time, until the queue is empty, the
    # budget is spent or the server is unreachable. Returns the number delivered (2xx/409)
    # or dropped as undeliverable (other 4xx). force=False honours the backoff after a
    # failure (so event() does not stall the application while offline).
    def flush(self, budget_ms=_FLUSH_MS, force=True, post_ms=POST_MS):
        url = self.cfg.get("report_url")
        q = self._q
        if not url or not q.index:
            return 0
        start = ticks_ms()
        if not force and q.retry_at is not None and ticks_diff(q.retry_at, start) > 0:
            return 0
        done = 0
        batch = _BATCH
        cfg = self.cfg
        while q.index:
            left = budget_ms - ticks_diff(ticks_ms(), start)
            if left < 200:
                break
            try:
                n, body = q.batch(batch)
                if not n:
                    break
                if body is None:  # damaged records only: nothing to send
                    q.rewrite(n, None, None)
                    continue
                status = self._post(url, body, headers(cfg), min(left, post_ms))
                body = None
            except MemoryError as e:
                # not the server's fault: a batch that does not fit goes one by one, and a
                # single report that does not fit waits for the next event (no backoff)
                self._log("report: flush failed: %r" % (e,))
                if batch > 1:
                    batch = 1
                    continue
                return done
            except Exception as e:
                self._log("report: flush failed: %r" % (e,))
                q.retry_at = ticks_add(ticks_ms(), _BACKOFF_MS)
                return done
            self.last_status = status
            if status in (400, 409) and n > 1:
                # a batch holding an already-seen seq, or one damaged record: one by one
                batch = 1
                continue
            if 200 <= status < 300 or 400 <= status < 500:
                if 400 <= status < 500 and status != 409:
                    self._log("report: server refused %d report(s): HTTP %d" % (n, status))
                else:
                    self.sent += n
                try:
                    q.rewrite(n, None, None)
                except Exception as e:
                    self._log("report: cannot trim queue: %r" % (e,))
                    return done
                done += n
                continue
            q.retry_at = ticks_add(ticks_ms(), _BACKOFF_MS)
            break
        else:
            q.retry_at = None
        return done

    def _log(self, msg):
        try:
            print("mpota:", msg)
        except Exception:
            pass
