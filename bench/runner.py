"""One run of a suite: start everything, measure round by round, stop everything.

The order of one run:
1. the simulated upstream, then every path (each its own process), then the load
   generator (its own process);
2. verification: the same request on the direct path and on each proxied path, bodies
   compared after masking ``id``/``created``;
3. warm-up, then RSS at rest and the open-streams memory scenario;
4. rounds: in each, every scenario runs on every path, the path order rotating from one
   round to the next;
5. RSS after those requests, then the cap contention scenario;
6. everything stopped by PID; the raw per-round summaries go to the analysis.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench import cap
from bench.paths import (
    PROXIED,
    UPSTREAM_KEY,
    Endpoint,
    bench_env,
    start_gateway,
    start_loadgen,
    start_paths,
    start_upstream,
)
from bench.procs import LineChannel, Proc, StartError, stop_loadgen, wait_idle
from bench.scenarios import HOLD_BODY, Scenario, Suite, request_body, soak_scenario
from bench.verify import verify_path

# A measurement during which other processes used more than NOISY_CORES is taken again,
# once, after waiting for the machine to fall under QUIET_CORES (a bounded number of times).
NOISY_CORES = 0.5
QUIET_CORES = 0.3

VERIFY_BODIES: dict[str, dict[str, Any]] = {
    "stream_20": request_body(chunks=20),
    "stream_500": request_body(chunks=500),
    "non_stream": request_body(chunks=20, stream=False),
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


@dataclass
class Run:
    suite: Suite
    work: Path
    env: dict[str, str]
    upstream: Proc
    upstream_base: str
    endpoints: dict[str, Endpoint]
    channel: LineChannel
    loadgen: subprocess.Popen[bytes]
    raw: dict[str, Any] = field(default_factory=dict)
    served: dict[str, int] = field(default_factory=dict)
    seq: int = 0
    retries: int = 0
    quiet_waits: list[dict[str, float]] = field(default_factory=list)

    def restart_loadgen(self) -> None:
        """Replace a load generator that stopped answering (bounded: once per failure)."""
        with contextlib.suppress(OSError):
            self.loadgen.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.loadgen.wait(timeout=10)
        self.loadgen = start_loadgen(self.work, self.env)
        self.channel = LineChannel(self.loadgen)

    def available(self) -> list[str]:
        return [name for name, e in self.endpoints.items() if e.available]

    def command(self, endpoint: Endpoint, **spec: Any) -> dict[str, Any]:
        self.seq += 1_000_000
        return {
            "url": endpoint.url, "headers": endpoint.headers,
            "user_header": endpoint.user_header, "user_prefix": f"{endpoint.name}-u",
            "user_pool": self.suite.user_pool, "seq_base": self.seq,
            "urls": endpoint.extra.get("urls", []), **spec,
        }


def _busy_cpu_seconds() -> float:
    """CPU time the whole machine spent busy so far, all processes."""
    t = psutil.cpu_times()
    return float(t.user + t.system + t.nice + getattr(t, "irq", 0.0)
                 + getattr(t, "softirq", 0.0) + getattr(t, "steal", 0.0))


def _own_cpu_seconds() -> float:
    """CPU time of this process and everything it started (paths, upstream, loadgen)."""
    total = 0.0
    with contextlib.suppress(psutil.Error):
        me = psutil.Process()
        for p in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = p.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
    return total


def measure(run: Run, scenario: Scenario, endpoint: Endpoint) -> dict[str, Any]:
    """One scenario on one path: the load generator's summary plus the path's CPU time."""
    cpu0 = endpoint.proc.cpu_seconds() if endpoint.proc else 0.0
    database: Proc | None = endpoint.extra.get("db_proc")
    db0 = database.cpu_seconds() if database else 0.0
    busy0, own0, t0 = _busy_cpu_seconds(), _own_cpu_seconds(), time.monotonic()
    command = run.command(endpoint, op="run", **scenario.spec())
    try:
        answer = run.channel.call(command, timeout_s=scenario.duration_s + 90)
    except (RuntimeError, TimeoutError) as exc:
        return {"failed": str(exc)}
    except (OSError, EOFError) as exc:
        log(f"load generator lost during {scenario.id} on {endpoint.name}: {exc!r}; restarting")
        run.restart_loadgen()
        return {"failed": f"load generator lost: {exc!r}"}
    result: dict[str, Any] = answer["result"]
    cpu = (endpoint.proc.cpu_seconds() if endpoint.proc else 0.0) - cpu0
    result["cpu_ms_per_req"] = cpu * 1000 / result["ok"] if result["ok"] and endpoint.proc else None
    if database is not None and result["ok"]:  # the database server's share, apart
        result["db_cpu_ms_per_req"] = (database.cpu_seconds() - db0) * 1000 / result["ok"]
    # CPU the rest of the machine used meanwhile (other people's work on a shared box).
    wall = time.monotonic() - t0
    foreign = (_busy_cpu_seconds() - busy0) - (_own_cpu_seconds() - own0)
    result["foreign_cores"] = max(0.0, foreign / wall) if wall > 0 else 0.0
    waited = wait_idle([p for p in (endpoint.proc, run.upstream) if p is not None])
    result["idle_wait_s"] = waited
    run.served[endpoint.name] = run.served.get(endpoint.name, 0) + int(result["requests"])
    if endpoint.proc is not None and not endpoint.proc.alive():
        endpoint.fail(f"exited during {scenario.id}: {endpoint.proc.log_tail()}")
    return result


def verify(run: Run) -> dict[str, Any]:
    direct = run.endpoints.get("direct")
    if direct is None:
        direct = Endpoint(name="direct", url=f"{run.upstream_base}/chat/completions",
                          headers={"Authorization": f"Bearer {UPSTREAM_KEY}"})
    out: dict[str, Any] = {}
    for name in run.available():
        if name == "direct":
            continue
        try:
            out[name] = verify_path(run.channel, direct=direct, path=run.endpoints[name],
                                    bodies=VERIFY_BODIES, upstream_base=run.upstream_base)
        except (RuntimeError, TimeoutError, OSError, ValueError) as exc:
            out[name] = {"error": str(exc)}
        log(f"verify {name}: " + ", ".join(
            f"{k}={'identical' if v.get('identical') else 'DIFFERS'}"
            for k, v in out[name].items() if isinstance(v, dict)))
    return out


def warm_up(run: Run) -> None:
    spec = Scenario("warmup", "warm-up", concurrency=32, duration_s=run.suite.warmup_s).spec()
    # Enough requests that every user id of the pool has been seen once.
    spec["max_requests"] = max(run.suite.user_pool * 2, 200)
    spec["duration_s"] = run.suite.warmup_s * 3
    for name in run.available():
        run.channel.call(run.command(run.endpoints[name], op="run", **spec), timeout_s=120)
        run.seq -= 1_000_000  # the warm-up reuses the user ids the rounds will use


def wait_quiet(run: Run, *, timeout_s: float) -> dict[str, float]:
    """Wait (bounded) until other people's processes use under QUIET_CORES of the CPU."""
    start = time.monotonic()
    level = math.inf
    while time.monotonic() - start < timeout_s:
        busy0, own0, t0 = _busy_cpu_seconds(), _own_cpu_seconds(), time.monotonic()
        time.sleep(0.5)
        wall = time.monotonic() - t0
        level = ((_busy_cpu_seconds() - busy0) - (_own_cpu_seconds() - own0)) / wall
        if level < QUIET_CORES:
            break
    return {"waited_s": time.monotonic() - start, "foreign_cores": max(0.0, level)}


