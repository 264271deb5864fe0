"""A spend-per-day chart as plain geometry, drawn by the template as inline SVG (no
script, nothing fetched, fine under the pages' Content-Security-Policy).

The chart has what a person needs to read it: a money axis with round amounts, a date
axis, one bar per UTC day, and a tooltip per bar with its day and amount.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from gateway.money import NANO_PER_USD

# The SVG's coordinate system; the page scales it to its width.
WIDTH = 640
HEIGHT = 200
LEFT = 64  # room for the money labels
RIGHT = 12
TOP = 12
BOTTOM = 28  # room for the date labels
MAX_TICKS = 4
DATE_EVERY = 7  # days between date labels


@dataclass(frozen=True, slots=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    day: str
    label: str  # "Nov 28"
    nano: int


@dataclass(frozen=True, slots=True)
class Tick:
    """A label on an axis: where it sits (y for money, x for dates) and what it says."""

    at: float
    nano: int
    label: str


@dataclass(frozen=True, slots=True)
class Chart:
    bars: tuple[Bar, ...]
    money_ticks: tuple[Tick, ...]
    date_ticks: tuple[Tick, ...]
    width: int
    height: int
    left: int
    right: int  # x of the plot's right edge
    top: int
    baseline: int  # y of the zero line
    peak_nano: int
    peak_day: str
    total_nano: int
    first_day: str
    last_day: str


def nice_step(peak_nano: int, *, ticks: int = MAX_TICKS) -> int:
    """The smallest of 1, 2, 2.5 or 5 times a power of ten (in nano-USD) such that
    ``ticks`` steps reach ``peak_nano``: round amounts for the money axis."""
    if peak_nano <= 0:
        return 0
    scale = 1
    while True:
        for step in (scale, 2 * scale, 5 * scale // 2, 5 * scale):
            if step * ticks >= peak_nano:
                return step
        scale *= 10


def axis_usd(nano: int) -> str:
    """An axis amount, exactly: ``$0``, ``$5``, ``$2.50``, ``$0.025``, ``$1,000``."""
    whole, frac = divmod(nano, NANO_PER_USD)
    digits = f"{frac:09d}".rstrip("0")
    if not digits:
        return f"${whole:,}"
    return f"${whole:,}.{digits.ljust(2, '0')}"


def short_day(day: dt.date) -> str:
    """``2026-11-28`` as ``Nov 28``."""
    return f"{day.strftime('%b')} {day.day}"


def daily_chart(
    spend_by_day: dict[str, int], *, today: dt.date, days: int = 30
) -> Chart:
    """One bar per UTC day for the ``days`` days ending ``today``; empty days are gaps.
    The money axis runs from $0 to a round amount at or above the highest day; a day
    with any spend is at least 2 units tall so it stays visible next to a large one."""
    first = today - dt.timedelta(days=days - 1)
    dates = [first + dt.timedelta(days=i) for i in range(days)]
    labels = [d.isoformat() for d in dates]
    values = [max(0, spend_by_day.get(day, 0)) for day in labels]
    peak = max(values, default=0)
    step = nice_step(peak)
    count = -(-peak // step) if step else 1  # ceil: the axis reaches the peak
    top_nano = step * count
    plot_w = WIDTH - LEFT - RIGHT
    plot_h = HEIGHT - TOP - BOTTOM
    baseline = HEIGHT - BOTTOM
    slot = plot_w / days

    bars = []
    for i, (day, nano) in enumerate(zip(labels, values, strict=True)):
        if nano <= 0 or top_nano <= 0:
            continue
        height = max(2.0, plot_h * nano / top_nano)
        bars.append(Bar(
            x=round(LEFT + i * slot + slot * 0.15, 2), y=round(baseline - height, 2),
            width=round(slot * 0.7, 2), height=round(height, 2), day=day,
            label=short_day(dates[i]), nano=nano,
        ))
    money_ticks = tuple(
        Tick(
            at=round(baseline - plot_h * k / count, 2), nano=step * k,
            label=axis_usd(step * k),
        )
        for k in range(count + 1)
    ) if step else (Tick(at=float(baseline), nano=0, label="$0"),)
    date_index = list(range(0, days, DATE_EVERY))
    if days - 1 - date_index[-1] < DATE_EVERY // 2:
        date_index[-1] = days - 1  # no two labels crowd each other at the end
    else:
        date_index.append(days - 1)
    date_ticks = tuple(
        Tick(at=round(LEFT + i * slot + slot / 2, 2), nano=0, label=short_day(dates[i]))
        for i in date_index
    )
    peak_at = values.index(peak) if peak else 0
    return Chart(
        bars=tuple(bars), money_ticks=money_ticks, date_ticks=date_ticks, width=WIDTH,
        height=HEIGHT, left=LEFT, right=WIDTH - RIGHT, top=TOP, baseline=baseline,
        peak_nano=peak, peak_day=short_day(dates[peak_at]), total_nano=sum(values),
        first_day=short_day(dates[0]), last_day=short_day(dates[-1]),
    )
