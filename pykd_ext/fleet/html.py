"""report.html: one self-contained page (inline CSS and SVG, no script, nothing fetched).

It shows the run's counts by status, a bar chart of dumps per bucket, a stacked chart of dumps per
day and bucket when the dumps span more than one day, and the bucket table (culprit, confidence,
first and last seen, examples, each linked to its JSON report under ``reports/``: the page lives in
the --out folder beside them). Every value from the input (paths, driver names) is escaped.
"""
from __future__ import annotations

from html import escape
from typing import Any, Dict, List, Optional
from urllib.parse import quote

from .inputs import STATUSES

CHART_BUCKETS = 20  # bars in the bucket chart; the rest are summed into one "other buckets" bar
DAY_BUCKETS = 8  # buckets told apart in the day chart; the rest are "other"
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")
OTHER_COLOUR = "#bab0ac"

STYLE = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,sans-serif;margin:24px;color:#222}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse;margin-top:8px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.n{text-align:right}.muted{color:#777}code{font-size:12px}
.counts span{display:inline-block;margin-right:18px}
svg text{font:12px system-ui,sans-serif}
"""


def _bucket_chart(buckets: List[Dict[str, Any]]) -> str:
    shown = buckets[:CHART_BUCKETS]
    rows = [(b["bucket"], b["count"]) for b in shown]
    rest = sum(b["count"] for b in buckets[CHART_BUCKETS:])
    if rest:
        rows.append((f"{len(buckets) - CHART_BUCKETS} other buckets", rest))
    if not rows:
        return '<p class="muted">No results yet.</p>'
    label_width, bar_width, row_height = 280, 420, 22
    largest = max(count for _, count in rows)
    height = row_height * len(rows) + 4
    parts = [f'<svg id="bucket-chart" role="img" aria-label="dumps per bucket" width="{label_width + bar_width + 60}" '
             f'height="{height}" xmlns="http://www.w3.org/2000/svg">']
    for position, (label, count) in enumerate(rows):
        y = position * row_height + 2
        width = max(1, round(bar_width * count / largest))
        parts.append(f'<text x="{label_width - 6}" y="{y + 15}" text-anchor="end">{escape(label)}</text>'
                     f'<rect class="bar" data-bucket="{escape(label)}" data-count="{count}" x="{label_width}" y="{y}" '
                     f'width="{width}" height="{row_height - 6}" fill="{PALETTE[0]}"><title>{escape(label)}: {count}'
                     f'</title></rect><text x="{label_width + width + 6}" y="{y + 15}">{count}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _day_chart(days: Dict[str, Dict[str, int]], buckets: List[Dict[str, Any]]) -> str:
    if len(days) < 2:
        return ""
    named = [b["bucket"] for b in buckets[:DAY_BUCKETS]]
    colours = {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(named)}
    column, gap, chart_height, top = 66, 10, 220, 22
    largest = max(sum(counts.values()) for counts in days.values())
    width = (column + gap) * len(days) + 60
    parts = [f'<svg id="day-chart" role="img" aria-label="dumps per day and bucket" width="{width}" '
             f'height="{top + chart_height + 24}" xmlns="http://www.w3.org/2000/svg">']
    for position, (day, counts) in enumerate(days.items()):
        x = 40 + position * (column + gap)
        y = top + chart_height
        stack = [(name, counts.get(name, 0)) for name in named]
        stack.append(("other", sum(n for name, n in counts.items() if name not in colours)))
        for name, count in stack:
            if not count:
                continue
            height = chart_height * count / largest
            y -= height
            parts.append(f'<rect class="day-bar" data-day="{day}" data-bucket="{escape(name)}" data-count="{count}" '
                         f'x="{x}" y="{y:.1f}" width="{column}" height="{height:.1f}" '
                         f'fill="{colours.get(name, OTHER_COLOUR)}"><title>{day} {escape(name)}: {count}</title></rect>')
        parts.append(f'<text x="{x + column / 2}" y="{top + chart_height + 14}" text-anchor="middle">{day}</text>'
                     f'<text x="{x + column / 2}" y="{top + chart_height - 4 - chart_height * sum(counts.values()) / largest:.1f}"'
                     f' text-anchor="middle">{sum(counts.values())}</text>')
    parts.append("</svg>")
    legend = " ".join(f'<span style="color:{colours[name]}">&#9632;</span> {escape(name)}' for name in named)
    return (f"<h2>Dumps per day</h2>{''.join(parts)}<p>{legend} <span style=\"color:{OTHER_COLOUR}\">&#9632;</span> "
            f"other</p>")


def _table(buckets: List[Dict[str, Any]]) -> str:
    rows = ["<tr><th>bucket</th><th>count</th><th>share</th><th>culprit</th><th>confidence</th>"
            "<th>first seen</th><th>last seen</th><th>examples</th></tr>"]
    for b in buckets:
        confidence = b["confidence_min"] or ""
        if b["confidence_max"] and b["confidence_max"] != b["confidence_min"]:
            confidence += f"&ndash;{escape(b['confidence_max'])}"
        culprit = " ".join(escape(v) for v in (b["culprit_driver"], b["culprit_image"]) if v) or "&mdash;"
        reports = b.get("example_reports") or [None] * len(b["examples"])
        examples = "<br>".join(_example(path, report) for path, report in zip(b["examples"], reports))
        rows.append(f'<tr class="bucket" data-bucket="{escape(b["bucket"])}"><td><b>{escape(b["bucket"])}</b><br>'
                    f'<span class="muted">{b["bucket_hash"]}</span></td><td class="n">{b["count"]}</td>'
                    f'<td class="n">{100 * b["share"]:.1f}%</td><td>{culprit}</td><td>{confidence}</td>'
                    f'<td>{escape(b["first_seen"] or "")}</td><td>{escape(b["last_seen"] or "")}</td>'
                    f'<td>{examples}</td></tr>')
    return f'<table id="buckets">{"".join(rows)}</table>'


def _example(path: str, report: Optional[str]) -> str:
    """An input of a bucket, linked to its JSON report (a relative link into reports/) when it has one."""
    shown = f"<code>{escape(path)}</code>"
    if not report:
        return shown
    return f'<a class="report" href="{escape(quote(report, safe="/"))}">{shown}</a>'


def render_html(summary: Dict[str, Any]) -> str:
    buckets = summary["buckets"]
    counts = "".join(f'<span>{status}: <b data-status="{status}">{summary["by_status"].get(status, 0)}</b></span>'
                     for status in STATUSES)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<title>leakhunt triage</title>"
        f"<style>{STYLE}</style></head><body>"
        f"<h1>leakhunt triage: {summary['inputs']} input(s), {len(buckets)} bucket(s)</h1>"
        f"<p class=\"counts\">{counts}</p>"
        f"<p class=\"muted\">leakhunt {escape(summary['leakhunt_version'])}, bucket rules version "
        f"{summary['bucket_version']}, written {escape(summary['written'])}</p>"
        f"<h2>Dumps per bucket</h2>{_bucket_chart(buckets)}"
        f"{_day_chart(summary['per_day'], buckets)}"
        f"<h2>Buckets</h2>{_table(buckets)}"
        "</body></html>\n")
