"""A fault run: the gateway killed (-9) and restarted every few seconds under load, with
clients leaving mid-stream and the upstream resetting streams. Afterwards no hold is
left; every request whose generation the gateway learned of is charged exactly what the
upstream billed for it; and what users were charged in all matches what the upstream
billed in all, to within what no gateway can know (below).

Bounded: a fixed number of kills, each client's loop ends at a deadline, every wait has
a timeout. Loopback only.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import httpx
import pytest

from .harness import (
    AppKeys,
    FakeUpstream,
    Gateway,
    GatewayConfig,
    assert_consistent,
    chat_body,
    is_content,
    iter_events,
    query,
    secret_headers,
    wait_until,
)

KEY = "sk-or-v1-e2e"
CLIENTS = 6
KILLS = 3
KILL_EVERY_S = 9.0
# Charged and billed agree to within this share of the bill. What no gateway can know:
# the generations of requests it was killed in the middle of before the upstream named
# them (a non-streamed answer names its generation only with its end, which the upstream
# still finishes and bills; a stream names it with its head). Such a hold settles to its
# last checkpoint, as the contract says.
TOLERANCE = 0.05
# The ledger's figures that must be the upstream's to the nano-USD.
EXACT_SOURCES = ("upstream", "generation")


def billed(fake: FakeUpstream) -> int:
    doc = httpx.get(f"{fake.root}/_fake/ledger", params={"key": KEY}, timeout=5).json()
    total: int = doc["billed_nano_usd"]
    return total


def bill_of(fake: FakeUpstream, generation_id: str) -> int:
    """What the upstream billed for one generation (0 if it never billed it)."""
    response = httpx.get(f"{fake.root}/_fake/ledger", params={"id": generation_id},
                         timeout=5)
    if response.status_code == 404:
        return 0
    response.raise_for_status()
    total: int = response.json()["billed_nano_usd"]
    return total


def client_loop(gw: Gateway, app: AppKeys, user_id: str, seed: int,
                stop: threading.Event, counts: dict[str, int]) -> None:
    rng = random.Random(seed)
    headers = secret_headers(app, user_id)
    while not stop.is_set():
        kind = rng.choice(("complete", "leave", "reset", "json"))
        knobs: dict[str, object] = {"chunks": rng.randint(5, 40),
                                    "gap_ms": rng.choice((5, 20, 40))}
        if kind == "reset":
            knobs.update(fault="reset", fault_after=rng.randint(1, 10))
        body = chat_body("fault run " * rng.randint(1, 5), stream=kind != "json", **knobs)
        url = gw.url + "/v1/chat/completions"
        try:
            if kind == "json":
                httpx.post(url, json=body, headers=headers, timeout=10)
            else:
                with httpx.stream("POST", url, json=body, headers=headers,
                                  timeout=10) as response:
                    leave_after = rng.randint(1, 5) if kind == "leave" else -1
                    seen = 0
                    for _, event in iter_events(response):
                        seen += is_content(event)
                        if seen == leave_after:
                            break
            counts[kind] = counts.get(kind, 0) + 1
        except httpx.HTTPError:
            counts["lost"] = counts.get("lost", 0) + 1  # the gateway was killed under it
            time.sleep(0.25)  # it is being restarted: wait a moment


@pytest.mark.e2e
def test_kill_and_restart_under_load_charges_what_the_upstream_billed(
    tmp_path: Path, fake: FakeUpstream
) -> None:
    gw = Gateway(workdir=tmp_path, upstream_api=fake.api,
                 config=GatewayConfig(default_monthly_usd=1000.0, checkpoint_interval_s=0.5))
    gw.start()
    try:
        app = gw.create_app("faults")
        before = billed(fake)
        stop = threading.Event()
        counts: dict[str, int] = {}
        threads = [
            threading.Thread(target=client_loop, daemon=True,
                             args=(gw, app, f"fault-user-{i}", i, stop, counts))
            for i in range(CLIENTS)
        ]
        for thread in threads:
            thread.start()
        for _ in range(KILLS):
            time.sleep(KILL_EVERY_S)
            gw.stop(kill=True)
            gw.start()  # same database, fresh process (and port)
        time.sleep(KILL_EVERY_S)
        stop.set()
        for thread in threads:
            thread.join(timeout=15)
        assert not any(t.is_alive() for t in threads)
        assert wait_until(lambda: fake.in_flight() == 0, timeout=10)
        # Holds of the killed processes: reconciled at each start-up (their generations
        # looked up), the rest settled as their requests ended.
        assert_consistent(gw.db, timeout=60)
        bill = billed(fake) - before
        charged, operator, rows = query(
            gw.db, "SELECT COALESCE(SUM(cost_nano), 0), COALESCE(SUM(operator_nano), 0), "
            "COUNT(*) FROM ledger")[0]
        sources = dict(query(gw.db, "SELECT cost_source, COUNT(*) FROM ledger GROUP BY 1"))
        named = query(gw.db, "SELECT generation_id, cost_nano, cost_source FROM ledger "
                             "WHERE generation_id IS NOT NULL")
        known_bill = 0
        wrong = []
        for generation_id, cost, source in named:
            billed_for = bill_of(fake, generation_id)
            known_bill += billed_for
            if source in EXACT_SOURCES and cost != billed_for:
                wrong.append((generation_id, source, cost, billed_for))
        summary = (counts, sources, charged, bill, known_bill, operator)
        assert counts.get("lost", 0) >= 1 and rows >= 50, summary
        assert not wrong, (wrong[:10], summary)
        assert abs(charged - bill) <= TOLERANCE * bill, summary
        assert operator == 0, summary
    finally:
        gw.stop()
    assert "Traceback" not in gw.stderr(), gw.stderr()[-8000:]
