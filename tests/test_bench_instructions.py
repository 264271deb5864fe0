"""``python -m bench.instructions`` runs end to end under valgrind (tiny counts; no count
asserted beyond its being one)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("callgrind_control") is None,
                    reason="valgrind is not installed (Debian: apt-get install valgrind)")
def test_it_counts_instructions_per_request() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench.instructions", "--requests", "6", "--warm", "2",
         "--concurrency", "2", "--chunks", "3"],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("C=2, 3-chunk streams, 6 requests counted after 2")
    match = re.match(r"\s+gateway\s+([\d.]+) M instructions/request\s+\(6 served", lines[1])
    assert match is not None, proc.stdout
    assert float(match.group(1)) > 0
