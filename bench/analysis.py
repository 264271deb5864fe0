"""From per-round raw summaries to spreads, within-run ratios and target verdicts.

Every comparison is made within one round first (a path against the direct path or the
floor measured minutes apart at most), then spread over the rounds as min/median/max.
Verdicts use the median over rounds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from bench.stats import spread

Metric = Callable[[dict[str, Any]], float]


def _get(*keys: str) -> Metric:
    def read(result: dict[str, Any]) -> float:
        value: Any = result
        for key in keys:
            if not isinstance(value, dict) or key not in value:
                return math.nan
            value = value[key]
        return float(value) if isinstance(value, (int, float)) else math.nan

    return read


METRICS: dict[str, Metric] = {
    "rps": _get("rps"),
    "ttfb_p50": _get("ttfb_ms", "p50"),
    "ttfb_p99": _get("ttfb_ms", "p99"),
    "first_content_p50": _get("first_content_ms", "p50"),
    "first_content_p99": _get("first_content_ms", "p99"),
    "total_p50": _get("total_ms", "p50"),
    "total_p99": _get("total_ms", "p99"),
    "gap_p99": _get("gap_ms", "p99"),
    "chunk_gap_p99": _get("chunk_gap_ms", "p99"),
    "done_wait_p50": _get("done_wait_ms", "p50"),
    "done_wait_p99": _get("done_wait_ms", "p99"),
    "cpu_ms_per_req": _get("cpu_ms_per_req"),
    "db_cpu_ms_per_req": _get("db_cpu_ms_per_req"),
}

# The throughput target's reference: the bare Starlette passthrough with aiohttp.
FLOOR = "floor-aiohttp"
# The stricter floor: the same relay with no framework (uvicorn and aiohttp alone).
ASGI_FLOOR = "asgi-aiohttp"

# Metrics whose excess over the direct path is reported as "added".
ADDED = ("ttfb_p50", "ttfb_p99", "first_content_p50", "first_content_p99", "gap_p99",
         "chunk_gap_p99", "done_wait_p50", "done_wait_p99")


def _errors(result: dict[str, Any]) -> int:
    if "failed" in result:
        return -1
    return sum(int(v) for k, v in result.get("errors", {}).items() if k != "cut")


def summarize_scenario(entry: dict[str, Any]) -> dict[str, Any]:
    """Per path: the spread of every metric, of its excess over direct, and errors."""
    rounds: list[dict[str, Any]] = entry["rounds"]
    paths = sorted({p for r in rounds for p in r})
    out: dict[str, Any] = {}
    for path in paths:
        per: dict[str, Any] = {}
        for name, metric in METRICS.items():
            per[name] = spread([metric(r[path]) for r in rounds if path in r])
        for name in ADDED:
            metric = METRICS[name]
            per[f"added_{name}"] = spread([
                metric(r[path]) - metric(r["direct"]) for r in rounds
                if path in r and "direct" in r
            ])
        for name in ("ttfb_p50", "ttfb_p99", "gap_p99", "cpu_ms_per_req"):
            metric = METRICS[name]
            per[f"over_floor_{name}"] = spread([
                metric(r[path]) - metric(r[FLOOR]) for r in rounds
                if path in r and FLOOR in r
            ])
        per["errors"] = sum(max(_errors(r[path]), 0) for r in rounds if path in r)
        per["failed_rounds"] = sum(1 for r in rounds if path in r and "failed" in r[path])
        per["requests"] = sum(int(r[path].get("requests", 0)) for r in rounds if path in r)
        out[path] = per
    return out


def ratio(entry: dict[str, Any], num: str, den: str, metric: str = "rps") -> dict[str, float]:
    """The spread over rounds of ``metric(num) / metric(den)``, each ratio within a round."""
    read = METRICS[metric]
    values = []
    for r in entry["rounds"]:
        if num in r and den in r:
            d = read(r[den])
            values.append(read(r[num]) / d if d and not math.isnan(d) else math.nan)
    return spread(values)


def ratios(scenarios: dict[str, Any]) -> dict[str, Any]:
    pairs = (
        ("gateway", FLOOR),
        ("gateway", ASGI_FLOOR),
        ("gateway", "direct"),
        (FLOOR, "direct"),
        (FLOOR, ASGI_FLOOR),
        ("gateway", "litellm"),
        ("gateway-w2", "gateway"),
        ("gateway-pg", "gateway"),
        ("gateway-pg2", "gateway"),
        ("gateway-pg2", "gateway-pg"),
        ("floor-httpx", "floor-aiohttp"),
        ("floor-httpx-aiohttp", "floor-aiohttp"),
    )
    out: dict[str, Any] = {}
    for sid, entry in scenarios.items():
        out[sid] = {f"{a}/{b}": ratio(entry, a, b) for a, b in pairs}
    return out


def _median(d: dict[str, Any] | None) -> float:
    if not d:
        return math.nan
    value = d.get("median", math.nan)
    return float(value) if isinstance(value, (int, float)) else math.nan


def _verdict(
    name: str, value: float, target: str, ok: Callable[[float], bool], unit: str = ""
) -> dict[str, Any]:
    if math.isnan(value):
        return {"name": name, "value": None, "target": target, "pass": None, "unit": unit}
    return {"name": name, "value": value, "target": target, "pass": bool(ok(value)), "unit": unit}


def targets(
    summary: dict[str, Any],
    rat: dict[str, Any],
    memory: dict[str, Any],
    cap: dict[str, Any],
    soak: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The product's targets, judged on the medians over rounds (never asserted)."""

    def added(sid: str, metric: str, path: str = "gateway") -> float:
        return _median(summary.get(sid, {}).get(path, {}).get(f"added_{metric}"))

    def r(sid: str, key: str) -> float:
        return _median(rat.get(sid, {}).get(key))

    def rps(sid: str, path: str) -> float:
        return _median(summary.get(sid, {}).get(path, {}).get("rps"))

    gw_mem = memory.get("gateway", {})
    overshoot = cap.get("overshoot_nano")
    out = [
        _verdict("gateway added TTFB p50, C=1", added("c1", "ttfb_p50"), "<= 1.0 ms",
                 lambda v: v <= 1.0, "ms"),
        _verdict("gateway added TTFB p99, C=1", added("c1", "ttfb_p99"), "<= 2.0 ms",
                 lambda v: v <= 2.0, "ms"),
        _verdict("gateway added first-content p50, C=1 (context)",
                 added("c1", "first_content_p50"), "<= 1.0 ms", lambda v: v <= 1.0, "ms"),
        _verdict("gateway added first-content p99, C=1 (context)",
                 added("c1", "first_content_p99"), "<= 2.0 ms", lambda v: v <= 2.0, "ms"),
    ]
    for sid in ("c32", "c128"):
        out.append(_verdict(f"gateway / {FLOOR} req/s (bare Starlette passthrough), {sid}",
                            r(sid, f"gateway/{FLOOR}"), ">= 0.80", lambda v: v >= 0.8, "x"))
    for sid in ("c32", "c128"):
        out.append(_verdict(f"gateway / {ASGI_FLOOR} req/s (no framework; context), {sid}",
                            r(sid, f"gateway/{ASGI_FLOOR}"), ">= 0.80", lambda v: v >= 0.8,
                            "x"))
    out += [
        _verdict("gateway-pg / gateway (PostgreSQL / SQLite store) req/s, c32",
                 r("c32", "gateway-pg/gateway"), ">= 0.80", lambda v: v >= 0.8, "x"),
        _verdict("gateway-pg added TTFB p50 over the SQLite gateway's, C=1",
                 added("c1", "ttfb_p50", "gateway-pg") - added("c1", "ttfb_p50"),
                 "<= 0.5 ms", lambda v: v <= 0.5, "ms"),
        _verdict("gateway-pg2 / gateway-pg (two nodes / one) req/s, c32 (context)",
                 r("c32", "gateway-pg2/gateway-pg"), ">= 1.0", lambda v: v >= 1.0, "x"),
    ]
    for sid in ("c32", "c128"):
        out.append(_verdict(f"gateway / litellm req/s, {sid}", r(sid, "gateway/litellm"),
                            ">= 15", lambda v: v >= 15, "x"))
    out += [
        _verdict("gateway req/s C=128 / C=32", rps("c128", "gateway") / rps("c32", "gateway"),
                 ">= 1.0", lambda v: v >= 1.0, "x"),
        _verdict("gateway added gap p99 between chunks, paced, C=128",
                 added("paced_c128", "chunk_gap_p99"), "<= 1.0 ms", lambda v: v <= 1.0, "ms"),
        _verdict("gateway added gap p99 before [DONE], paced, C=128 (context: [DONE] "
                 "waits for the committed charge)",
                 added("paced_c128", "done_wait_p99"), "<= 1.0 ms", lambda v: v <= 1.0, "ms"),
        _verdict("gateway added gap p99, all gaps, paced, C=128 (context)",
                 added("paced_c128", "gap_p99"), "<= 1.0 ms", lambda v: v <= 1.0, "ms"),
        _verdict("gateway KB per open stream", float(gw_mem.get("kb_per_stream") or math.nan),
                 "<= 30 KB", lambda v: v <= 30, "KB"),
        _verdict("gateway RSS at rest", float(gw_mem.get("rest_mb") or math.nan),
                 "<= 100 MB", lambda v: v <= 100, "MB"),
        _verdict(f"gateway RSS growth over {int((soak or {}).get('requests', 0)):,} more "
                 "requests (no growth: at most 1 MB, 10 bytes a request)",
                 float((soak or {}).get("growth_mb", math.nan)), "<= 1 MB",
                 lambda v: v <= 1.0, "MB"),
        _verdict("gateway --workers 2 / 1 worker req/s, c128", r("c128", "gateway-w2/gateway"),
                 ">= 1.6", lambda v: v >= 1.6, "x"),
        _verdict("cap overshoot (settled - cap)",
                 float(overshoot) if isinstance(overshoot, int) else math.nan,
                 "== 0 nano-USD", lambda v: v <= 0, "nano-USD"),
    ]
    return out


def noise(scenarios: dict[str, Any]) -> dict[str, float]:
    """How much CPU other people's processes used during the measurements, in cores."""
    values = [
        float(result["foreign_cores"])
        for entry in scenarios.values() for rnd in entry["rounds"] for result in rnd.values()
        if isinstance(result.get("foreign_cores"), (int, float))
    ]
    return spread(values)


def analyse(raw: dict[str, Any]) -> dict[str, Any]:
    scenarios: dict[str, Any] = raw.get("scenarios", {})
    summary = {sid: summarize_scenario(entry) for sid, entry in scenarios.items()}
    rat = ratios(scenarios)
    return {
        "summary": summary,
        "ratios": rat,
        "foreign_cores": noise(scenarios),
        "targets": targets(summary, rat, raw.get("memory", {}), raw.get("cap", {}),
                           raw.get("soak")),
    }
