"""PNG charts of one run (matplotlib, a bench-only dependency, Agg backend)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.report import PATH_ORDER

CONCURRENCY_SCENARIOS = (("c1", 1), ("c32", 32), ("c128", 128), ("c512", 512))


def _order(names: list[str]) -> list[str]:
    return [p for p in PATH_ORDER if p in names] + sorted(set(names) - set(PATH_ORDER))


def render(data: dict[str, Any], *, out_dir: Path, stem: str) -> dict[str, str]:
    """Write the charts; return {title: file name}. Raises ImportError without matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    raw = data["raw"]
    summary = data["analysis"]["summary"]
    written: dict[str, str] = {}
    colors = {p: f"C{i}" for i, p in enumerate(PATH_ORDER)}

    def finish(fig: Any, ax: Any, *, xlabel: str, ylabel: str, title: str, suffix: str,
               heading: str, grid_which: str = "major") -> None:
        """Label, save as ``<stem>-<suffix>.png`` and close one chart."""
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(True, which=grid_which, alpha=0.3)
        ax.legend(fontsize=8)
        name = f"{stem}-{suffix}.png"
        fig.tight_layout()
        fig.savefig(out_dir / name, dpi=90)
        plt.close(fig)
        written[heading] = name

    c1 = raw.get("scenarios", {}).get("c1")
    if c1:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for path in _order(sorted({p for r in c1["rounds"] for p in r})):
            for i, rnd in enumerate(c1["rounds"]):
                cdf = rnd.get(path, {}).get("ttfb_ms", {}).get("cdf")
                if not cdf:
                    continue
                xs = [point[1] for point in cdf]
                ys = [point[0] for point in cdf]
                ax.plot(xs, ys, color=colors.get(path), alpha=0.8, lw=1.2,
                        label=path if i == 0 else None)
        ax.set_xscale("log")
        finish(fig, ax, xlabel="TTFB, ms (log)", ylabel="percentile",
               title="TTFB distribution at C=1, 20-chunk streams (one line per round)",
               suffix="ttfb", heading="TTFB distribution per path", grid_which="both")

    points = [(sid, c) for sid, c in CONCURRENCY_SCENARIOS if sid in summary]
    if len(points) >= 2:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        paths = _order(sorted({p for sid, _ in points for p in summary[sid]}))
        for path in paths:
            xs, meds, lo, hi = [], [], [], []
            for sid, conc in points:
                s = summary[sid].get(path, {}).get("rps")
                if not s or not s.get("n") or math.isnan(s["median"]):
                    continue
                xs.append(conc)
                meds.append(s["median"])
                lo.append(s["median"] - s["min"])
                hi.append(s["max"] - s["median"])
            if xs:
                ax.errorbar(xs, meds, yerr=[lo, hi], marker="o", capsize=3, label=path,
                            color=colors.get(path))
        ax.set_xscale("log", base=2)
        ax.set_xticks([c for _, c in points], [str(c) for _, c in points])
        finish(fig, ax, xlabel="concurrent streams", ylabel="requests/s (median, min–max)",
               title="Throughput vs concurrency, 20-chunk streams", suffix="throughput",
               heading="Throughput vs concurrency")

    memory = raw.get("memory", {})
    if memory:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for path in _order(list(memory)):
            levels = memory[path].get("levels") or []
            if len(levels) >= 2:
                ax.plot([lv[0] for lv in levels], [lv[1] for lv in levels], marker="o",
                        label=path, color=colors.get(path))
        finish(fig, ax, xlabel="open streams", ylabel="RSS, MB",
               title="Memory vs open streams (process tree RSS)", suffix="memory",
               heading="Memory vs open streams")
    return written