def rounds(run: Run) -> dict[str, Any]:
    out: dict[str, Any] = {
        s.id: {"scenario": s.describe(), "rounds": []} for s in run.suite.scenarios
    }
    for r in range(run.suite.rounds):
        if run.suite.quiet_wait_s > 0:
            run.quiet_waits.append(wait_quiet(run, timeout_s=run.suite.quiet_wait_s))
        names = run.available()
        order = names[r % len(names):] + names[:r % len(names)]
        for scenario in run.suite.scenarios:
            per_path: dict[str, Any] = {}
            for name in order:
                endpoint = run.endpoints[name]
                if not endpoint.available or name in scenario.skip:
                    continue
                result = measure(run, scenario, endpoint)
                if result.get("foreign_cores", 0.0) > NOISY_CORES and run.retries > 0:
                    # Someone else's burst: measure again once the machine is quieter.
                    run.retries -= 1
                    quiet = wait_quiet(run, timeout_s=5)
                    first = result.get("foreign_cores")
                    result = measure(run, scenario, endpoint)
                    result["retried"] = {"first_foreign_cores": first, "quiet_wait": quiet}
                per_path[name] = result
            out[scenario.id]["rounds"].append(per_path)
            log(f"round {r + 1}/{run.suite.rounds} {scenario.id}: " + "  ".join(
                f"{n}={v.get('rps', 0):.0f}/s" for n, v in per_path.items()))
    return out


