"""Metrics labels: one per route template, one shared by every unknown path."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from consent.helpers import Env, start


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield from start(tmp_path)


def route_labels(env: Env) -> set[str]:
    text = env.client.get("/metrics").text
    return set(re.findall(r'wattfare_requests_total\{route="([^"]*)"', text))


def test_unknown_paths_share_one_label_and_ids_stay_out(env: Env) -> None:
    for n in range(20):
        assert env.client.get(f"/v1/nothing-{n}").status_code == 404
        assert env.client.get(f"/connect/made-up-{n}").status_code == 404
        assert env.client.post(f"/elsewhere/{n}").status_code == 404
    env.client.post("/healthz")  # a known path, the wrong method
    labels = route_labels(env)
    assert "unmatched" in labels
    assert "/connect/{cid}" in labels
    assert "/healthz" in labels
    assert not any("nothing-" in label or "made-up" in label for label in labels), labels
    assert len(labels) <= 4, labels


def test_chat_route_keeps_its_own_label(env: Env) -> None:
    env.client.get("/v1/chat/completions")
    assert "/v1/chat/completions" in route_labels(env)
