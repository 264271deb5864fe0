"""``python -m bench.store_latency`` runs end to end (tiny counts; no timing asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_it_reports_every_step_alone_and_beside_a_busy_process() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.store_latency", "--requests", "20"],
        cwd=REPO, capture_output=True, text=True, timeout=120, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("20 requests one at a time")
    assert lines[1].split() == ["reserve", "settle", "hop", "reserve-sql", "settle-sql"]
    rows = {line[:18].strip(): line[18:].split() for line in lines[2:]}
    assert set(rows) == {"alone", "busy neighbour"}
    for cells in rows.values():
        # Five columns of "p50 / p90 / p99" in whole microseconds.
        numbers = [cell for cell in cells if cell != "/"]
        assert len(numbers) == 15
        assert all(number.isdigit() for number in numbers)
