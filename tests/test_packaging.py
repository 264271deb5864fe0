"""What the distribution provides: the SDK as ``wattfare``, the old name deprecated, the
licence the metadata names."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import wattfare

ROOT = Path(__file__).resolve().parent.parent


def test_the_installed_distribution_provides_wattfare(tmp_path: Path) -> None:
    # Isolated mode, from elsewhere: only what is installed can be imported, and any
    # warning is an error.
    done = subprocess.run(
        [sys.executable, "-I", "-W", "error", "-c",
         "import wattfare; print(wattfare.__version__, wattfare.Wattfare.__name__)"],
        capture_output=True, text=True, cwd=tmp_path, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [wattfare.__version__, "Wattfare"]


def test_gateway_sdk_still_imports_with_a_deprecation_warning() -> None:
    sys.modules.pop("gateway.sdk", None)
    with pytest.deprecated_call(match="import the SDK as 'wattfare'"):
        old = importlib.import_module("gateway.sdk")
    assert old.Wattfare is wattfare.Wattfare
    assert old.Session is wattfare.Session


def test_the_licence_is_the_one_the_metadata_names() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
