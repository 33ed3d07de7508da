"""The status page at `/`: plain HTML, no scripts, no build step; refreshes itself every few seconds."""

from __future__ import annotations

import html
import time
from collections.abc import Sequence
from typing import Any

_CSS = """body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}.fail{color:#b00;font-weight:bold}.pass{color:#070}
.paused{color:#b60;font-weight:bold}.aborted{color:#b00}.completed{color:#070}small{color:#666}"""


def _e(value: object) -> str:
    return html.escape("-" if value is None else str(value))


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}%"


def _when(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def stage_rows(stages: Sequence[dict[str, Any]], current: str | None = None) -> list[str]:
    rows = []
    for s in stages:
        c = s["counts"]
        mark = " &#9664;" if s["name"] == current else ""
        rows.append(
            f"<tr><td class=l>{_e(s['name'])}{mark}</td><td>{c['targeted']}</td><td>{c['started']}</td>"
            f"<td>{c['in_progress']}</td><td>{c['confirmed']}</td><td>{c['failed']}</td>"
            f"<td>{c['rolled_back']}</td><td>{c['timed_out']}</td><td>{_pct(s['failure_rate'])}</td>"
            f"<td>{_pct(s['rollback_rate'])}</td><td>{_pct(s['health_check_failure_rate'])}</td>"
            f"<td class='l {_e(s['verdict'])}'>{_e(s['verdict'])}</td></tr>")
    return rows


def render(statuses: Sequence[dict[str, Any]], summary: dict[str, Any], now: float | None = None) -> str:
    out = ["<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=5>",
           f"<title>mpota rollouts</title><style>{_CSS}</style></head><body>",
           f"<h1>mpota rollouts</h1><p><small>{_e(_when(now or time.time()))}</small></p>"]
    if not statuses:
        out.append("<p>No rollouts yet.</p>")
    for st in statuses:
        r = st["rollout"]
        step = st["step"]
        out.append(f"<h2>{_e(r['id'])}: {_e(r['version'])} on {_e(r['board'])}/{_e(r['channel'])} "
                   f"<span class={_e(r['state'])}>{_e(r['state'])}</span></h2>")
        out.append(f"<p>step {step['index'] + 1} of {step['count']}: {_e(step['stage'])} "
                   f"(groups {_e(', '.join(step['groups']) or '-')}, {step['percentage']:g}%); "
                   f"channel seq {_e(r['published_seq'])}")
        if r.get("reason"):
            out.append(f"<br><b>reason:</b> {_e(r['reason'])}")
        nxt = st.get("next") or {}
        if nxt.get("waiting_for") and r["state"] == "active":
            out.append(f"<br><small>waiting for: {_e(nxt['waiting_for'])}</small>")
        out.append("</p><table><tr><th class=l>stage</th><th>targeted</th><th>started</th>"
                   "<th>in progress</th>"
                   "<th>confirmed</th><th>failed</th><th>rolled back</th><th>timed out</th><th>failure</th>"
                   "<th>rollback</th><th>health fail</th><th class=l>gate</th></tr>")
        out.extend(stage_rows(st["stages"], step["stage"] if r["state"] == "active" else None))
        out.append("</table>")
    out.append(f"<h2>Inventory</h2><p>{summary.get('devices', 0)} devices, {summary.get('events', 0)} events "
               "stored</p>")
    for key, title in (("by_version", "version"), ("by_group", "group"), ("by_health", "health"),
                       ("by_last_event", "last event")):
        counts = summary.get(key) or {}
        if not counts:
            continue
        out.append(f"<table><tr><th class=l>{title}</th><th>devices</th></tr>")
        out.extend(f"<tr><td class=l>{_e(k)}</td><td>{n}</td></tr>" for k, n in counts.items())
        out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)
