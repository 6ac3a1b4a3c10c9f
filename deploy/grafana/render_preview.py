#!/usr/bin/env python3
"""Renders the main time series of the sbserve dashboard into one SVG, from Prometheus data.

usage: render_preview.py DUMP.json OUT.svg
  DUMP.json: the query_range results of every panel target, as written by
  tests/server/metrics/dashboard_live_test.py --dump (deploy/grafana/make_preview.sh runs both).

Plain SVG written here (no plotting package): one small chart per panel, a line per series,
legends formatted like Grafana's ({{label}} replaced by the series' label value).
"""
import json
import math
import re
import sys
from xml.sax.saxutils import escape

# The panels shown, in order (titles of deploy/grafana/sbserve.json).
MAIN = [
    "Finished requests / s by reason",
    "Tokens / s",
    "Requests running / waiting",
    "KV cache usage",
    "Time to first token",
    "Inter-token latency",
    "End-to-end latency",
    "Engine step time",
    "Rejected requests / s by reason",
    "Aborts, deadline drops, preemptions / s",
    "Process CPU (cores)",
    "Process memory",
]
COLORS = ["#7eb26d", "#eab839", "#6ed0e0", "#ef843c", "#e24d42", "#1f78c1", "#ba43a9", "#705da0",
          "#508642", "#cca300"]
COLS, CW, CH = 3, 400, 215          # columns, chart width and height
PAD_L, PAD_R, PAD_T, PAD_B = 52, 12, 26, 48


def legend_text(fmt, metric):
    text = re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt or "")
    return text.strip() or "value"


def nice_max(v):
    if v <= 0 or math.isnan(v):
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10):
        if v <= m * exp:
            return m * exp
    return 10 * exp


def fmt_value(v, unit):
    if unit == "s":
        if v == 0:
            return "0"
        return "%.3g ms" % (v * 1e3) if v < 1 else "%.3g s" % v
    if unit == "bytes":
        for div, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if v >= div:
                return "%.3g %s" % (v / div, suffix)
        return "%.3g B" % v
    if unit == "percentunit":
        return "%.0f%%" % (v * 100)
    return "%.3g" % v


def chart(panel, x0, y0, start, end):
    out = ['<g transform="translate(%d,%d)">' % (x0, y0),
           '<rect width="%d" height="%d" rx="3" fill="#181b1f" stroke="#2c3235"/>' % (CW - 8, CH - 8),
           '<text x="10" y="17" fill="#d8d9da" font-size="12" font-weight="bold">%s</text>' % escape(panel["title"])]
    lines = []
    for target in panel["targets"]:
        for series in target["result"]:
            pts = [(float(t), float(v)) for t, v in series["values"]]
            pts = [(t, v) for t, v in pts if not math.isnan(v) and not math.isinf(v)]
            if pts:
                lines.append((legend_text(target["legend"], series["metric"]), pts))
    pw, ph = CW - 8 - PAD_L - PAD_R, CH - 8 - PAD_T - PAD_B
    ymax = nice_max(max((v for _, pts in lines for _, v in pts), default=0))
    if panel.get("unit") == "percentunit":
        ymax = 1.0
    span = max(end - start, 1)
    for i in range(5):  # grid and y labels
        y = PAD_T + ph - ph * i / 4
        out.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#2c3235"/>' % (PAD_L, y, PAD_L + pw, y))
        out.append('<text x="%d" y="%.1f" fill="#8e8e8e" font-size="9" text-anchor="end">%s</text>'
                   % (PAD_L - 4, y + 3, escape(fmt_value(ymax * i / 4, panel.get("unit", "")))))
    step = 5 if span <= 30 else 10 if span <= 60 else 30 if span <= 180 else 60
    for s in range(0, int(span) + 1, step):  # x labels: seconds into the run
        x = PAD_L + pw * s / span
        out.append('<text x="%.1f" y="%d" fill="#8e8e8e" font-size="9" text-anchor="middle">%ds</text>'
                   % (x, PAD_T + ph + 12, s))
    if not lines:
        out.append('<text x="%d" y="%d" fill="#8e8e8e" font-size="11" text-anchor="middle">No data</text>'
                   % (PAD_L + pw / 2, PAD_T + ph / 2))
    for i, (name, pts) in enumerate(lines):
        color = COLORS[i % len(COLORS)]
        path = " ".join("%s%.1f,%.1f" % ("M" if j == 0 else "L", PAD_L + pw * (t - start) / span,
                                         PAD_T + ph - ph * min(v, ymax) / ymax) for j, (t, v) in enumerate(pts))
        out.append('<path d="%s" fill="none" stroke="%s" stroke-width="1.5"/>' % (path, color))
        per_row = 3 if max(len(n) for n, _ in lines) <= 16 else 2
        lx = PAD_L + (i % per_row) * (330 // per_row)
        ly = PAD_T + ph + 26 + (i // per_row) * 11
        out.append('<rect x="%d" y="%d" width="10" height="3" fill="%s"/>' % (lx, ly - 4, color))
        out.append('<text x="%d" y="%d" fill="#c7d0d9" font-size="9">%s</text>' % (lx + 14, ly, escape(name[:30])))
    out.append("</g>")
    return out


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    dump = json.load(open(sys.argv[1]))
    panels = {p["title"]: p for p in dump["panels"]}
    shown = [panels[t] for t in MAIN if t in panels]
    if not shown:
        print("render_preview: none of the main panels is in %s" % sys.argv[1], file=sys.stderr)
        return 1
    rows = (len(shown) + COLS - 1) // COLS
    width, height = COLS * CW + 8, rows * CH + 40
    svg = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" '
           'font-family="Helvetica, Arial, sans-serif">' % (width, height, width, height),
           '<rect width="100%" height="100%" fill="#111217"/>',
           '<text x="12" y="24" fill="#d8d9da" font-size="15">sbserve dashboard preview: %s</text>'
           % escape(dump.get("caption", "live Prometheus data from the dashboard test (1 s scrapes)"))]
    for i, panel in enumerate(shown):
        svg += chart(panel, 8 + (i % COLS) * CW, 36 + (i // COLS) * CH, dump["start"], dump["end"])
    svg.append("</svg>")
    with open(sys.argv[2], "w") as f:
        f.write("\n".join(svg) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
