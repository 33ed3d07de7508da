# Device reports (docs/ARCHITECTURE.md "Reports"): Reporter = the outbox (mpota.outbox:
# build, bounded offline queue file, batched POST; the queue format is described there)
# plus what applications and the trial boot use: periodic heartbeats and send_now() for the
# trial's heartbeat check. (The updater reports its download progress itself.)
# Reporter(cfg, state, root, post=None): cfg is the config (dict-like: device_id, board,
# group, report_url, token), state a mpota.state.State, root the config's folder.
# event() and heartbeat() never raise and never block for longer than their budget.
from mpota.outbox import (  # noqa: F401  (re-exported: health.py and tests use them here)
    POST_MS,
    Outbox,
    feed,
    join,
    reset_queues,
    running_slot,
    ticks_add,
    ticks_diff,
    ticks_ms,
    unix_time,
)


def free_heap():
    try:
        import gc

        gc.collect()
        return gc.mem_free()
    except (ImportError, AttributeError):
        return None


class Reporter(Outbox):
    def pending(self):
        return len(self._q.index)

    def queued(self):
        return [s for _, s in self._q.index]

    # The running version changed (a confirm): later reports carry the new one.
    def set_version(self, version):
        self._version = version

    # Periodic heartbeat: version, slot, uptime, free heap, health (flush_ms=, as event()).
    def heartbeat(self, health=None, **detail):
        detail["free"] = free_heap()
        if health is not None:
            detail["health"] = health
        return self.event("heartbeat", **detail)

    # Queue one report and deliver it now (the trial's heartbeat check): True when the
    # server took it (2xx or 409) within timeout_ms. A 5xx, a dropped connection or an answer
    # slower than one POST's usual cap is not the end: it is tried again, each POST allowed
    # what is left of the budget, until timeout_ms is spent. Queued like any other report,
    # so its seq is durable and one that could not be delivered now is sent later.
    def send_now(self, name, timeout_ms=POST_MS, **detail):
        if not self.cfg.get("report_url"):
            return False
        seq = self.event(name, flush_ms=0, **detail)
        if seq is None:
            return False
        start = ticks_ms()  # the budget is for delivering (queueing it took a few ms at most)
        pause = 100
        while True:
            left = timeout_ms - ticks_diff(ticks_ms(), start)
            if left < 200:  # as flush(): too little for a POST
                return False
            self.last_status = None
            self.flush(left, post_ms=left)
            st = self.last_status
            if seq not in self.queued():
                return st is not None and (200 <= st < 300 or st == 409)
            if st is not None and 400 <= st < 500 and st != 409:
                return False  # refused: asking again will not change the answer
            left = timeout_ms - ticks_diff(ticks_ms(), start) - 250
            feed(self.state)  # the trial's watchdog keeps running meanwhile
            _sleep_ms(min(pause, left))
            pause = min(pause * 2, 1000)


def _sleep_ms(ms):
    if ms <= 0:
        return
    import time

    if hasattr(time, "sleep_ms"):
        time.sleep_ms(ms)
    else:
        time.sleep(ms / 1000)
