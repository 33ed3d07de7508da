"""The console's HTML: pure functions from the server's data to pages (no I/O, no aiohttp).

Every value is escaped; pages carry no inline script or style (the console's CSP forbids both), the
live region (`<main id="live">`) is what console.js re-fetches, and every action is a plain form
(POST + CSRF token), so the console works without JavaScript too.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlencode

from host_tools.server.svg import bar_chart, legend, progress_bar

CSS = """body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#263238;color:#fff;padding:.6em 1.5em;display:flex;gap:1.5em;align-items:center}
header a{color:#fff;text-decoration:none}header a.on{border-bottom:2px solid #fff}
header .who{margin-left:auto;display:flex;gap:.8em;align-items:center}
header form{margin:0}header button{background:none;border:1px solid #90a4ae;color:#fff;border-radius:3px}
main{padding:1em 1.5em}h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.5em}
table{border-collapse:collapse;margin:.5em 0 1em;background:#fff}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:right;vertical-align:middle}
th{background:#eceff1}td.l,th.l{text-align:left}
.badge{display:inline-block;padding:.1em .5em;border-radius:3px;font-size:.85em;color:#fff;background:#607d8b}
.active{background:#1565c0}.paused{background:#ef6c00}.aborted{background:#c62828}.completed{background:#2e7d32}
.pass{background:#2e7d32}.fail{background:#c62828}.waiting{background:#1565c0}.pending{background:#90a4ae}
.over{color:#c62828;font-weight:bold}.muted{color:#666;font-size:.9em}.error{background:#ffebee;
border:1px solid #c62828;padding:.5em 1em}.note{background:#fff8e1;border:1px solid #ffb300;padding:.5em 1em}
.actions{display:flex;gap:.6em;margin:.8em 0}.actions form{display:flex;gap:.3em}
button{padding:.3em .9em;cursor:pointer}button.danger{color:#c62828}
.charts{display:flex;flex-wrap:wrap;gap:2em}.legend{font-size:.85em;margin:.3em 0}.key{margin-right:.8em}
.filters{display:flex;flex-wrap:wrap;gap:.6em;align-items:end;margin:.5em 0}
.filters label{display:flex;flex-direction:column;font-size:.85em}
.live{font-size:.8em;color:#999}td.t{white-space:nowrap}details{font-size:.85em;color:#555}
details pre{white-space:pre-wrap;margin:.2em 0}.timeline td.l{max-width:60em}
.k-auto-pause,.k-pause,.k-abort,.k-error{background:#c62828}.k-warning{background:#ef6c00}
.k-advance,.k-complete,.k-resume,.k-ready{background:#2e7d32}.k-start{background:#1565c0}
tr.bad td{color:#c62828}
.card{background:#fff;border:1px solid #ddd;padding:.6em 1em;margin:.6em 0}
"""

# Live updates: re-fetch the page's live region every few seconds (paused while the tab is hidden);
# forms stay plain forms. No framework, nothing fetched from anywhere but this server.
JS = """(function () {
  var live = document.getElementById("live");
  var stamp = document.getElementById("live-stamp");
  if (!live || !live.dataset.live) { return; }
  var every = parseInt(live.dataset.live, 10) || 3000;
  function refresh() {
    if (document.hidden) { return; }
    fetch(window.location.href, {headers: {"X-Mpota-Partial": "1"}, credentials: "same-origin",
                                 cache: "no-store"})
      .then(function (r) {
        if (r.status === 401) { window.location.reload(); return null; }
        return r.ok ? r.text() : null;
      })
      .then(function (text) {
        if (text === null || text === undefined) { return; }
        if (text !== live.dataset.last) {
          var focused = document.activeElement && live.contains(document.activeElement);
          if (!focused) { live.innerHTML = text; live.dataset.last = text; }
        }
        if (stamp) { stamp.textContent = "live, updated " + new Date().toLocaleTimeString(); }
      })
      .catch(function () { if (stamp) { stamp.textContent = "live: server unreachable, retrying"; } });
  }
  setInterval(refresh, every);
})();
"""

STATES = ("active", "paused", "aborted", "completed")
RATE_HELP = {
    "failure_rate": "failed + rolled back + timed out, of the stage's judged (finished) devices",
    "rollback_rate": "rolled back, of the judged devices",
    "health_check_failure_rate": "devices that reported health_failed, of the judged devices",
}
_THRESHOLD_OF = {"failure_rate": "failure_rate_threshold", "rollback_rate": "rollback_rate_threshold",
                 "health_check_failure_rate": "health_check_failure_rate"}


def e(value: object) -> str:
    return html.escape("-" if value is None else str(value), quote=True)


def when(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def ago(ts: float | None, now: float) -> str:
    if not ts:
        return "-"
    return f"{duration(now - ts)} ago"


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 172800:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def rollout_url(rid: str) -> str:
    return f"/console/rollouts/{quote(rid, safe='')}"


def device_url(device_id: str) -> str:
    return f"/console/devices/{quote(device_id, safe='')}"


def badge(text: object, prefix: str = "") -> str:
    return f'<span class="badge {prefix}{e(text)}">{e(text)}</span>'


def layout(title: str, body: str, *, nav: str, operator: bool, csrf: str | None, live_ms: int = 0,
           notice: str = "") -> str:
    links = [("overview", "/", "Overview"), ("rollouts", "/console/rollouts", "Rollouts"),
             ("devices", "/console/devices", "Devices")]
    nav_html = " ".join(f'<a href="{href}"{" class=on" if key == nav else ""}>{label}</a>'
                        for key, href, label in links)
    if operator:
        who = (f'<span>operator</span><form method="post" action="/console/logout">'
               f'<input type="hidden" name="csrf" value="{e(csrf)}"><button>Log out</button></form>')
    else:
        who = '<span>read-only</span><a href="/console/login">Log in</a>'
    live_attr = f' data-live="{live_ms}"' if live_ms else ""
    return ("<!doctype html><html lang=en><head><meta charset=utf-8>"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{e(title)} - mpota</title>"
            '<link rel="stylesheet" href="/console/static/console.css">'
            '<script src="/console/static/console.js" defer></script></head><body>'
            f'<header><strong>mpota</strong> {nav_html}<span class="who">'
            f'<span id="live-stamp" class="live">{"live" if live_ms else ""}</span>{who}</span></header>'
            f"{notice}<main id=\"live\"{live_attr}>{body}</main></body></html>")


# ------------------------------------------------------------------------------------------ pages

def login_page(error: str = "", next_url: str = "/") -> str:
    err = f'<p class="error">{e(error)}</p>' if error else ""
    return ("<!doctype html><html lang=en><head><meta charset=utf-8><title>Log in - mpota</title>"
            '<link rel="stylesheet" href="/console/static/console.css"></head><body>'
            "<header><strong>mpota</strong></header><main><h1>Operator login</h1>"
            f"{err}<form method=post action=/console/login class=card>"
            '<p><label>Operator token<br><input type="password" name="token" size="70" '
            'autocomplete="off" autofocus required></label></p>'
            f'<input type="hidden" name="next" value="{e(next_url)}">'
            '<p><button type="submit" id="login">Log in</button></p>'
            '<p class="muted">The operator token is HMAC-SHA256(fleet secret, "mpota operator"): '
            "<code>mpota fleet token --operator --secret FILE</code> prints it. A device's "
            "token is not accepted.</p></form></main></body></html>")


def _stage_row(s: Mapping[str, Any], current: bool) -> str:
    c = s.get("counts") or {}
    th = s.get("thresholds") or {}
    rates = []
    for key, help_text in RATE_HELP.items():
        value = s.get(key)
        limit = th.get(key, th.get(_THRESHOLD_OF[key]))
        over = value is not None and limit is not None and value > limit
        shown = "-" if value is None else f"{value:.1f}%"
        lim = "" if limit is None else f" / {limit:g}%"
        rates.append(f'<td title="{e(help_text)}"{" class=over" if over else ""}>{shown}'
                     f'<span class="muted">{e(lim)}</span></td>')
    started = f"{c.get('started', 0)} of {c.get('targeted', 0)} started"
    return (f'<tr data-stage="{e(s.get("name"))}"><td class=l>{e(s.get("name"))}'
            f'{" &#9664;" if current else ""}</td>'
            f"<td class=l>{progress_bar(c)}<br><span class=muted>{e(started)}, "
            f"{c.get('finished', 0)} finished, min {e(s.get('min_finished'))} to judge</span></td>"
            f"<td>{c.get('targeted', 0)}</td><td>{c.get('confirmed', 0)}</td><td>{c.get('failed', 0)}</td>"
            f"<td>{c.get('rolled_back', 0)}</td><td>{c.get('timed_out', 0)}</td>"
            f"<td>{c.get('in_progress', 0)}</td>{''.join(rates)}"
            f"<td class=l>{badge(s.get('verdict'))}"
            + (f"<br><span class=muted>{e(s.get('reason'))}</span>" if s.get("reason") else "")
            + "</td></tr>")


STAGE_HEAD = ("<tr><th class=l>stage</th><th class=l>progress</th><th>targeted</th><th>confirmed</th>"
              "<th>failed</th><th>rolled back</th><th>timed out</th><th>in progress</th>"
              f'<th title="{e(RATE_HELP["failure_rate"])}">failure rate / limit</th>'
              f'<th title="{e(RATE_HELP["rollback_rate"])}">rollback rate / limit</th>'
              f'<th title="{e(RATE_HELP["health_check_failure_rate"])}">health-check failures / limit</th>'
              "<th class=l>gate</th></tr>")
RATES_NOTE = ("<p class=muted>Rates are percent of a stage's judged (finished) devices: the failure rate "
              "counts failed + rolled back + timed out, the rollback rate rolled back only, health-check "
              "failures the devices that reported health_failed. A stage is judged once min finished "
              "devices have finished.</p>")


def stage_table(st: Mapping[str, Any]) -> str:
    r = st["rollout"]
    current = (st.get("step") or {}).get("stage") if r.get("state") == "active" else None
    rows = "".join(_stage_row(s, s.get("name") == current) for s in st.get("stages") or [])
    return f'<table class="stages">{STAGE_HEAD}{rows}</table>{legend()}'


def _rollout_headline(st: Mapping[str, Any], now: float) -> str:
    r = st["rollout"]
    step = st.get("step") or {}
    ended = r.get("updated_at") if r.get("state") in ("aborted", "completed") else now
    ran = duration((ended or now) - (r.get("created_at") or now))
    groups = ", ".join(step.get("groups") or []) or "-"
    out = [f'<p>{badge(r.get("state"))} <strong>{e(r.get("version"))}</strong> on '
           f'{e(r.get("board"))}/{e(r.get("channel"))} &middot; step {int(step.get("index", 0)) + 1} of '
           f'{e(step.get("count"))}: {e(step.get("stage"))} (groups {e(groups)}, '
           f'{float(step.get("percentage") or 0):g}% of the rest) &middot; channel seq '
           f'<span class="seq">{e(r.get("published_seq"))}</span> &middot; started '
           f'{when(r.get("created_at"))} UTC, running for {ran}</p>']
    if r.get("reason"):
        extra = _numbers(r.get("numbers"))
        out.append(f'<p class="note"><strong>reason:</strong> <span class="reason">{e(r["reason"])}</span>'
                   f"{extra}</p>")
    out.append(installs_line(st.get("installs")))
    nxt = st.get("next") or {}
    if nxt.get("waiting_for") and r.get("state") == "active":
        out.append(f"<p class=muted>waiting for: {e(nxt['waiting_for'])}</p>")
    return "".join(out)


def installs_line(inst: Mapping[str, Any] | None) -> str:
    """How the rollout's boards got the image (Store.install_kinds, from their installed reports):
    rebuilt from a patch of the running image, the full image, or the full image after a patch
    failed; and the bytes the patches saved on the wire. Empty before the first install."""
    n = {k: int((inst or {}).get(k) or 0) for k in ("delta", "full", "fallback", "bytes_saved")}
    if not n["delta"] + n["full"] + n["fallback"]:
        return ""
    saved = n["bytes_saved"]
    size = f"{saved / 1e6:.1f} MB" if saved >= 1e6 else f"{saved / 1e3:.1f} KB" if saved >= 1e3 \
        else f"{saved} B"
    return (f'<p class="installs" data-delta="{n["delta"]}" data-full="{n["full"]}" '
            f'data-fallback="{n["fallback"]}" data-saved="{saved}"><strong>installs:</strong> '
            f'{n["delta"]} delta (patched from the running image), {n["full"]} full image, '
            f'{n["fallback"]} full image after a patch failed &middot; the patches saved {size} on the '
            "wire</p>")


def _numbers(numbers: object) -> str:
    """The figures behind a decision, folded (a details element: no script needed)."""
    if not numbers:
        return ""
    return (f"<details><summary>numbers</summary><pre>{e(json.dumps(numbers, indent=1, sort_keys=True))}"
            "</pre></details>")


def _actions(r: Mapping[str, Any], csrf: str | None) -> str:
    state = r.get("state")
    url = rollout_url(str(r.get("id")))
    forms = []
    hidden = f'<input type="hidden" name="csrf" value="{e(csrf)}">'
    if state == "active":
        forms.append(f'<form method=post action="{url}/pause">{hidden}<input name="reason" '
                     'placeholder="reason (optional)" maxlength="200">'
                     '<button id="pause">Pause</button></form>')
    if state == "paused":
        forms.append(f'<form method=post action="{url}/resume">{hidden}'
                     f'<button id="resume">Resume</button></form>')
    if state in ("active", "paused"):
        forms.append(f'<form method=post action="{url}/abort">{hidden}<input name="reason" '
                     f'placeholder="reason (optional)" maxlength="200">'
                     f'<button id="abort" class="danger">Abort</button></form>')
    return f'<div class="actions">{"".join(forms)}</div>' if forms else ""


def rollout_card(st: Mapping[str, Any], now: float) -> str:
    r = st["rollout"]
    return (f'<div class="card rollout" data-rollout="{e(r.get("id"))}" data-state="{e(r.get("state"))}">'
            f'<h2><a href="{rollout_url(str(r.get("id")))}">{e(r.get("id"))}</a></h2>'
            f"{_rollout_headline(st, now)}{stage_table(st)}</div>")


def overview_page(open_statuses: Sequence[Mapping[str, Any]], recent: Sequence[Mapping[str, Any]],
                  summary: Mapping[str, Any], now: float) -> str:
    out = ["<h1>Overview</h1>"]
    out.append(f"<p>{summary.get('devices', 0)} devices, {summary.get('events', 0)} events stored "
               f'&middot; <span class=muted>{when(now)} UTC</span></p><div class="charts">')
    for key, title in (("by_version", "Firmware versions"), ("by_health", "Health"),
                       ("by_group", "Groups"), ("by_board", "Boards")):
        counts = summary.get(key) or {}
        out.append(bar_chart(title, [(str(k), int(n)) for k, n in counts.items()]))
    out.append("</div>")
    out.append("<h2>Open rollouts</h2>")
    if not open_statuses:
        out.append("<p class=muted>No rollout is active or paused.</p>")
    out.extend(rollout_card(st, now) for st in open_statuses)
    out.append(RATES_NOTE)
    out.append("<h2>Recent rollouts</h2>" + rollout_list(recent, now))
    return "".join(out)


def rollout_list(rollouts: Sequence[Mapping[str, Any]], now: float) -> str:
    if not rollouts:
        return "<p class=muted>No rollouts yet.</p>"
    rows = []
    for r in rollouts:
        ended = r.get("updated_at") if r.get("state") in ("aborted", "completed") else now
        rows.append(f'<tr><td class=l><a href="{rollout_url(str(r.get("id")))}">{e(r.get("id"))}</a></td>'
                    f"<td class=l>{e(r.get('version'))}</td><td class=l>{e(r.get('board'))}/"
                    f"{e(r.get('channel'))}</td><td class=l>{badge(r.get('state'))}</td>"
                    f"<td>{int(r.get('step', 0)) + 1}</td><td>{when(r.get('created_at'))}</td>"
                    f"<td>{duration((ended or now) - (r.get('created_at') or now))}</td>"
                    f"<td class=l>{e(r.get('reason') or '')}</td></tr>")
    return ("<table class=rollouts><tr><th class=l>rollout</th><th class=l>version</th><th class=l>board/"
            "channel</th><th class=l>state</th><th>step</th><th>started (UTC)</th><th>duration</th>"
            "<th class=l>reason</th></tr>" + "".join(rows) + "</table>")


def rollouts_page(rollouts: Sequence[Mapping[str, Any]], now: float) -> str:
    return "<h1>Rollouts</h1>" + rollout_list(rollouts, now)


def rollout_page(st: Mapping[str, Any], now: float, *, operator: bool, csrf: str | None,
                 error: str = "") -> str:
    r = st["rollout"]
    out = [f"<h1>Rollout {e(r.get('id'))}</h1>"]
    if error:
        out.append(f'<p class="error">{e(error)}</p>')
    out.append(_rollout_headline(st, now))
    if operator:
        out.append(_actions(r, csrf))
    elif r.get("state") in ("active", "paused"):
        out.append('<p class=muted><a href="/console/login">Log in</a> as the operator to pause, resume '
                   "or abort.</p>")
    out.append(stage_table(st))
    out.append(RATES_NOTE)
    plan = st.get("plan") or {}
    if plan.get("window"):
        w = plan["window"]
        out.append(f"<p>Maintenance window {e(w.get('start'))}-{e(w.get('end'))} UTC</p>")
    out.append(f'<p><a href="/console/devices?{urlencode({"rollout": str(r.get("id"))})}">Devices in '
               "this rollout</a></p>")
    out.append("<h2>Timeline</h2>")
    hist = st.get("history") or []
    if not hist:
        out.append("<p class=muted>No decisions yet.</p>")
    else:
        rows = []
        start = r.get("created_at") or 0
        for h in hist:
            t = h.get("time") or start
            rows.append(f'<tr class="decision" data-kind="{e(h.get("kind"))}"><td class=t>{when(t)}</td>'
                        f"<td class=t>+{duration(t - start)}</td>"
                        f"<td class=l>{badge(h.get('kind'), 'k-')}</td>"
                        f"<td class=l>{e(h.get('message'))}{_numbers(h.get('numbers'))}</td></tr>")
        out.append("<table class=timeline><tr><th>time (UTC)</th><th>since start</th>"
                   "<th class=l>decision</th><th class=l>what and why</th></tr>" + "".join(rows) + "</table>")
    return "".join(out)


DEVICE_FILTERS = ("q", "board", "channel", "group", "version", "health", "rollout")


def devices_filter_form(filters: Mapping[str, str], choices: Mapping[str, Sequence[str]]) -> str:
    fields = [f'<label>search id<input name="q" value="{e(filters.get("q", ""))}" '
              'placeholder="part of a device id"></label>']
    for key in ("board", "channel", "group", "version", "health"):
        opts = ['<option value="">any</option>'] + [
            f'<option value="{e(v)}"{" selected" if filters.get(key) == v else ""}>{e(v)}</option>'
            for v in choices.get(key, ())]
        fields.append(f'<label>{key}<select name="{key}">{"".join(opts)}</select></label>')
    if filters.get("rollout"):
        fields.append(f'<input type="hidden" name="rollout" value="{e(filters["rollout"])}">')
    return (f'<form method=get action="/console/devices" class="filters">{"".join(fields)}'
            '<button type="submit" id="filter">Filter</button><a href="/console/devices">clear</a></form>')


def devices_page(devices: Sequence[Mapping[str, Any]], matched: int, total: int,
                 filters: Mapping[str, str], now: float, limit: int) -> str:
    out = [f"<p>{matched} of {total} devices match"
           + (f" (rollout {e(filters['rollout'])})" if filters.get("rollout") else "")
           + (f"; the first {limit} are shown" if matched > limit else "") + "</p>"]
    rows = []
    for d in devices:
        rows.append(f'<tr data-device="{e(d.get("device_id"))}"><td class=l><a href="'
                    f'{device_url(str(d.get("device_id")))}">{e(d.get("device_id"))}</a></td>'
                    f"<td class=l>{e(d.get('board'))}</td><td class=l>{e(d.get('channel'))}</td>"
                    f"<td class=l>{e(d.get('group'))}{_claimed(d)}</td>"
                    f"<td class=l>{e(d.get('version'))}</td><td class=l>{e(d.get('slot'))}</td>"
                    f"<td class=l>{e(d.get('last_event'))}</td><td class=l>{e(d.get('health'))}</td>"
                    f"<td class=l>{e(d.get('rollout'))}</td><td>{ago(d.get('last_seen'), now)}</td></tr>")
    out.append("<table class=devices><tr><th class=l>device</th><th class=l>board</th>"
               "<th class=l>channel</th><th class=l>group</th>"
               "<th class=l>version</th><th class=l>slot</th><th class=l>last event</th><th class=l>health"
               "</th><th class=l>rollout</th><th>last seen</th></tr>" + "".join(rows) + "</table>")
    return "".join(out)


def _claimed(d: Mapping[str, Any]) -> str:
    """A group the device claims in its reports that is not the operator's: shown, never used."""
    claimed = d.get("claimed_group")
    if claimed and claimed != d.get("group"):
        return f' <span class="muted" title="what its reports say; targeting uses the registered group">' \
               f"(claims {e(claimed)})</span>"
    return ""


def device_page(d: Mapping[str, Any], events: Sequence[Mapping[str, Any]], now: float) -> str:
    out = [f"<h1>Device {e(d.get('device_id'))}</h1><table class=device>"]
    for key, label in (("board", "board"), ("channel", "channel"), ("group", "group"), ("version", "version"),
                       ("slot", "slot"),
                       ("health", "health"), ("last_event", "last event"), ("rollout", "rollout"),
                       ("target", "target version"), ("free_mem", "free heap (bytes)"),
                       ("last_seq", "last report seq")):
        value = d.get(key)
        if key == "rollout" and value:
            cell = f'<a href="{rollout_url(str(value))}">{e(value)}</a>'
        elif key == "group":
            cell = e(value) + _claimed(d)
        else:
            cell = e(value)
        out.append(f"<tr><th class=l>{label}</th><td class=l>{cell}</td></tr>")
    for key, label in (("registered_at", "registered"), ("first_seen", "first seen"),
                       ("last_seen", "last seen")):
        out.append(f"<tr><th class=l>{label}</th><td class=l>{when(d.get(key))} UTC "
                   f"<span class=muted>({ago(d.get(key), now)})</span></td></tr>")
    out.append("</table><h2>Event history</h2>")
    if not events:
        out.append("<p class=muted>No reports yet.</p>")
    else:
        rows = []
        for ev in reversed(events):  # newest first
            detail = ev.get("detail") or {}
            text = " ".join(f"{k}={v}" for k, v in detail.items()) if isinstance(detail, dict) \
                else str(detail)
            bad = " bad" if ev.get("event") in ("failed", "rolled_back", "health_failed") else ""
            rows.append(f'<tr class="event{bad}"><td>{when(ev.get("received"))}</td>'
                        f'<td>{e(ev.get("seq"))}</td>'
                        f"<td class=l>{e(ev.get('event'))}</td><td class=l>{e(ev.get('version'))}</td>"
                        f"<td class=l>{e(ev.get('target'))}</td><td class=l>{e(ev.get('rollout'))}</td>"
                        f"<td class=l>{e(ev.get('slot'))}</td><td class=l>{e(text)}</td></tr>")
        out.append("<table class=events><tr><th>received (UTC)</th><th>seq</th><th class=l>event</th>"
                   "<th class=l>version</th><th class=l>target</th><th class=l>rollout</th><th class=l>slot"
                   "</th><th class=l>detail</th></tr>" + "".join(rows) + "</table>")
    return "".join(out)
