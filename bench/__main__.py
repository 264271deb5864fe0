"""``python -m bench run [--quick]``: the whole benchmark in one command.

    python -m bench run                 # standard suite, ~10 min; updates bench/RESULTS.md
    python -m bench run --quick         # tiny counts, < 1 min; results in bench/.work/results
    python -m bench run --paths direct,floor-aiohttp,gateway
    python -m bench setup               # install matplotlib and the LiteLLM venv up front
    python -m bench report bench/results/<stamp>.json [--results-md]   # re-render

Outputs: ``<out>/<UTC stamp>.json`` (per-round summaries, spreads, ratios, verdicts),
``<out>/<stamp>.md`` (tables) and ``<out>/<stamp>-*.png`` (charts).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import analysis, charts, litellm_path, machine, report, runner
from bench.paths import ALL_PATHS
from bench.scenarios import SUITES

BENCH = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH / "results"
QUICK_OUT = BENCH / ".work" / "results"
RESULTS_MD = BENCH / "RESULTS.md"
# Hand-written notes on the targets, placed under the targets table of RESULTS.md.
NOTES_MD = BENCH / "NOTES.md"


def ensure_matplotlib() -> str:
    """Empty when matplotlib can be imported (installing it if needed), else why not."""
    if importlib.util.find_spec("matplotlib") is not None:
        return ""
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
             "matplotlib"],
            check=True, timeout=600, capture_output=True,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return f"matplotlib could not be installed: {exc}"
    importlib.invalidate_caches()
    return "" if importlib.util.find_spec("matplotlib") is not None else "matplotlib missing"


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        # Six significant digits: enough for milliseconds and for USD amounts of a few
        # millionths alike, and a JSON a fraction of the size.
        return None if math.isnan(value) or math.isinf(value) else float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def _paths(text: str | None) -> list[str]:
    if not text:
        return list(ALL_PATHS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_PATHS]
    if unknown:
        raise SystemExit(f"unknown path {unknown[0]!r}; known: {', '.join(ALL_PATHS)}")
    if "direct" not in names:
        names.insert(0, "direct")  # every "added" number is relative to it
    return names


def cmd_run(args: argparse.Namespace) -> int:
    suite = SUITES["quick" if args.quick else "standard"].with_rounds(args.rounds)
    names = _paths(args.paths)
    out_dir = Path(args.out) if args.out else (QUICK_OUT if args.quick else DEFAULT_OUT)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    work = BENCH / ".work" / stamp
    work.mkdir(parents=True, exist_ok=True)
    charts_missing = "" if args.no_charts else ensure_matplotlib()
    meta = {
        "started_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "stamp": stamp,
        "suite": suite.name,
        "rounds": suite.rounds,
        "paths_requested": names,
        "command": "python -m bench " + " ".join(sys.argv[1:]),
        "machine": machine.describe(),
        "litellm_pin": litellm_path.LITELLM_VERSION,
    }
    raw = runner.execute(suite=suite, names=names, work=work, install_litellm=not args.no_install)
    data: dict[str, Any] = {"meta": meta, "raw": raw, "analysis": analysis.analyse(raw)}
    data = _rounded(data)
    json_path = out_dir / f"{stamp}.json"
    json_path.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    if charts_missing:
        print(f"charts skipped: {charts_missing}", file=sys.stderr)
    results_md = (suite.name == "standard" and not args.paths
                  and out_dir.resolve() == DEFAULT_OUT.resolve())
    publish(data, json_path=json_path, with_charts=not (args.no_charts or charts_missing),
            results_md=results_md)
    return 0


def publish(
    data: dict[str, Any], *, json_path: Path, with_charts: bool, results_md: bool
) -> None:
    """Write the markdown (and charts) of a run next to its JSON; maybe RESULTS.md too."""
    out_dir, stem = json_path.parent, json_path.stem
    written = charts.render(data, out_dir=out_dir, stem=stem) if with_charts else {}
    title = f"wattfare benchmark, {data['meta']['suite']} suite"
    md_path = out_dir / f"{stem}.md"
    md_path.write_text(report.render(data, charts=written, title=title))
    if results_md:
        rel = {k: f"{out_dir.resolve().relative_to(BENCH)}/{v}" for k, v in written.items()}
        notes = NOTES_MD.read_text() if NOTES_MD.exists() else ""
        RESULTS_MD.write_text(report.render(data, charts=rel, title=title, notes=notes))
    print(json.dumps({"json": str(json_path), "markdown": str(md_path),
                      "charts": [str(out_dir / v) for v in written.values()]}))
    for t in data["analysis"]["targets"]:
        verdict = "n/a" if t["pass"] is None else ("PASS" if t["pass"] else "MISS")
        print(f"{verdict:5} {t['name']}: {t['value']} {t['unit']} (target {t['target']})",
              file=sys.stderr)


def cmd_report(args: argparse.Namespace) -> int:
    """Re-render a run's markdown and charts from its JSON (the analysis is redone)."""
    json_path = Path(args.json)
    data = json.loads(json_path.read_text())
    data["analysis"] = _rounded(analysis.analyse(data["raw"]))
    json_path.write_text(json.dumps(data, separators=(",", ":")) + "\n")
    problem = "" if args.no_charts else ensure_matplotlib()
    publish(data, json_path=json_path, with_charts=not (args.no_charts or problem),
            results_md=args.results_md)
    return 0


def cmd_setup(args: argparse.Namespace) -> int:
    problem = ensure_matplotlib()
    print("matplotlib: " + (problem or "ok"))
    BENCH.joinpath(".work").mkdir(exist_ok=True)
    try:
        version = litellm_path.ensure_installed(log=BENCH / ".work" / "litellm-install.log")
        print(f"litellm: {version} in {litellm_path.VENV}")
    except RuntimeError as exc:
        print(f"litellm: unavailable: {exc}")
    return 0


def _exit_on_signal(signum: int, _frame: object) -> None:
    # SystemExit unwinds through the runner's finally blocks, which stop every process
    # the run started; a bare SIGTERM would orphan them. A second signal must not cut
    # that clean-up short, so both are ignored from here on.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _exit_on_signal)
    # A shell starts background jobs with SIGINT ignored; Ctrl-C or kill -INT should work.
    signal.signal(signal.SIGINT, _exit_on_signal)
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the suite")
    run.add_argument("--quick", action="store_true", help="tiny counts (< 1 min)")
    run.add_argument("--paths", help=f"comma-separated subset of: {', '.join(ALL_PATHS)}")
    run.add_argument("--rounds", type=int, help="override the suite's number of rounds")
    run.add_argument("--out", help="directory for the json/md/png outputs")
    run.add_argument("--no-install", action="store_true",
                     help="do not install LiteLLM if missing (the path is then unavailable)")
    run.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    run.set_defaults(func=cmd_run)
    rep = sub.add_parser("report", help="re-render the markdown and charts of a run")
    rep.add_argument("json", help="a bench/results/<stamp>.json")
    rep.add_argument("--results-md", action="store_true",
                     help="also rewrite bench/RESULTS.md (with bench/NOTES.md)")
    rep.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    rep.set_defaults(func=cmd_report)
    setup = sub.add_parser("setup", help="install matplotlib and the LiteLLM venv")
    setup.set_defaults(func=cmd_setup)
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
