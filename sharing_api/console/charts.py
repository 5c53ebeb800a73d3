"""Charts drawn on the server as SVG (no script, so the strict CSP holds and the print/PDF view has
them too). Each chart is a plain data structure the template turns into ``<rect>``/``<polyline>``
elements; every chart on a page has a table beside it with the same numbers (the table fallback).

We chose server-side SVG over a vendored JavaScript library (uPlot, Chart.js): the pages run with
``script-src 'none'``, charts appear in the printed and PDF reports, and there is no third-party code to
keep up to date. The cost is no interactivity (no hover values): the tables give the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

from sharing_api.console.aggregates import DailyCount

__all__ = ["Bar", "DailyChart", "daily_bars"]

WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 720, 240, 40, 24, 10


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    width: float
    permitted_y: float
    permitted_h: float
    refused_y: float
    refused_h: float
    label: str


@dataclass(frozen=True, slots=True)
class DailyChart:
    width: int
    height: int
    left: int
    bottom: float
    top: int
    peak: int
    bars: list[Bar]
    emergency_points: str
    ticks: list[tuple[float, int]]


def daily_bars(days: list[DailyCount]) -> DailyChart:
    """Stacked bars (permitted below, refused above) per day, with emergency accesses as a line."""
    peak = max([d.permitted + d.refused for d in days] + [1])
    plot_h = HEIGHT - BOTTOM - TOP
    step = (WIDTH - LEFT) / max(len(days), 1)
    scale = plot_h / peak
    base = HEIGHT - BOTTOM
    bars, points = [], []
    for i, d in enumerate(days):
        x = LEFT + i * step
        ph, rh = d.permitted * scale, d.refused * scale
        bars.append(Bar(x + 1, max(step - 2, 1), base - ph, ph, base - ph - rh, rh, d.day.strftime("%d.%m")))
        points.append(f"{x + step / 2:.1f},{base - d.emergency * scale:.1f}")
    ticks = [(base - plot_h * f, round(peak * f)) for f in (0, 0.5, 1)]
    return DailyChart(WIDTH, HEIGHT, LEFT, base, TOP, peak, bars, " ".join(points), ticks)
