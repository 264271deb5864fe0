"""The HTTP API fuzzed by schemathesis from its own OpenAPI document, against a live
gateway and the simulated upstream on loopback: no answer is a 5xx, and every error of the
JSON API is in the OpenAI shape (``fuzz_checks.py``); and what the gateway answers
(statuses, content types, bodies) is what the document says.

Bounded: a fixed seed (``WATTFARE_FUZZ_SEED`` overrides it), a few examples per
operation, and a time budget for the whole run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .harness import AppKeys, Gateway

pytestmark = pytest.mark.e2e

TESTS = Path(__file__).resolve().parents[1]
MAX_EXAMPLES = 20
CHECKS = (
    "not_a_server_error",  # no 5xx, whatever the input
    "openai_error_shape",  # fuzz_checks.py
    # The document is true of what the gateway answers.
    "status_code_conformance", "content_type_conformance", "response_schema_conformance",
)
MAX_TIME_S = 60


def test_fuzz_the_api_from_its_openapi_document(
    gateway: Gateway, app: AppKeys, tmp_path: Path
) -> None:
    cli = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
    assert cli is not None, "schemathesis is a dev dependency (pip install -e '.[dev]')"
    seed = os.environ.get("WATTFARE_FUZZ_SEED", "20261201")
    done = subprocess.run(
        [
            cli, "run", f"{gateway.url}/openapi.json",
            "--checks", ",".join(CHECKS),
            "--phases", "examples,coverage,fuzzing",
            "--max-examples", str(MAX_EXAMPLES), "--max-time", str(MAX_TIME_S),
            "--seed", seed, "--generation-database", "none",
            # Hypothesis's own checks of the generator (slow, filtered) are no API fault.
            "--suppress-health-check", "all",
            "--request-timeout", "10", "--workers", "2", "--no-color",
            "--header", f"Authorization: Bearer {app.secret_key}",
        ],
        cwd=tmp_path, capture_output=True, text=True, timeout=MAX_TIME_S + 60, check=False,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "e2e.fuzz_checks",
             "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])},
    )
    assert done.returncode == 0, done.stdout[-12_000:] + done.stderr[-4_000:]
    assert "Traceback" not in gateway.stderr()
