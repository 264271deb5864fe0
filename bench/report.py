"""The markdown report of one run (also the body of ``bench/RESULTS.md``)."""

from __future__ import annotations

import math
from typing import Any

PATH_ORDER = ("direct", "asgi-aiohttp", "floor-aiohttp", "floor-httpx-aiohttp", "floor-httpx",
              "gateway", "gateway-w2", "gateway-pg", "gateway-pg2", "litellm")


def _num(value: Any, digits: int = 2) -> str:
    if not isinstance(value, (int, float)) or math.isnan(value):
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _spread(s: dict[str, Any] | None, digits: int = 2) -> str:
    if not s or not s.get("n"):
        return "–"
    med = _num(s["median"], digits)
    if s["n"] < 2:
        return med
    return f"{med} ({_num(s['min'], digits)}–{_num(s['max'], digits)})"


def _paths(summary: dict[str, Any]) -> list[str]:
    seen = {p for per in summary.values() for p in per}
    return [p for p in PATH_ORDER if p in seen] + sorted(seen - set(PATH_ORDER))


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _metric_table(
    data: dict[str, Any], scenarios: list[str], metric: str, digits: int = 2
) -> list[str]:
    summary = data["analysis"]["summary"]
    paths = _paths({s: summary[s] for s in scenarios if s in summary})
    titles = {sid: e["scenario"]["title"] for sid, e in data["raw"]["scenarios"].items()}
    rows = []
    for sid in scenarios:
        if sid not in summary:
            continue
        rows.append([titles.get(sid, sid)] + [
            _spread(summary[sid].get(p, {}).get(metric), digits) for p in paths
        ])
    return _table(["scenario", *paths], rows)


