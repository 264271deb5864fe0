"""Instructions per request, per path: a count that does not move with the neighbours.

    python -m bench.instructions --baseline 3248e14,HEAD --requests 400

CPU time per request (:mod:`bench.cpu`) moves by 10-20% from one round to the next on a
machine whose cores are shared. What the code does per request is better compared by
counting it: each gateway runs under valgrind's callgrind (every thread of the process
counted), serves a warm-up, has its counters zeroed, serves ``--requests`` 20-chunk
streams at a fixed concurrency, and the instructions counted meanwhile are divided by the
requests served. Under valgrind a process runs some 50 times slower, so timers fire
relatively sooner and more writes share one commit than at full speed; that holds alike
for every path measured, so the counts compare across code versions, not with a path
running at full speed. Needs valgrind (Debian's package).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.cpu import baseline_tree
from bench.paths import Endpoint, bench_env, start_gateway, under_load
from bench.procs import LineChannel
from bench.scenarios import Scenario

BENCH = Path(__file__).resolve().parent
_TOTALS = re.compile(rb"^(?:summary|totals):\s+(\d+)", re.MULTILINE)


def _control(pid: int, flag: str) -> None:
    subprocess.run(["callgrind_control", flag, str(pid)], check=True, capture_output=True,
                   timeout=120)


def _counted(out: Path) -> int:
    """Instructions in the dumps of ``out`` (callgrind writes ``out.N`` per dump)."""
    total = 0
    for dump in sorted(out.parent.glob(out.name + ".*")):
        match = _TOTALS.search(dump.read_bytes())
        if match:
            total = int(match.group(1))  # the last dump: counted since the zeroing
    return total


def measure(channel: LineChannel, endpoint: Endpoint, *, requests: int, warm: int,
            concurrency: int, chunks: int, out: Path) -> tuple[float, int]:
    """(instructions per request, requests served) for one path under callgrind."""
    assert endpoint.proc is not None
    pid = endpoint.proc.pid
    spec = {"url": endpoint.url, "headers": endpoint.headers,
            "user_header": endpoint.user_header, "user_prefix": "ins-", "user_pool": 1024}

    def run(count: int) -> int:
        scenario = Scenario("ins", "ins", chunks=chunks, concurrency=concurrency,
                            duration_s=600.0, max_requests=count)
        answer = channel.call({"op": "run", **spec, **scenario.spec()}, timeout_s=900)
        result = answer.get("result", {})
        if result.get("errors"):
            raise SystemExit(f"{endpoint.name}: {result['errors']} errors under callgrind")
        return int(result.get("ok", 0))

    run(warm)
    _control(pid, "-z")
    served = run(requests)
    _control(pid, "-d")
    deadline = time.monotonic() + 60
    counted = _counted(out)
    while not counted and time.monotonic() < deadline:
        time.sleep(0.5)
        counted = _counted(out)
    return counted / max(1, served), served


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", metavar="GIT_REF[,GIT_REF...]",
                        help="also count the gateway as of these commits")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--warm", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--chunks", type=int, default=20)
    args = parser.parse_args(argv)
    valgrind = shutil.which("valgrind")
    if valgrind is None or shutil.which("callgrind_control") is None:
        raise SystemExit("valgrind not found (Debian: apt-get install valgrind)")
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    work = BENCH / ".work" / f"instructions-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    env = bench_env()
    with under_load([], work=work, env=env) as (base, endpoints, channel):
        trees: dict[str, Path | None] = {"gateway": None}
        for ref in filter(None, (args.baseline or "").split(",")):
            trees[f"gateway@{ref}"] = baseline_tree(ref, work)
        results: dict[str, tuple[float, int]] = {}
        for name, tree in trees.items():
            label = name.replace("@", "-at-").replace("/", "-")
            out = work / f"{label}.callgrind"
            wrap = [valgrind, "--tool=callgrind", f"--callgrind-out-file={out}",
                    "--dump-instr=no", "--dump-line=no", "--compress-strings=no"]
            run_env = env if tree is None else {**env, "PYTHONPATH": str(tree)}
            endpoint = endpoints[name] = start_gateway(
                label, workers=1, upstream_base=base, work=work, env=run_env, wrap=wrap,
            )
            if endpoint.proc is None:
                raise SystemExit(f"{name} unavailable: {endpoint.reason}")
            endpoint.proc.wait_http(endpoint.ready_url, timeout_s=600)
            results[name] = measure(channel, endpoint, requests=args.requests, warm=args.warm,
                                    concurrency=args.concurrency, chunks=args.chunks, out=out)
            endpoint.proc.stop()
        print(f"C={args.concurrency}, {args.chunks}-chunk streams, {args.requests} requests "
              f"counted after {args.warm} (instructions per request, every thread)")
        first = results["gateway"][0]
        for name, (per, served) in results.items():
            print(f"  {name:22s} {per / 1e6:8.3f} M instructions/request  "
                  f"({served} served; {per / first:.3f}x the gateway's)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
