# SPDX-License-Identifier: GPL-2.0-or-later
"""How `hbctl availability` shows a hbd.availability Report: a rich table, JSON, an SVG timeline.

The SVG is written by hand (one row per subject: green up, red down, orange
planned stop; grey bands are outside the mission window) so that no plotting
library is needed; PNG goes through matplotlib only where it is installed.
"""
from __future__ import annotations

import datetime
import html
import io

from hbd.availability import Mission, Report

COLORS = {"up": "#2e9d4a", "down": "#d23c32", "planned": "#f0a030"}


def duration(s: float | None) -> str:
    """12.3s, 4m05s, 3h02m, 2d04h10m; '-' for None."""
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.3g}s" if s < 10 else f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    if s < 86400:
        return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    return f"{int(s // 86400)}d{int(s % 86400 // 3600):02d}h{int(s % 3600 // 60):02d}m"


def percent(a: float | None) -> str:
    if a is None:
        return "-"
    if a >= 1.0:
        return "100 %"
    digits = 2
    while digits < 7 and f"{a * 100:.{digits}f}".startswith("100"):
        digits += 1
    return f"{a * 100:.{max(digits, 3)}f} %"


def when(t: float, tz: datetime.tzinfo | None = None) -> str:
    return datetime.datetime.fromtimestamp(t, tz).strftime("%Y-%m-%d %H:%M:%S")


def render_text(report: Report, tz: datetime.tzinfo | None = None, width: int = 140) -> str:
    from rich.console import Console
    from rich.table import Table

    out = io.StringIO()
    console = Console(file=out, width=width, force_terminal=False, color_system=None)
    title = f"Availability {when(report.since, tz)} .. {when(report.until, tz)}"
    title += f", mission {report.mission}" if report.mission else ", continuous mission (every stop counts)"
    t = Table(title=title, title_justify="left")
    for col in ("subject", "observed", "uptime", "failures", "planned", "MTTF", "MTTR", "A", "down/year", "class",
                "A unplanned"):
        t.add_column(col, justify="left" if col in ("subject", "class") else "right", no_wrap=True)
    for s in report.subjects:
        t.add_row(f"{s.kind} {s.name}", duration(s.observed_s), duration(s.uptime_s), str(s.failures),
                  str(s.planned_failures), duration(s.mttf_s), duration(s.mttr_s), percent(s.availability),
                  duration(s.downtime_per_year_s), s.klass, percent(s.availability_unplanned))
    console.print(t)
    if not report.subjects:
        console.print("no node, group or service transitions in this period")
    console.print("A = MTTF / (MTTF + MTTR); planned: stops for standby, shutdown, failback or reload (counted as "
                  "failures inside the mission); A unplanned: A with them left out; classes: basic 99-99.9 %, "
                  "high 99.99-99.999 %, continuous above")
    return out.getvalue()


def render_svg(report: Report, mission: Mission | None = None, tz: datetime.tzinfo | None = None) -> str:
    """The availability timeline: one bar per subject over [since, until]."""
    left, right, row, top = 260, 20, 28, 50
    width = 1000
    span = max(report.until - report.since, 1e-9)
    plot_w = width - left - right
    height = top + row * max(len(report.subjects), 1) + 50

    def x(t: float) -> float:
        return left + (t - report.since) / span * plot_w

    e = html.escape
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="10" y="20" font-size="14">Availability {e(when(report.since, tz))} .. '
             f'{e(when(report.until, tz))}{e(", mission " + report.mission) if report.mission else ""}</text>']
    bottom = top + row * len(report.subjects)
    if mission is not None:        # grey where the mission does not count
        prev = report.since
        for a, b in mission.windows(report.since, report.until, tz) + [(report.until, report.until)]:
            if a > prev:
                parts.append(f'<rect x="{x(prev):.1f}" y="{top - 6}" width="{x(a) - x(prev):.1f}" '
                             f'height="{bottom - top + 6}" fill="#e4e4e4"><title>outside the mission</title></rect>')
            prev = b
    for i, s in enumerate(report.subjects):
        y = top + i * row
        label = f"{s.kind} {s.name}  {percent(s.availability)}"
        parts.append(f'<text x="10" y="{y + 15}">{e(label)}</text>')
        for a, b, st in s.timeline:
            w = max(x(b) - x(a), 0.5)
            parts.append(f'<rect x="{x(a):.2f}" y="{y + 2}" width="{w:.2f}" height="{row - 8}" '
                         f'fill="{COLORS.get(st, "#999")}"><title>{e(st)} {e(when(a, tz))} .. {e(when(b, tz))} '
                         f'({e(duration(b - a))})</title></rect>')
    for k in range(5):
        t = report.since + span * k / 4
        parts.append(f'<text x="{x(t):.1f}" y="{bottom + 18}" text-anchor="middle">{e(when(t, tz))}</text>')
    legend_y = bottom + 38
    for j, (st, c) in enumerate(COLORS.items()):
        parts.append(f'<rect x="{left + j * 110}" y="{legend_y - 10}" width="12" height="12" fill="{c}"/>'
                     f'<text x="{left + j * 110 + 16}" y="{legend_y}">{st}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write_png(report: Report, path: str, tz: datetime.tzinfo | None = None) -> None:
    """PNG through matplotlib (ImportError when it is not installed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 0.5 + 0.4 * max(len(report.subjects), 1)))
    for i, s in enumerate(report.subjects):
        bars: list[tuple[float, float]] = [(a, b - a) for a, b, _ in s.timeline]
        ax.broken_barh(bars, (i - 0.4, 0.8), facecolors=[COLORS.get(st, "#999") for _, _, st in s.timeline])
    ax.set_yticks(range(len(report.subjects)), [f"{s.kind} {s.name}" for s in report.subjects])
    ax.set_xlim(report.since, report.until)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