def render(
    data: dict[str, Any], *, charts: dict[str, str], title: str, notes: str = ""
) -> str:
    meta = data["meta"]
    machine = meta["machine"]
    raw = data["raw"]
    analysis = data["analysis"]
    all_sids = list(raw.get("scenarios", {}))
    out: list[str] = [f"# {title}", ""]
    out += [
        f"Run {meta['started_utc']} (UTC), suite `{meta['suite']}`, {meta['rounds']} rounds, "
        f"{_num(raw.get('elapsed_s'), 0)} s in all. Command: `{meta['command']}`.",
        "",
        f"Machine: {machine['cpu']}, {machine['cores']} cores, {machine['ram_gb']} GB RAM, "
        f"{machine['os']}, Python {machine['python']}; load average at start "
        f"{machine['load_avg_at_start']}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()) + ".",
        "",
        "Other processes on this shared machine used "
        f"{_spread(analysis.get('foreign_cores'))} cores (median (min–max) over the "
        "measurements) of its "
        f"{machine['cores']} while the bench ran; "
        f"{raw.get('retries_used', 0)} measurements disturbed by more than half a core were "
        "taken again once, and before each round the run waited for a quieter machine ("
        + ", ".join(f"{w['waited_s']:.0f} s" for w in raw.get("quiet_waits", [])) + ").",
        "",
        "Every cell is the median over rounds with (min–max) after it. Paths run as separate "
        "processes on loopback, interleaved round by round; the load generator (aiohttp, "
        "uvloop) and the simulated upstream share the same 2 cores, so absolute numbers are "
        "this machine's, and the within-run ratios are the comparable part.",
        "",
        "## Paths",
        "",
    ]
    rows = []
    for name, info in raw.get("paths", {}).items():
        ver = raw.get("verification", {}).get(name, {})
        relay = ", ".join(
            f"{shape}: {'identical' if v.get('identical') else 'differs'}"
            + ("" if v.get("knobs_forwarded", True) else " (knobs NOT forwarded)")
            for shape, v in ver.items() if isinstance(v, dict)
        ) or ("–" if name == "direct" else ver.get("error", "–"))
        status = "yes" if info["available"] else f"no: {info['reason']}"
        rows.append([name, status, info.get("version") or "", relay])
    out += _table(["path", "available", "version", "bytes vs direct (id/created masked)"], rows)
    out += ["", "## Targets", ""]
    rows = []
    for t in analysis["targets"]:
        verdict = "n/a" if t["pass"] is None else ("PASS" if t["pass"] else "MISS")
        rows.append([t["name"], f"{_num(t['value'])} {t['unit']}".strip(), t["target"], verdict])
    out += _table(["target", "measured (median)", "target", "verdict"], rows)
    if notes.strip():
        out += ["", notes.strip()]
    out += ["", "## Throughput, requests/s", ""]
    out += _metric_table(data, all_sids, "rps", 0)
    stalled = []
    for entry in raw.get("scenarios", {}).values():
        for path in sorted({p for r in entry["rounds"] for p in r}):
            results = [r[path] for r in entry["rounds"] if path in r]
            if results and all(not x.get("ok") for x in results):
                cut = sum(int(x.get("errors", {}).get("cut", 0)) for x in results)
                stalled.append(f"{path} in {entry['scenario']['title']} ({cut} cut)")
    if stalled:
        out += ["", "A 0 means the path completed no request before the measurement's bound "
                "(its duration + 10 s), when the requests still in flight are cut: "
                + "; ".join(stalled) + "."]
    skipped = [
        f"{', '.join(entry['scenario']['skip'])} in {entry['scenario']['title']}"
        + (f": {entry['scenario']['skip_reason']}" if entry["scenario"].get("skip_reason")
           else "")
        for entry in raw.get("scenarios", {}).values() if entry["scenario"].get("skip")
    ]
    if skipped:
        out += ["", "Not run (a dash in every table): " + ". ".join(skipped) + "."]
    out += ["", "## Added latency over the direct path, ms (same round)", ""]
    for metric, label in (("added_ttfb_p50", "TTFB p50"), ("added_ttfb_p99", "TTFB p99"),
                          ("added_first_content_p50", "first content p50"),
                          ("added_gap_p99", "inter-chunk gap p99 (every gap)"),
                          ("added_chunk_gap_p99",
                           "gap p99 between chunks (the gap before [DONE] left out)"),
                          ("added_done_wait_p99", "gap p99 before [DONE]")):
        out += ["", f"**{label}**", ""]
        out += _metric_table(data, all_sids, metric)
    out += ["", "## Over the floor: a path minus floor-aiohttp, same round", "",
            "What the path costs beyond the bare Starlette passthrough.", ""]
    for metric, label in (("over_floor_ttfb_p50", "TTFB p50, ms"),
                          ("over_floor_ttfb_p99", "TTFB p99, ms"),
                          ("over_floor_gap_p99", "inter-chunk gap p99, ms"),
                          ("over_floor_cpu_ms_per_req", "CPU per request, ms")):
        out += ["", f"**{label}**", ""]
        out += _metric_table(data, all_sids, metric, 3 if "cpu" in metric else 2)
    out += ["", "## Absolute TTFB p50 / p99 and first content p99, ms", ""]
    for metric in ("ttfb_p50", "ttfb_p99", "first_content_p99"):
        out += ["", f"**{metric}**", ""]
        out += _metric_table(data, all_sids, metric)
    out += ["", "## Proxy CPU per request, ms (user+system of the path's processes)", ""]
    out += _metric_table(data, all_sids, "cpu_ms_per_req", 3)
    out += ["", "## Database server CPU per request, ms (the PostgreSQL paths' own server)",
            ""]
    out += _metric_table(data, all_sids, "db_cpu_ms_per_req", 3)
    out += ["", "## Ratios within the run (req/s, per round, then spread)", ""]
    rat = analysis["ratios"]
    keys = sorted({k for per in rat.values() for k in per})
    rows = [[sid] + [_spread(rat[sid].get(k)) for k in keys] for sid in all_sids if sid in rat]
    out += _table(["scenario", *keys], rows)
    out += ["", "## Memory (RSS of the path's process tree)", ""]
    rows = []
    for name, m in raw.get("memory", {}).items():
        rows.append([
            name, _num(m.get("rest_mb"), 1), _num(m.get("after_rounds_mb"), 1),
            f"{m.get('requests_served', 0):,}", str(m.get("open_streams", "–")),
            _num(m["levels"][-1][1] if m.get("levels") else None, 1),
            _num(m.get("kb_per_stream"), 1), m.get("error", ""),
        ])
    out += _table(["path", "at rest MB", "after rounds MB", "requests before", "open streams",
                   "MB with streams open", "KB per open stream", "note"], rows)
    soak = raw.get("soak") or {}
    if soak.get("available"):
        out += ["", "## Soak (gateway)", "",
                f"After the rounds, {soak.get('warm_requests', 0):,} requests to settle in, "
                f"then {soak.get('requests', 0):,} more 20-chunk streams at C=32 in "
                f"{soak.get('seconds', 0):.0f} s ({soak.get('errors', 0)} errors): RSS "
                f"{soak.get('rss_before_mb', 0):.1f} MB before, "
                f"{soak.get('rss_after_mb', 0):.1f} MB after "
                f"({soak.get('growth_mb', 0):+.2f} MB)."
                + (f" Error: {soak['error']}" if soak.get("error") else "")]
    out += ["", "## Cap contention (one user, small cap, concurrent streams)", ""]
    cap = raw.get("cap", {})
    if cap.get("available"):
        for label, v in cap["variants"].items():
            db = v.get("db", {})
            fit = v.get("streams_that_fit", 2.5)
            cap_nano = db.get("cap_nano")
            cap_text = (f"{cap_nano} nano-USD" if isinstance(cap_nano, int)
                        else f"{v['cap_usd']} USD")
            out += [
                f"**{label}**: {v['streams']} concurrent streams of one user; cap {cap_text}, "
                f"{fit:g} times the upstream's price of one such stream.",
                "",
                f"- outcomes: {v['outcomes']}; every stream ended normally, with the "
                f"`spend_cap_reached` event then `[DONE]`, or with a 402: "
                f"**{v['every_stream_ended_well']}**",
                f"- settled {db.get('settled_nano')} nano-USD, cap {db.get('cap_nano')}, still "
                f"held {db.get('held_nano')}; ledger rows {db.get('ledger_rows')}, upstream "
                f"cost {db.get('ledger_upstream_cost_nano')}, operator's share "
                f"{db.get('ledger_operator_nano')}",
                f"- **overshoot {v.get('overshoot_nano')} nano-USD** "
                f"(settled − cap = {v.get('settled_minus_cap_nano')})",
                "",
            ]
    else:
        out += [f"Not run: {cap.get('reason', 'no gateway')}"]
    net = raw.get("network", {})
    out += ["", "## Off-loopback connections seen", ""]
    out += [", ".join(f"{k}: {len(v)}" for k, v in net.items()) or "none sampled"]
    if charts:
        out += ["", "## Charts", ""]
        out += [f"![{name}]({path})" for name, path in charts.items()]
    out.append("")
    return "\n".join(out)
