"""The dashboard's spend chart: round money ticks, date labels, bars in the plot."""

from __future__ import annotations

import datetime as dt

import pytest

from gateway.consent.chart import BOTTOM, HEIGHT, TOP, axis_usd, daily_chart, nice_step

TODAY = dt.date(2026, 12, 1)


@pytest.mark.parametrize(
    ("peak", "step"),
    [
        pytest.param(1, 1, id="one-nano"),
        pytest.param(1_250_000_000, 500_000_000, id="a-dollar-and-a-quarter"),
        pytest.param(4_000_000_000, 1_000_000_000, id="exactly-four-steps"),
        pytest.param(9_000_000, 2_500_000, id="nine-tenths-of-a-cent"),
        pytest.param(70_000_000_000, 20_000_000_000, id="seventy-dollars"),
    ],
)
def test_nice_step(peak: int, step: int) -> None:
    assert nice_step(peak) == step
    assert step * 4 >= peak


@pytest.mark.parametrize(
    ("nano", "text"),
    [
        pytest.param(0, "$0", id="zero"),
        pytest.param(5_000_000_000, "$5", id="whole"),
        pytest.param(2_500_000_000, "$2.50", id="cents"),
        pytest.param(25_000_000, "$0.025", id="below-a-cent"),
        pytest.param(1_000_000_000_000, "$1,000", id="thousands"),
        pytest.param(2_500, "$0.0000025", id="tiny"),
    ],
)
def test_axis_amounts_are_exact(nano: int, text: str) -> None:
    assert axis_usd(nano) == text


def test_chart_axes_and_bars() -> None:
    chart = daily_chart({"2026-11-28": 1_250_000_000, "2026-12-01": 100_000_000}, today=TODAY)
    assert [t.label for t in chart.money_ticks] == ["$0", "$0.50", "$1", "$1.50"]
    assert chart.money_ticks[0].at == HEIGHT - BOTTOM and chart.money_ticks[-1].at == TOP
    assert [t.label for t in chart.date_ticks] == ["Nov 2", "Nov 9", "Nov 16", "Nov 23",
                                                   "Dec 1"]
    assert [(b.label, b.nano) for b in chart.bars] == [("Nov 28", 1_250_000_000),
                                                       ("Dec 1", 100_000_000)]
    assert all(b.y >= TOP and b.y + b.height == pytest.approx(chart.baseline)
               for b in chart.bars)
    assert (chart.total_nano, chart.peak_nano, chart.peak_day) == (1_350_000_000,
                                                                   1_250_000_000, "Nov 28")
    assert (chart.first_day, chart.last_day) == ("Nov 2", "Dec 1")


def test_empty_chart_has_a_zero_line() -> None:
    chart = daily_chart({}, today=TODAY)
    assert chart.bars == () and [t.label for t in chart.money_ticks] == ["$0"]
    assert chart.total_nano == 0
