"""Cap contention: many concurrent streams against one user's small monthly cap.

The cap is sized from the upstream's own price of one stream (read from its usage chunk),
so that only a couple of streams fit. Two variants: the bench gateway as configured (a
request without ``max_tokens`` holds what remains, so the first stream takes the whole
cap and the rest are refused up front), and a gateway whose holds start small
(``SMALL_HOLDS``), so that all streams are admitted and race to extend their holds.
Afterwards the gateway's SQLite database is read directly: overshoot is the settled total
minus the cap, which the contract says is never above zero. Every stream must end
normally, or with the ``spend_cap_reached`` SSE error event followed by ``[DONE]``, or be
refused up front with a 402.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from bench.paths import UPSTREAM_KEY, Endpoint
from bench.procs import LineChannel
from bench.scenarios import Suite, request_body
from gateway.tokens import mint_session_token

# Small holds make every stream of the second variant extend its hold as it goes, so
# the extensions of all of them contend for the one cap row while they stream.
SMALL_HOLDS: dict[str, float] = {"default_max_tokens": 16, "extend_tokens": 16}
CAP_CHUNKS = 200
CAP_GAP_MS = 2.0
STREAMS_THAT_FIT = 2.5
GOOD_OUTCOMES = frozenset({"completed", "cap_event_done", "rejected_402"})


def usage_cost(sse_text: str) -> float | None:
    """The ``usage.cost`` of the last SSE event that carries one."""
    cost: float | None = None
    for line in sse_text.splitlines():
        if not line.startswith("data: {"):
            continue
        try:
            event = json.loads(line[6:])
        except ValueError:
            continue
        usage = event.get("usage") if isinstance(event, dict) else None
        if isinstance(usage, dict) and isinstance(usage.get("cost"), (int, float)):
            cost = float(usage["cost"])
    return cost


def read_spend(db: str, *, app_id: str, user_id: str) -> dict[str, Any]:
    """Cap, settled and held totals, and the ledger's sums for one connection."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        cap_row = conn.execute(
            "SELECT cap_nano, status FROM connections WHERE app_id = ? AND user_id = ?",
            (app_id, user_id),
        ).fetchone()
        spend = conn.execute(
            "SELECT COALESCE(SUM(settled_nano), 0), COALESCE(SUM(held_nano), 0) FROM spend "
            "WHERE app_id = ? AND user_id = ?",
            (app_id, user_id),
        ).fetchone()
        ledger = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(cost_nano), 0), COALESCE(SUM(upstream_cost_nano), 0),"
            " COALESCE(SUM(operator_nano), 0) FROM ledger WHERE app_id = ? AND user_id = ?",
            (app_id, user_id),
        ).fetchone()
    return {
        "cap_nano": cap_row[0] if cap_row else None,
        "connection_status": cap_row[1] if cap_row else None,
        "settled_nano": spend[0],
        "held_nano": spend[1],
        "ledger_rows": ledger[0],
        "ledger_cost_nano": ledger[1],
        "ledger_upstream_cost_nano": ledger[2],
        "ledger_operator_nano": ledger[3],
    }


def _one(
    channel: LineChannel,
    gateway: Endpoint,
    *,
    streams: int,
    body: dict[str, Any],
    stream_cost: float,
    label: str,
) -> dict[str, Any]:
    cap_usd = round(stream_cost * STREAMS_THAT_FIT, 9)
    user_id = f"cap-{label}-{int(time.time())}"
    token = mint_session_token(gateway.extra["secret_key"], user_id, monthly_usd=cap_usd).token
    answer = channel.call({
        "op": "run", "url": gateway.url, "headers": {"Authorization": f"Bearer {token}"},
        "body": body, "mode": "concurrency", "concurrency": streams, "max_requests": streams,
        "duration_s": 30, "hard_timeout_s": 60, "classify": True,
    }, timeout_s=120)
    result = answer["result"]
    outcomes: dict[str, int] = result["outcomes"]
    # Settlement happens as each stream ends; allow the last commits a moment to land.
    spend: dict[str, Any] = {}
    for _ in range(20):
        time.sleep(0.25)
        try:
            spend = read_spend(gateway.extra["db"], app_id=str(gateway.extra["app_id"]),
                               user_id=user_id)
        except sqlite3.Error as exc:
            spend = {"error": f"{type(exc).__name__}: {exc}"}
            break
        if spend.get("held_nano") == 0:
            break
    out: dict[str, Any] = {
        "streams": streams,
        "stream_cost_usd": stream_cost,
        "cap_usd": cap_usd,
        "streams_that_fit": STREAMS_THAT_FIT,
        "outcomes": outcomes,
        "cut_by_bench_timeout": result["errors"].get("cut", 0),
        "every_stream_ended_well": sum(outcomes.values()) == streams
        and set(outcomes) <= GOOD_OUTCOMES,
        "db": spend,
    }
    if "settled_nano" in spend and spend.get("cap_nano") is not None:
        out["settled_minus_cap_nano"] = int(spend["settled_nano"]) - int(spend["cap_nano"])
        out["overshoot_nano"] = max(0, out["settled_minus_cap_nano"])
    return out


def run_cap(
    channel: LineChannel,
    gateways: dict[str, Endpoint],
    *,
    suite: Suite,
    upstream_base: str,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Each gateway in ``gateways`` (variant name -> endpoint) against a fresh user's cap."""
    usable = {k: g for k, g in gateways.items() if g.available}
    if not usable:
        return {"available": False, "reason": "the gateway path is not available"}
    body = request_body(chunks=CAP_CHUNKS, gap_ms=CAP_GAP_MS)
    probe = channel.call({
        "op": "fetch", "url": f"{upstream_base}/chat/completions",
        "headers": {"Authorization": f"Bearer {UPSTREAM_KEY}"}, "body": body,
    }, timeout_s=60)
    stream_cost = usage_cost(probe["text"])
    if stream_cost is None or stream_cost <= 0:
        return {"available": False, "reason": "the upstream reported no cost for a stream"}
    variants: dict[str, Any] = {}
    for label, gateway in usable.items():
        variants[label] = _one(channel, gateway, streams=suite.cap_streams, body=body,
                               stream_cost=stream_cost, label=label)
        log(f"cap [{label}]: {variants[label]['outcomes']}, overshoot "
            f"{variants[label].get('overshoot_nano')} nano-USD")
    overshoots = [v.get("overshoot_nano") for v in variants.values()]
    return {
        "available": True,
        "variants": variants,
        "overshoot_nano": max(o for o in overshoots if isinstance(o, int))
        if all(isinstance(o, int) for o in overshoots) else None,
        "every_stream_ended_well": all(v["every_stream_ended_well"] for v in variants.values()),
    }