def _hold(run: Run, endpoint: Endpoint) -> dict[str, Any]:
    """Open streams step by step through ``endpoint``, sampling RSS at each step."""
    assert endpoint.proc is not None
    entry: dict[str, Any] = {"levels": [[0, endpoint.proc.rss_bytes() / 1e6]]}
    run.channel.send(run.command(endpoint, op="hold", body=HOLD_BODY,
                                 steps=list(run.suite.hold_steps), ready_timeout_s=15))
    try:
        while True:
            message = run.channel.receive(timeout_s=60)
            if message.get("event") == "level":
                entry["levels"].append([message["open"], endpoint.proc.rss_bytes() / 1e6])
                # Stop at the last step, or at a step the path could not fill.
                done = (message["wanted"] == run.suite.hold_steps[-1]
                        or message["open"] < message["wanted"])
                run.channel.send({"op": "release" if done else "continue"})
                continue
            if not message.get("ok"):
                entry["error"] = message.get("error")
            else:
                entry["hold"] = message["result"]
            break
    except (TimeoutError, EOFError) as exc:
        entry["error"] = str(exc)
    base_open, base_rss = entry["levels"][0]
    top_open, top_rss = entry["levels"][-1]
    opened = top_open - base_open
    entry["kb_per_stream"] = (top_rss - base_rss) * 1000 / opened if opened > 0 else None
    entry["open_streams"] = top_open
    if top_open < run.suite.hold_steps[-1] and "error" not in entry:
        entry["error"] = f"only {top_open} of {run.suite.hold_steps[-1]} streams opened"
    return entry


def memory_at_rest(run: Run) -> dict[str, Any]:
    """RSS at rest (after the warm-up), then with open streams held step by step.

    This runs before the rounds: afterwards the allocator's arenas hold the high-water
    mark of the C=512 scenarios and would absorb new streams without growing."""
    out: dict[str, Any] = {}
    for name in run.available():
        endpoint = run.endpoints[name]
        if name == "direct" or endpoint.proc is None:
            continue
        rest = endpoint.proc.rss_bytes() / 1e6
        entry = {"rest_mb": rest, **(_hold(run, endpoint) if run.suite.hold_steps else {})}
        entry["rest_mb"] = rest
        out[name] = entry
        entry["idle_wait_s"] = wait_idle([endpoint.proc, run.upstream], timeout_s=60)
        log(f"memory {name}: rest {rest:.1f} MB, {entry.get('open_streams')} open -> "
            f"{entry['levels'][-1][1] if entry.get('levels') else 0:.1f} MB, "
            f"{entry.get('kb_per_stream') or 0:.1f} KB/stream")
    return out


def memory_after(run: Run, memory: dict[str, Any]) -> None:
    """RSS after the rounds, with the number of requests the path served."""
    for name, entry in memory.items():
        endpoint = run.endpoints[name]
        if endpoint.proc is not None and endpoint.available:
            entry["after_rounds_mb"] = endpoint.proc.rss_bytes() / 1e6
        entry["requests_served"] = run.served.get(name, 0)


