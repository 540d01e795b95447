"""``omni report``: the per-rule table in the terminal, and an HTML page with charts that needs no network.

The page carries its figures as JSON and a few lines of script that draw three
SVG charts from them (uplift with its interval, the funnel from sent to
converted, suppression reasons): no library, no font or stylesheet from
elsewhere, so it opens from a file on a machine with no connection.
"""

from __future__ import annotations

import html
import json
import ssl
import urllib.request
from datetime import datetime, timezone
from typing import Any

FUNNEL = ("sent", "delivered", "opened", "clicked", "conversions")


def fetch(url: str, headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None) -> dict[str, Any]:
    """The figures from a worker's ``/rules/stats`` (any worker: it sums over all of them); ``context``: https's CA."""
    request = urllib.request.Request(f"{url.rstrip('/')}/rules/stats", headers=headers or {})
    with urllib.request.urlopen(request, timeout=10, context=context) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:.1f}%"


def _pp(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 100:+.1f} pp"


def table(stats: dict[str, Any]) -> str:
    """The per-rule table, one line a rule, with a flag on a rule whose uplift is significantly negative."""
    head = ("rule", "sent", "held out", "suppressed", "delivered", "opened", "clicked", "conv.", "rate",
            "holdout rate", "uplift [95% interval]", "revenue", "holdout revenue")  # fmt: skip
    rows = []
    for r in stats["rules"]:
        interval = "n/a" if r["uplift"] is None else f"{_pp(r['uplift'])} [{_pp(r['ci_low'])}, {_pp(r['ci_high'])}]"
        flag = "  << NEGATIVE" if r["negative"] else ""
        rows.append((
            r["rule"], str(r["sent"]), str(r["held_out"]), str(sum(r["suppressed"].values())), str(r["delivered"]),
            str(r["opened"]), str(r["clicked"]), str(r["conversions"]), _pct(r["rate"]), _pct(r["holdout_rate"]),
            interval + flag, f"{r['revenue']:,.2f}", f"{r['holdout_revenue']:,.2f}",
        ))  # fmt: skip
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    when = datetime.fromtimestamp(stats["generated_at"], timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    lines.append(f"\nas of {when}; {'all' if stats['complete'] else 'NOT all'} state partitions counted")
    reasons = sorted({k for r in stats["rules"] for k in r["suppressed"]})
    if reasons:
        lines.append("suppressed by reason: " + "; ".join(
            f"{r['rule']}: " + ", ".join(f"{k} {v}" for k, v in r["suppressed"].items())
            for r in stats["rules"] if r["suppressed"]
        ))  # fmt: skip
    return "\n".join(lines)


_SCRIPT = r"""
const data = JSON.parse(document.getElementById('figures').textContent);
const NS = 'http://www.w3.org/2000/svg';
function el(name, attrs, text) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function chart(id, height) {
  const box = document.getElementById(id);
  const svg = el('svg', {width: 900, height: height, viewBox: `0 0 900 ${height}`});
  box.appendChild(svg);
  return svg;
}
const rules = data.rules;
const COLOURS = ['#4c78a8', '#72b7b2', '#54a24b', '#eeca3b', '#f58518', '#e45756', '#b279a2', '#9d755d'];

// 1. uplift with its 95 % interval, one row a rule, around a zero line
(function () {
  const measured = rules.filter(r => r.uplift !== null);
  const svg = chart('uplift', 40 + 30 * Math.max(1, measured.length));
  const lo = Math.min(-0.05, ...measured.map(r => r.ci_low)), hi = Math.max(0.05, ...measured.map(r => r.ci_high));
  const x = v => 220 + (v - lo) / (hi - lo) * 640;
  svg.appendChild(el('line', {x1: x(0), x2: x(0), y1: 10, y2: 30 + 30 * measured.length, stroke: '#888'}));
  measured.forEach((r, i) => {
    const y = 30 + 30 * i, colour = r.negative ? '#d62728' : '#1f77b4';
    svg.appendChild(el('text', {x: 10, y: y + 4, 'font-size': 12}, r.rule));
    svg.appendChild(el('line', {x1: x(r.ci_low), x2: x(r.ci_high), y1: y, y2: y, stroke: colour, 'stroke-width': 3}));
    svg.appendChild(el('rect', {x: x(r.uplift) - 4, y: y - 4, width: 8, height: 8, fill: colour}));
    svg.appendChild(el('text', {x: x(r.ci_high) + 6, y: y + 4, 'font-size': 11},
      `${(r.uplift * 100).toFixed(1)} pp [${(r.ci_low * 100).toFixed(1)}, ${(r.ci_high * 100).toFixed(1)}]`));
  });
  if (!measured.length) svg.appendChild(el('text', {x: 10, y: 25}, 'no rule has touches in both groups yet'));
  svg.parentNode.dataset.drawn = measured.length;
})();

// 2. the funnel, sent to converted, bars per rule
(function () {
  const stages = ['sent', 'delivered', 'opened', 'clicked', 'conversions'];
  const svg = chart('funnel', 50 + 24 * rules.length * 1.2);
  const top = Math.max(1, ...rules.map(r => r.sent));
  let drawn = 0;
  rules.forEach((r, i) => {
    const y = 20 + 29 * i;
    svg.appendChild(el('text', {x: 10, y: y + 12, 'font-size': 12}, r.rule));
    stages.forEach((s, j) => {
      const w = r[s] / top * 120;
      svg.appendChild(el('rect', {x: 220 + j * 130, y: y, width: Math.max(w, 0.5), height: 16, fill: COLOURS[j]}));
      svg.appendChild(el('text', {x: 222 + j * 130, y: y + 28 > 0 ? y + 12 : y, 'font-size': 10, fill: '#222'}, String(r[s])));
      drawn += 1;
    });
  });
  stages.forEach((s, j) => svg.appendChild(el('text', {x: 220 + j * 130, y: 12, 'font-size': 11}, s)));
  svg.parentNode.dataset.drawn = drawn;
})();

// 3. suppression reasons, one stacked bar a rule
(function () {
  const reasons = [...new Set(rules.flatMap(r => Object.keys(r.suppressed)))].sort();
  const svg = chart('suppressed', 60 + 26 * rules.length);
  const top = Math.max(1, ...rules.map(r => Object.values(r.suppressed).reduce((a, b) => a + b, 0)));
  let drawn = 0;
  rules.forEach((r, i) => {
    const y = 20 + 26 * i;
    let x = 220;
    svg.appendChild(el('text', {x: 10, y: y + 12, 'font-size': 12}, r.rule));
    reasons.forEach((reason, j) => {
      const n = r.suppressed[reason] || 0;
      if (!n) return;
      const w = n / top * 640;
      svg.appendChild(el('rect', {x: x, y: y, width: w, height: 16, fill: COLOURS[j % COLOURS.length]},));
      svg.lastChild.appendChild(el('title', {}, `${reason}: ${n}`));
      x += w;
      drawn += 1;
    });
  });
  reasons.forEach((reason, j) => {
    const y = 30 + 26 * rules.length;
    svg.appendChild(el('rect', {x: 220 + j * 110, y: y, width: 10, height: 10, fill: COLOURS[j % COLOURS.length]}));
    svg.appendChild(el('text', {x: 234 + j * 110, y: y + 9, 'font-size': 10}, reason));
  });
  svg.parentNode.dataset.drawn = drawn;
})();
"""


def page(stats: dict[str, Any]) -> str:
    when = datetime.fromtimestamp(stats["generated_at"], timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    flagged = [r["rule"] for r in stats["rules"] if r["negative"]]
    warning = (
        f"<p class=warn>Significantly negative uplift: {html.escape(', '.join(flagged))}. "
        "These rules make customers buy less than the holdout group; consider switching them off.</p>"
        if flagged else ""
    )  # fmt: skip
    figures = json.dumps(stats).replace("</", "<\\/")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>omni: what each play earns</title>
<style>
body {{ font: 14px system-ui, sans-serif; margin: 2em; color: #222; }}
pre {{ font-size: 12px; background: #f6f6f6; padding: 1em; overflow-x: auto; }}
.warn {{ color: #b00; font-weight: bold; }}
.chart {{ margin: 1em 0 2em; }}
</style></head>
<body>
<h1>What each play earns</h1>
<p>As of {when}; {"all" if stats["complete"] else "<b>not all</b>"} state partitions counted. Uplift is the conversion
rate of customers who got the action minus that of the holdout group, who would have got it and did not,
in percentage points, with a 95 % interval. A purchase in any channel within the rule's attribution window after
an action (or a would-be action) is its conversion; the last touch before a purchase gets it.</p>
{warning}
<h2>Uplift with its interval</h2><div id="uplift" class="chart"></div>
<h2>From sent to converted</h2><div id="funnel" class="chart"></div>
<h2>Not sent, by reason</h2><div id="suppressed" class="chart"></div>
<h2>The table</h2><pre>{html.escape(table(stats))}</pre>
<script type="application/json" id="figures">{figures}</script>
<script>{_SCRIPT}</script>
</body></html>
"""
