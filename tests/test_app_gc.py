"""The garbage collector's serving set-up: on while a serving gateway runs, undone after."""

from __future__ import annotations

import gc
from pathlib import Path

from starlette.testclient import TestClient

from gateway.app import SERVING_GC_THRESHOLDS, create_app
from gateway.config import Settings, settings_from_mapping


def _settings(tmp_path: Path) -> Settings:
    return settings_from_mapping(
        {"server": {"access_log": False}, "store": {"path": str(tmp_path / "w.db")}},
        environ={},
    )


def test_a_serving_gateway_freezes_what_start_up_made_and_raises_the_threshold(
    tmp_path: Path,
) -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with TestClient(create_app(_settings(tmp_path), tune_gc=True)) as client:
        assert client.get("/healthz").status_code == 200
        assert gc.get_threshold() == SERVING_GC_THRESHOLDS
        assert gc.get_freeze_count() > 1000  # modules, the app, its caches
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_an_embedded_gateway_leaves_the_collector_alone(tmp_path: Path) -> None:
    before = gc.get_threshold()
    with TestClient(create_app(_settings(tmp_path))) as client:
        assert client.get("/healthz").status_code == 200
        assert gc.get_threshold() == before
        assert gc.get_freeze_count() == 0