def soak(run: Run) -> dict[str, Any]:
    """The gateway's RSS before and after ``suite.soak_requests`` more requests: memory
    that grows with the requests served (a leak) shows here, the allocator's high-water
    mark does not (the rounds, the C=512 scenario and the open streams reached it)."""
    endpoint = run.endpoints.get("gateway")
    if not run.suite.soak_requests or endpoint is None or not endpoint.available:
        return {"available": False}
    assert endpoint.proc is not None
    if run.suite.soak_warm:
        measure(run, soak_scenario(run.suite.soak_warm), endpoint)
    before = endpoint.proc.rss_bytes() / 1e6
    t0 = time.monotonic()
    result = measure(run, soak_scenario(run.suite.soak_requests), endpoint)
    seconds = time.monotonic() - t0
    after = endpoint.proc.rss_bytes() / 1e6
    served = int(result.get("ok", 0))
    errors = int(sum((result.get("errors") or {}).values()))
    out = {"available": True, "path": "gateway", "warm_requests": run.suite.soak_warm,
           "requests": served, "errors": errors, "rss_before_mb": before,
           "rss_after_mb": after, "growth_mb": after - before, "seconds": seconds}
    if "failed" in result:
        out["error"] = result["failed"]
    log(f"soak gateway: {served:,} requests in {seconds:.0f} s, RSS {before:.1f} -> "
        f"{after:.1f} MB")
    return out


def run_cap(run: Run) -> dict[str, Any]:
    """The cap contention scenario on the bench gateway and on a small-holds gateway."""
    main = run.endpoints.get("gateway")
    if main is None or not main.available:
        return {"available": False, "reason": "the gateway path is not available"}
    small = start_gateway("gateway-smallholds", workers=1, upstream_base=run.upstream_base,
                          work=run.work, env=run.env, metering=cap.SMALL_HOLDS)
    try:
        if small.available and small.proc is not None:
            try:
                small.proc.wait_http(small.ready_url, timeout_s=60)
            except StartError as exc:
                small.fail(str(exc))
        return cap.run_cap(run.channel, {"as_configured": main, "small_holds": small},
                           suite=run.suite, upstream_base=run.upstream_base, log=log)
    finally:
        if small.proc is not None:
            small.proc.stop()


def execute(*, suite: Suite, names: list[str], work: Path, install_litellm: bool) -> dict[str, Any]:
    """Run ``suite`` on the paths ``names``; return the raw results."""
    env = {**bench_env(), "PYTHONUNBUFFERED": "1"}
    started = time.time()
    upstream, base = start_upstream(work=work, env=env)
    log(f"upstream on {base}")
    endpoints: dict[str, Endpoint] = {}
    loadgen: subprocess.Popen[bytes] | None = None
    run: Run | None = None
    try:
        endpoints = start_paths(names, upstream_base=base, work=work, env=env,
                                install=install_litellm)
        for e in endpoints.values():
            log(f"path {e.name}: " + ("ready" if e.available else f"UNAVAILABLE ({e.reason})"))
        loadgen = start_loadgen(work, env)
        run = Run(suite=suite, work=work, env=env, upstream=upstream, upstream_base=base,
                  endpoints=endpoints, channel=LineChannel(loadgen), loadgen=loadgen,
                  retries=suite.retry_budget)
        raw: dict[str, Any] = {"verification": verify(run)}
        warm_up(run)
        raw["memory"] = memory_at_rest(run)
        raw["scenarios"] = rounds(run)
        memory_after(run, raw["memory"])
        raw["soak"] = soak(run)
        raw["cap"] = run_cap(run)
        raw["network"] = {n: e.proc.foreign_connections() for n, e in endpoints.items()
                          if e.available and e.proc and n in PROXIED}
        raw["served"] = run.served
        raw["quiet_waits"] = run.quiet_waits
        raw["retries_used"] = suite.retry_budget - run.retries
        raw["paths"] = {n: e.describe() for n, e in endpoints.items()}
        raw["elapsed_s"] = time.time() - started
        return raw
    finally:
        if run is not None:
            loadgen = run.loadgen  # it may have been replaced
        if loadgen is not None:
            stop_loadgen(loadgen)
        for e in endpoints.values():
            if e.proc is not None:
                e.proc.stop()
        upstream.stop()
