"""The benchmark's quick mode runs end to end and produces what it promises.

Runs ``python -m bench run --quick`` as a subprocess (bounded by a timeout) on every path
but LiteLLM (whose install is too slow for CI), then checks the outputs. No timing is
asserted: the machine is shared and noisy; only what the run observed is.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
PATHS = ("direct", "floor-aiohttp", "floor-httpx", "floor-httpx-aiohttp", "asgi-aiohttp",
         "gateway", "gateway-w2", "gateway-pg", "gateway-pg2")
RELAYS = tuple(p for p in PATHS if p != "direct")
TIMEOUT_S = 300

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "run", "--quick", "--paths", ",".join(PATHS),
         "--out", str(out), "--no-install", "--no-charts"],
        cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = sorted(out.glob("*.json"))
    assert len(results) == 1, list(out.iterdir())
    return json.loads(results[0].read_text()), results[0]


def test_json_and_markdown_are_written(quick_run: tuple[dict[str, Any], Path]) -> None:
    data, json_path = quick_run
    md = json_path.with_suffix(".md")
    assert md.is_file()
    text = md.read_text()
    assert "## Targets" in text
    assert "| gateway |" in text
    assert data["meta"]["suite"] == "quick"
    assert {t["name"] for t in data["analysis"]["targets"]}


def test_every_path_is_available_and_produced_results(
    quick_run: tuple[dict[str, Any], Path],
) -> None:
    data, _ = quick_run
    raw = data["raw"]
    for name in PATHS:
        assert raw["paths"][name]["available"], raw["paths"][name]["reason"]
    assert raw["scenarios"]
    for sid, entry in raw["scenarios"].items():
        assert len(entry["rounds"]) == data["meta"]["rounds"]
        for rnd in entry["rounds"]:
            for name in PATHS:
                result = rnd[name]
                assert "failed" not in result, (sid, name, result)
                assert result["ok"] > 0, (sid, name, result)
                errors = {k: v for k, v in result["errors"].items() if k != "cut"}
                assert not errors, (sid, name, errors)


def test_the_postgres_paths_report_their_database_servers_cpu(
    quick_run: tuple[dict[str, Any], Path],
) -> None:
    data, _ = quick_run
    for entry in data["raw"]["scenarios"].values():
        for rnd in entry["rounds"]:
            for name in ("gateway-pg", "gateway-pg2"):
                assert rnd[name]["db_cpu_ms_per_req"] >= 0, (name, rnd[name])
            assert "db_cpu_ms_per_req" not in rnd["gateway"]
    assert any(t["name"].startswith("gateway-pg / gateway") for t in data["analysis"]["targets"])


@pytest.mark.parametrize("path", [pytest.param(p, id=p) for p in RELAYS])
def test_relays_upstream_bytes_unchanged(
    quick_run: tuple[dict[str, Any], Path], path: str
) -> None:
    data, _ = quick_run
    checks = data["raw"]["verification"][path]
    assert set(checks) == {"stream_20", "stream_500", "non_stream"}
    for shape, check in checks.items():
        assert check["status"] == 200, (shape, check)
        assert check["knobs_forwarded"], (shape, check)
        assert check["identical"], (shape, check["difference"])


def test_memory_scenario_held_streams_open(quick_run: tuple[dict[str, Any], Path]) -> None:
    data, _ = quick_run
    memory = data["raw"]["memory"]
    for name in RELAYS:
        assert memory[name]["open_streams"] > 0, memory[name]
        assert memory[name]["rest_mb"] > 0


def test_soak_served_its_requests(quick_run: tuple[dict[str, Any], Path]) -> None:
    data, _ = quick_run
    soak = data["raw"]["soak"]
    assert soak["available"], soak
    assert soak["requests"] == 500 and soak["errors"] == 0, soak
    assert soak["rss_before_mb"] > 0 and soak["rss_after_mb"] > 0
    assert any(t["name"].startswith("gateway RSS growth") for t in data["analysis"]["targets"])


def test_cap_is_never_overshot(quick_run: tuple[dict[str, Any], Path]) -> None:
    data, _ = quick_run
    cap = data["raw"]["cap"]
    assert cap["available"], cap
    for label, variant in cap["variants"].items():
        assert variant["every_stream_ended_well"], (label, variant["outcomes"])
        assert variant["overshoot_nano"] == 0, (label, variant)


def test_skipped_paths_are_real_paths_with_a_reason() -> None:
    from bench.paths import ALL_PATHS
    from bench.scenarios import SUITES

    for suite in SUITES.values():
        for scenario in suite.scenarios:
            assert set(scenario.skip) <= set(ALL_PATHS), scenario.id
            assert not scenario.skip or scenario.skip_reason, scenario.id


def test_the_report_says_which_paths_a_scenario_skipped(
    quick_run: tuple[dict[str, Any], Path],
) -> None:
    from bench.report import render

    data = json.loads(json.dumps(quick_run[0]))
    scenario = data["raw"]["scenarios"]["c32"]
    scenario["scenario"].update(skip=["litellm"], skip_reason="it only timed out")
    text = render(data, charts={}, title="t")
    assert "Not run (a dash in every table): litellm in 20 chunks, C=32: it only timed out." in text
