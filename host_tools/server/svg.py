"""SVG charts for the console, drawn on the server: no script, no third-party code, no styles
(presentation attributes only, so the console's Content-Security-Policy can forbid inline styles)."""

from __future__ import annotations

import html
from collections.abc import Sequence

# Outcome colours shared by the progress bars and the legends.
COLOURS = {
    "confirmed": "#2e7d32", "failed": "#c62828", "rolled_back": "#ef6c00", "timed_out": "#6a1b9a",
    "in_progress": "#1565c0", "not_started": "#cfd8dc",
    "ok": "#2e7d32", "pending": "#1565c0", "unknown": "#90a4ae", "-": "#90a4ae",
}
PALETTE = ("#1565c0", "#2e7d32", "#ef6c00", "#6a1b9a", "#00838f", "#ad1457", "#5d4037", "#455a64")


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def colour_for(label: str, index: int) -> str:
    low = label.lower()
    if low in COLOURS:
        return COLOURS[low]
    if "fail" in low or "bad" in low or "error" in low:
        return COLOURS["failed"]
    return PALETTE[index % len(PALETTE)]


def bar_chart(title: str, items: Sequence[tuple[str, int]], width: int = 420, bar_h: int = 18,
              limit: int = 12) -> str:
    """Horizontal bars, one per (label, count), largest first; the rest folded into 'other'."""
    rows = sorted(items, key=lambda kv: (-kv[1], kv[0]))
    if len(rows) > limit:
        rest = sum(n for _, n in rows[limit - 1:])
        rows = rows[:limit - 1] + [("other", rest)]
    label_w, count_w = 130, 90
    plot_w = width - label_w - count_w
    top = max((n for _, n in rows), default=0) or 1
    total = sum(n for _, n in rows) or 1
    height = max(1, len(rows)) * (bar_h + 6) + 24
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" aria-label="{_e(title)}">',
           f"<title>{_e(title)}</title>",
           f'<text x="0" y="14" font-size="13" font-weight="bold" fill="#222">{_e(title)}</text>']
    if not rows:
        out.append('<text x="0" y="38" font-size="12" fill="#666">no devices yet</text>')
    for i, (label, n) in enumerate(rows):
        y = 24 + i * (bar_h + 6)
        w = round(plot_w * n / top, 1)
        short = label if len(label) <= 18 else label[:17] + "\u2026"
        out.append(f'<g data-label="{_e(label)}" data-count="{n}">'
                   f'<text x="{label_w - 6}" y="{y + bar_h - 5}" font-size="12" text-anchor="end" '
                   f'fill="#222">{_e(short)}</text>'
                   f'<rect x="{label_w}" y="{y}" width="{w}" height="{bar_h}" rx="2" '
                   f'fill="{colour_for(label, i)}"><title>{_e(label)}: {n}</title></rect>'
                   f'<text x="{label_w + w + 6}" y="{y + bar_h - 5}" font-size="12" fill="#222">{n} '
                   f'({100 * n / total:.0f}%)</text></g>')
    out.append("</svg>")
    return "".join(out)


# The order outcomes are stacked in a stage's progress bar.
PROGRESS_PARTS = ("confirmed", "failed", "rolled_back", "timed_out", "in_progress")


def progress_bar(counts: dict[str, int], width: int = 320, height: int = 16) -> str:
    """One stage: its targeted devices as a stacked bar of outcomes; the unfilled rest has not started."""
    targeted = max(int(counts.get("targeted", 0)), 0)
    parts = [(k, max(int(counts.get(k, 0)), 0)) for k in PROGRESS_PARTS]
    total = max(targeted, sum(n for _, n in parts)) or 1
    done = sum(n for k, n in parts if k != "in_progress")
    label = f"{done} of {targeted} finished"
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="progress" role="img" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" aria-label="{_e(label)}">',
           f'<rect x="0" y="0" width="{width}" height="{height}" rx="3" fill="{COLOURS["not_started"]}">'
           f"<title>{_e(label)}</title></rect>"]
    x = 0.0
    for key, n in parts:
        if n <= 0:
            continue
        w = width * n / total
        out.append(f'<rect class="part-{key}" x="{x:.1f}" y="0" width="{w:.1f}" height="{height}" '
                   f'fill="{COLOURS[key]}"><title>{key.replace("_", " ")}: {n}</title></rect>')
        x += w
    out.append("</svg>")
    return "".join(out)


def legend() -> str:
    cells = [f'<span class="key"><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
             f'<rect width="10" height="10" fill="{COLOURS[k]}"/></svg> {k.replace("_", " ")}</span>'
             for k in (*PROGRESS_PARTS, "not_started")]
    return '<div class="legend">' + " ".join(cells) + "</div>"
