"""Where a path spends its CPU under load: py-spy samples while the load generator runs.

    python -m bench.profile --path gateway --concurrency 128 --seconds 10

Starts the simulated upstream and that one path, drives a constant-concurrency load of
20-chunk streams, and records the path's process (with its subprocesses) with
``py-spy record``: a flame graph (SVG) and collapsed stacks, summarised as the functions
with the most samples on top of the stack (self) and anywhere in it (inclusive).
Needs py-spy (``pip install py-spy``) and permission to ptrace the process.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.cpu import start_baseline
from bench.paths import ALL_PATHS, bench_env, under_load
from bench.scenarios import Scenario

BENCH = Path(__file__).resolve().parent


_LOCATION = re.compile(r"\(([^()]*?)(?::\d+)?\)$")


def _package(frame: str) -> str:
    """The top-level package (or file) a py-spy frame ``func (path/file.py:line)`` is in."""
    match = _LOCATION.search(frame)
    path = match.group(1) if match else frame
    return path.split("/", 1)[0] if "/" in path else path


def top_frames(
    collapsed: Path, *, limit: int = 25, focus: str = "gateway/"
) -> dict[str, list[tuple[str, float]]]:
    """Shares of samples from py-spy's raw (collapsed) format, as percentages:

    - ``self``: the frame on top of the stack (line-level);
    - ``by_package``: self time summed per top-level package;
    - ``inclusive``: per function (lines merged), anywhere in the stack;
    - ``focus``: the inclusive list restricted to frames whose file path contains
      ``focus`` (the project's own code).
    """
    self_counts: collections.Counter[str] = collections.Counter()
    packages: collections.Counter[str] = collections.Counter()
    incl_counts: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";")
                  if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        self_counts[frames[-1]] += count
        packages[_package(frames[-1])] += count
        for function in {re.sub(r":\d+\)$", ")", f) for f in frames}:
            incl_counts[function] += count
    if total == 0:
        return {"self": [], "by_package": [], "inclusive": [], "focus": []}

    def share(counter: collections.Counter[str], keep: int) -> list[tuple[str, float]]:
        return [(k, round(100.0 * v / total, 1)) for k, v in counter.most_common(keep)]

    focused = collections.Counter({k: v for k, v in incl_counts.items() if focus in k})
    return {
        "self": share(self_counts, limit),
        "by_package": share(packages, limit),
        "inclusive": share(incl_counts, limit * 2),
        "focus": share(focused, limit * 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--path", default="gateway",
                        choices=[p for p in ALL_PATHS if p != "direct"])
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--gap-ms", type=float, default=0.0, help="pace the chunks")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    parser.add_argument("--out", default=str(BENCH / ".work" / "profile"))
    parser.add_argument("--baseline", metavar="GIT_REF",
                        help="profile the gateway as of this commit instead (same load)")
    args = parser.parse_args(argv)
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(pyspy).exists():
        raise SystemExit("py-spy not found: pip install py-spy")
    out = Path(args.out)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    work = BENCH / ".work" / f"profile-{stamp}"
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    env = bench_env()
    with under_load([args.path], work=work, env=env) as (base, endpoints, channel):
        if args.baseline:
            args.path, endpoints[args.path] = start_baseline(
                args.baseline, upstream_base=base, work=work, env=env,
            )
        endpoint = endpoints[args.path]
        if not endpoint.available or endpoint.proc is None:
            raise SystemExit(f"{args.path} unavailable: {endpoint.reason}")
        scenario = Scenario("profile", "profile", chunks=args.chunks, gap_ms=args.gap_ms,
                            concurrency=args.concurrency, duration_s=args.seconds + 2)
        spec = {"url": endpoint.url, "headers": endpoint.headers,
                "user_header": endpoint.user_header, "user_prefix": "prof-", "user_pool": 1024,
                **scenario.spec()}
        warm = {**spec, "duration_s": 2.0}
        channel.call({"op": "run", **warm}, timeout_s=60)
        channel.send({"op": "run", **spec})
        time.sleep(1.0)
        stem = out / f"{stamp}-{args.path.replace('@', '-at-')}"
        for fmt, suffix in (("raw", ".collapsed.txt"), ("flamegraph", ".svg")):
            subprocess.run(
                [pyspy, "record", "--pid", str(endpoint.proc.pid), "--subprocesses",
                 "--duration", str(max(1, int(args.seconds / 2))), "--rate", str(args.rate),
                 "--format", fmt, "--output", str(stem) + suffix, "--nonblocking"],
                check=True, capture_output=True, timeout=args.seconds + 60,
            )
        result = channel.receive(timeout_s=args.seconds + 120)
        summary: dict[str, Any] = {
            "path": args.path,
            "concurrency": args.concurrency,
            "chunks": args.chunks,
            "rps": result.get("result", {}).get("rps"),
            "top": top_frames(Path(str(stem) + ".collapsed.txt")),
            "svg": str(stem) + ".svg",
        }
        Path(str(stem) + ".json").write_text(json.dumps(summary, indent=1))
        print(f"{args.path}: {summary['rps']:.0f} req/s under the profiler; flame graph "
              f"{summary['svg']}")
        for kind in ("by_package", "self", "focus"):
            print(f"\ntop frames ({kind}, % of samples):")
            for frame, share in summary["top"][kind][:25]:
                print(f"  {share:5.1f}%  {frame}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
