"""A small spend-over-time chart as plain geometry, drawn by the template as inline SVG
(no script, nothing fetched, fine under the pages' Content-Security-Policy)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

WIDTH = 300
HEIGHT = 60


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    day: str
    nano: int


@dataclass(frozen=True, slots=True)
class Chart:
    bars: tuple[Bar, ...]
    width: int
    height: int
    peak_nano: int
    total_nano: int
    first_day: str
    last_day: str


def daily_chart(
    spend_by_day: dict[str, int], *, today: dt.date, days: int = 30
) -> Chart:
    """One bar per UTC day for the ``days`` days ending ``today``; empty days are gaps.
    Bars are scaled to the highest day; a day with any spend is at least 2 units tall so
    it stays visible next to a large one."""
    first = today - dt.timedelta(days=days - 1)
    labels = [(first + dt.timedelta(days=i)).isoformat() for i in range(days)]
    values = [max(0, spend_by_day.get(day, 0)) for day in labels]
    peak = max(values, default=0)
    slot = WIDTH / days
    bars = []
    for i, (day, nano) in enumerate(zip(labels, values, strict=True)):
        if nano <= 0 or peak <= 0:
            continue
        height = max(2.0, (HEIGHT - 2) * nano / peak)
        bars.append(Bar(
            x=round(i * slot + slot * 0.15, 2), y=round(HEIGHT - height, 2),
            width=round(slot * 0.7, 2), height=round(height, 2), day=day, nano=nano,
        ))
    return Chart(
        bars=tuple(bars), width=WIDTH, height=HEIGHT, peak_nano=peak,
        total_nano=sum(values), first_day=labels[0], last_day=labels[-1],
    )
