"""CPU time per request, per path: what each proxy costs, whatever else the machine does.

    python -m bench.cpu --paths floor-aiohttp,gateway --concurrency 32 --seconds 8

Throughput on a shared machine moves with its neighbours; the CPU a proxy process burns
per request moves much less, and it is what bounds one core's throughput. For each path
(one at a time, interleaved over rounds) this drives a constant-concurrency load of
20-chunk streams and divides the process's CPU time (user + system, its children
included) by the requests it completed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil

from bench.paths import (
    ALL_PATHS,
    REPO,
    Endpoint,
    bench_env,
    start_gateway,
    start_pg_gateway,
    under_load,
)
from bench.procs import LineChannel
from bench.scenarios import HOLD_BODY, Scenario

BENCH = Path(__file__).resolve().parent


Sample = tuple[float, float, int, float, float, float, float]


def thread_seconds(pid: int) -> dict[str, float]:
    """CPU seconds per thread of one process, keyed by thread name and id."""
    out: dict[str, float] = {}
    for thread in psutil.Process(pid).threads():
        try:
            name = Path(f"/proc/{pid}/task/{thread.id}/comm").read_text().strip()
        except OSError:
            name = "?"
        out[f"{name}/{thread.id}"] = thread.user_time + thread.system_time
    return out


def measure(channel: LineChannel, endpoint: Endpoint, scenario: Scenario) -> Sample:
    """(CPU µs per request, req/s, errors, TTFB p99 ms, gap p99 between chunks ms, gap
    p99 before ``[DONE]`` ms, TTFB p50 ms) for one load run against one path."""
    assert endpoint.proc is not None
    spec = {"url": endpoint.url, "headers": endpoint.headers,
            "user_header": endpoint.user_header, "user_prefix": "cpu-", "user_pool": 1024,
            **scenario.spec()}
    before = endpoint.proc.cpu_seconds()
    threads_before = thread_seconds(endpoint.proc.pid)
    answer = channel.call({"op": "run", **spec}, timeout_s=scenario.duration_s + 120)
    after = endpoint.proc.cpu_seconds()
    threads_after = thread_seconds(endpoint.proc.pid)
    spent = {k: v - threads_before.get(k, 0.0) for k, v in threads_after.items()}
    total = sum(spent.values()) or 1.0
    busy = sorted(spent.items(), key=lambda kv: -kv[1])[:3]
    endpoint.extra["threads"] = ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in busy)
    result = answer.get("result", {})
    done = max(1, int(result.get("ok", 0)))
    rps = float(result.get("rps", 0.0))
    errors = int(sum((result.get("errors") or {}).values()))
    ttfb = float(result.get("ttfb_ms", {}).get("p99", float("nan")))
    ttfb_p50 = float(result.get("ttfb_ms", {}).get("p50", float("nan")))
    gap = float(result.get("chunk_gap_ms", {}).get("p99", float("nan")))
    done_wait = float(result.get("done_wait_ms", {}).get("p99", float("nan")))
    return (after - before) * 1e6 / done, rps, errors, ttfb, gap, done_wait, ttfb_p50


def hold_memory(channel: LineChannel, endpoint: Endpoint, streams: int) -> tuple[float, float]:
    """(RSS MB before, KB per open stream) with ``streams`` slow streams held open."""
    assert endpoint.proc is not None
    before = endpoint.proc.rss_bytes() / 1e6
    channel.send({"op": "hold", "url": endpoint.url, "headers": endpoint.headers,
                  "user_header": endpoint.user_header, "user_prefix": "hold-",
                  "user_pool": 1024, "body": HOLD_BODY, "steps": [streams],
                  "ready_timeout_s": 15})
    level = channel.receive(timeout_s=60)
    during = endpoint.proc.rss_bytes() / 1e6
    channel.send({"op": "release"})
    channel.receive(timeout_s=60)
    opened = int(level.get("open", 0))
    return before, (during - before) * 1000 / max(1, opened)


def baseline_tree(ref: str, work: Path) -> Path:
    """The ``gateway`` package as of git ``ref``, unpacked under ``work``."""
    sha = subprocess.run(["git", "rev-parse", "--short", ref], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout.strip()
    tree = work / f"baseline-{sha}"
    tree.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", sha, "gateway"], cwd=REPO, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def start_baseline(ref: str, *, upstream_base: str, work: Path, env: dict[str, str],
                   store: str = "sqlite") -> tuple[str, Endpoint]:
    """The gateway as of git ``ref`` (on a PostgreSQL cluster of its own with ``store=
    "postgres"``), started and answering: its path name and endpoint."""
    tree = baseline_tree(ref, work)
    if os.environ.get("BENCH_BASELINE_SITE"):  # experiments: code run at start-up
        (tree / "sitecustomize.py").write_text(os.environ["BENCH_BASELINE_SITE"] + "\n")
    label = f"gateway-at-{ref}".replace("/", "-")
    tree_env = {**env, "PYTHONPATH": str(tree)}
    if store == "postgres":
        name = f"gateway-pg@{ref}"
        endpoint = start_pg_gateway(label + "-pg", upstream_base=upstream_base, work=work,
                                    env=tree_env, nodes=1)
    else:
        name = f"gateway@{ref}"
        endpoint = start_gateway(label, workers=1, upstream_base=upstream_base, work=work,
                                 env=tree_env)
    if endpoint.proc is None:
        raise SystemExit(f"{name} unavailable: {endpoint.reason}")
    endpoint.proc.wait_http(endpoint.ready_url, timeout_s=60)
    return name, endpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--paths", default="floor-aiohttp,gateway")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--gap-ms", type=float, default=0.0, help="pace the chunks")
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", metavar="GIT_REF",
                        help="also run the gateway as of this commit, side by side")
    parser.add_argument("--baseline-store", choices=("sqlite", "postgres"), default="sqlite",
                        help="the baseline gateway's store (postgres: one node on a "
                             "throwaway cluster, as the gateway-pg path)")
    parser.add_argument("--hold", type=int, default=0,
                        help="first, hold this many slow streams open and report memory")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.paths.split(",") if n.strip()]
    for name in names:
        if name not in ALL_PATHS or name == "direct":
            raise SystemExit(f"unknown or unmeasurable path {name!r}")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    work = BENCH / ".work" / f"cpu-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    env = bench_env()
    with under_load(names, work=work, env=env) as (base, endpoints, channel):
        if args.baseline:
            name, endpoints[name] = start_baseline(args.baseline, upstream_base=base,
                                                   work=work, env=env,
                                                   store=args.baseline_store)
            names.append(name)
        samples: dict[str, list[Sample]] = {n: [] for n in names}
        scenario = Scenario("cpu", "cpu", chunks=args.chunks, concurrency=args.concurrency,
                            gap_ms=args.gap_ms, duration_s=args.seconds)
        warm = Scenario("warm", "warm", chunks=args.chunks, concurrency=args.concurrency,
                        gap_ms=args.gap_ms, duration_s=2.0)
        for name in names:
            endpoint = endpoints[name]
            if not endpoint.available:
                raise SystemExit(f"{name} unavailable: {endpoint.reason}")
            measure(channel, endpoint, warm)
            if args.hold:
                rest, per_stream = hold_memory(channel, endpoint, args.hold)
                print(f"  {name:22s} RSS {rest:6.1f} MB after warm-up; "
                      f"{per_stream:5.1f} KB per open stream ({args.hold} held)")
        for _ in range(args.rounds):
            for name in names:
                samples[name].append(measure(channel, endpoints[name], scenario))
        print(f"C={args.concurrency}, {args.chunks}-chunk streams, {args.gap_ms:g} ms apart, "
              f"{args.rounds} rounds of {args.seconds:g} s (medians over rounds)")
        for name in names:
            cpu = statistics.median(s[0] for s in samples[name])
            rps = statistics.median(s[1] for s in samples[name])
            errors = sum(s[2] for s in samples[name])
            ttfb = statistics.median(s[3] for s in samples[name])
            ttfb_p50 = statistics.median(s[6] for s in samples[name])
            gap = statistics.median(s[4] for s in samples[name])
            done_wait = statistics.median(s[5] for s in samples[name])
            print(f"  {name:22s} {cpu:6.0f} µs CPU/request  {rps:6.0f} req/s  "
                  f"TTFB p50 {ttfb_p50:5.2f} p99 {ttfb:6.2f} ms  gap p99 {gap:6.2f} ms  "
                  f"before [DONE] p99 {done_wait:6.2f} ms  errors {errors}")
            print(f"  {'':22s} busiest threads (last round): {endpoints[name].extra['threads']}")
            print(f"  {'':22s} CPU µs/request by round: "
                  + ", ".join(f"{s[0]:.0f}" for s in samples[name]))
    return 0

if __name__ == "__main__":
    sys.exit(main())
