"""The runs index, `<out>/index.html`: one row per run (status, epochs, best val/acc_top1, last
update, a link to its page) and the runs' validation curves overlaid, drawn as inline SVG here.
Pure builders: run folder contents in, text out."""

from __future__ import annotations

import math
from dataclasses import dataclass

from monitor.outputs.report.folder import RunFolder, history_series
from monitor.outputs.report.html import REFRESH_S, document, href, status_badge, text
from monitor.outputs.report.page import HEADLINE, best, format_time

OVERLAID = (("val/acc_top1", "Validation accuracy (top-1)"), ("val/loss", "Validation loss"))
# matplotlib's tab10, so a run's colour here matches the usual first colours of the figures.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")
WIDTH, HEIGHT, MARGIN = 560, 300, (16, 16, 40, 56)  # top, right, bottom, left


@dataclass(frozen=True)
class RunEntry:
    """What the index shows of one run."""

    folder: str
    run: str
    status: str
    epochs: int
    best: tuple[int, float] | None
    updated: object  # the latest message time in summary.json
    series: dict[str, list[tuple[int, float]]]


def run_entry(run: RunFolder) -> RunEntry:
    drawn = run.summary.get("epochs")
    return RunEntry(run.folder, run.run, run.status, len(drawn) if isinstance(drawn, list) else 0,
                    best(run.history), run.summary.get("last_message_time"),
                    {metric: history_series(run.history, metric) for metric, _ in OVERLAID})


def index_page(entries: list[RunEntry]) -> str:
    """The runs index, runs in the order given. Reloads itself every REFRESH_S seconds while a run is running."""
    rows = "".join(
        f'<tr><td style="border-left: 6px solid {PALETTE[i % len(PALETTE)]}">'
        f'<a href="{href(entry.folder + "/index.html")}">{text(entry.run)}</a></td>'
        f"<td>{status_badge(entry.status)}</td><td class=\"num\">{entry.epochs}</td>"
        f"<td class=\"num\">{'—' if entry.best is None else f'{entry.best[1]:.4f} (epoch {entry.best[0]})'}</td>"
        f"<td>{text(format_time(entry.updated))}</td></tr>" for i, entry in enumerate(entries))
    table = ('<table><thead><tr><th>run</th><th>status</th><th class="num">epochs</th>'
             f'<th class="num">best {text(HEADLINE)}</th><th>last update</th></tr></thead><tbody>{rows}</tbody></table>'
             if entries else '<p class="note">No runs yet.</p>')
    charts = "".join(_chart(metric, title, entries) for metric, title in OVERLAID
                     if any(entry.series.get(metric) for entry in entries))
    body = (f'<header><h1>Training runs</h1><span class="muted">{len(entries)} run(s)</span></header>{table}'
            + (f'<h2>Validation curves</h2><div class="columns">{charts}</div>' if charts else ""))
    live = any(entry.status == "running" for entry in entries)
    script = f"setTimeout(function () {{ location.reload(); }}, {REFRESH_S * 1000});\n" if live else ""
    return document("Training runs", body, script=script)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About `count` round values (1, 2 or 5 times a power of ten apart) from at or below `low` to at
    or above `high`."""
    if not math.isfinite(high - low):
        return [low, high]
    if high - low < 1e-12:
        low, high = low - 0.5, high + 0.5
    raw = (high - low) / (count - 1)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first, last = math.floor(low / step), math.ceil(high / step)
    return [round(k * step, 12) for k in range(first, last + 1)]


def _chart(metric: str, title: str, entries: list[RunEntry]) -> str:
    """One metric of every run on shared axes: an SVG line per run, in the run's table colour."""
    points = [p for entry in entries for p in entry.series.get(metric, [])]
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    ticks = nice_ticks(min(p[1] for p in points), max(p[1] for p in points))
    y0, y1 = ticks[0], ticks[-1]
    top, right, bottom, left = MARGIN
    plot_w, plot_h = WIDTH - left - right, HEIGHT - top - bottom

    def sx(x: float) -> float:
        return left + (plot_w / 2 if x1 == x0 else (x - x0) / (x1 - x0) * plot_w)

    def sy(y: float) -> float:
        return top + (1 - (y - y0) / (y1 - y0)) * plot_h

    parts = [f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#d1d9e0"/>']
    for value in ticks:
        y = sy(value)
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eaeef2"/>'
                     f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{value:.4g}</text>')
    step = max(1, -(-(x1 - x0) // 8))
    for x in range(x0, x1 + 1, step):
        parts.append(f'<text x="{sx(x):.1f}" y="{top + plot_h + 16}" text-anchor="middle">{x}</text>')
    parts.append(f'<text x="{left + plot_w / 2:.1f}" y="{HEIGHT - 6}" text-anchor="middle">epoch</text>')
    for i, entry in enumerate(entries):
        series = entry.series.get(metric, [])
        if not series:
            continue
        colour = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in series)
        parts.append(f'<g><title>{text(entry.run)}</title>'
                     f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>'
                     + "".join(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>' for x, y in series)
                     + "</g>")
    legend = " ".join(f'<span class="legend"><span style="color: {PALETTE[i % len(PALETTE)]}">&#9632;</span> '
                      f'{text(entry.run)}</span>' for i, entry in enumerate(entries) if entry.series.get(metric))
    return (f'<figure><svg class="overlay" role="img" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}"'
            f' xmlns="http://www.w3.org/2000/svg"><title>{text(title)}</title>{"".join(parts)}</svg>'
            f'<figcaption>{text(title)} ({text(metric)}): {legend}</figcaption></figure>')
