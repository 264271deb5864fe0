"""What the store adds to one request's latency, and how much of it is the thread hop.

    python -m bench.store_latency               # about 20 seconds
    python -m bench.store_latency --requests 5000

Through the real SQLite store on a temporary file, one request at a time (as at C=1),
on uvloop like the gateway, it times:

- ``reserve`` and ``settle`` as the chat route awaits them (group commit included);
- ``hop``: an empty trip to the store's connection thread and back;
- ``reserve-sql`` and ``settle-sql``: the same two transactions run on that thread
  with no hop, which is what SQLite itself costs.

Each is measured twice: with nothing else running, and with a busy process beside it
(a busy loop bounded in time, stopped by its PID), which keeps the machine's other core
awake. The hold is on the path to the first byte, so a slow hop there is latency every
quiet request pays; on a virtual machine whose idle vCPUs halt, waking the other thread
can cost more than the SQL it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import uvloop

from bench.procs import start
from bench.stats import quantile
from gateway.store.base import Hold, HoldRequest, Settlement
from gateway.store.sqlite import SQLiteStore

BUSY_LIMIT_S = 120.0


def _hold_request(app_id: str, i: int) -> HoldRequest:
    return HoldRequest(
        request_id=f"lat-{i}", app_id=app_id, user_id=f"user-{i % 100}", key_version=1,
        model="m", want_nano=1_000_000, min_nano=1_000,
        auto_connect=True, requested_cap_nano=None, default_cap_nano=10**15,
    )


def _settlement(hold_id: str, i: int) -> Settlement:
    return Settlement(
        hold_id=hold_id, request_id=f"lat-{i}", model="m", cost_nano=500_000,
        cost_source="usage", prompt_tokens=10, completion_tokens=20, status="ok",
        http_status=200, error_code=None, ttfb_ms=1.0, duration_ms=2.0, generation_id=None,
    )


async def _measure(store: SQLiteStore, app_id: str, *, requests: int, first: int
                   ) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"reserve": [], "settle": [], "hop": []}
    clock = time.perf_counter
    for i in range(first, first + requests):
        t0 = clock()
        hold = await store.reserve(_hold_request(app_id, i))
        t1 = clock()
        await store.settle(_settlement(hold.id, i))
        t2 = clock()
        await store._run(lambda _c: None)
        t3 = clock()
        out["reserve"].append(t1 - t0)
        out["settle"].append(t2 - t1)
        out["hop"].append(t3 - t2)

    def reserve_sql(conn: sqlite3.Connection, i: int) -> Hold:
        return store._reserve(conn, _hold_request(app_id, i))

    def settle_sql(conn: sqlite3.Connection, hold: Hold, i: int) -> None:
        store._settle(conn, _settlement(hold.id, i))

    def on_thread(conn: sqlite3.Connection) -> tuple[list[float], list[float]]:
        reserve: list[float] = []
        settle: list[float] = []
        for i in range(first + requests, first + 2 * requests):
            t0 = clock()
            [(ok, hold)] = store._run_batch(conn, fns=[functools.partial(reserve_sql, i=i)])
            t1 = clock()
            if not ok:
                raise hold
            store._run_batch(conn, fns=[functools.partial(settle_sql, hold=hold, i=i)])
            t2 = clock()
            reserve.append(t1 - t0)
            settle.append(t2 - t1)
        return reserve, settle

    out["reserve-sql"], out["settle-sql"] = await store._run(on_thread)
    return out


@contextlib.contextmanager
def busy_neighbour(log_dir: Path) -> Iterator[None]:
    """A busy loop in its own process (bounded in time), stopped by its PID."""
    code = (f"import time\nend = time.monotonic() + {BUSY_LIMIT_S}\n"
            "while time.monotonic() < end:\n    pass\n")
    proc = start("busy-neighbour", [sys.executable, "-c", code], log_dir=log_dir)
    try:
        time.sleep(0.3)
        yield
    finally:
        proc.stop(timeout_s=5)


async def run(requests: int, out: Callable[[str], None]) -> None:
    with tempfile.TemporaryDirectory(prefix="wattfare-store-latency-") as tmp:
        store = SQLiteStore(str(Path(tmp) / "latency.db"))
        await store.open()
        try:
            app = (await store.create_app(name="latency", mode="test", origins=())).app
            await _measure(store, app.id, requests=200, first=0)  # warm-up
            results = {}
            results["alone"] = await _measure(store, app.id, requests=requests, first=10**6)
            with busy_neighbour(Path(tmp)):
                results["busy neighbour"] = await _measure(
                    store, app.id, requests=requests, first=2 * 10**6
                )
        finally:
            await store.close()
    out(f"{requests} requests one at a time, µs (p50 / p90 / p99)")
    names = ("reserve", "settle", "hop", "reserve-sql", "settle-sql")
    out(f"  {'':16s}" + "".join(f"{name:>22s}" for name in names))
    for label, samples in results.items():
        cells = []
        for name in names:
            values = sorted(v * 1e6 for v in samples[name])
            cells.append(" / ".join(f"{quantile(values, q):.0f}" for q in (50, 90, 99)))
        out(f"  {label:16s}" + "".join(f"{cell:>22s}" for cell in cells))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.store_latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args(argv)
    uvloop.run(run(max(10, args.requests), print))
    return 0


if __name__ == "__main__":
    sys.exit(main())
