"""The JSON API's shared request rules, in-process: one user header, read the same way by
every route."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from consent.helpers import Env, start


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    yield from start(tmp_path)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("POST", "/v1/chat/completions", id="chat"),
        pytest.param("GET", "/v1/connection", id="connection"),
        pytest.param("DELETE", "/v1/connection", id="disconnect"),
        pytest.param("POST", "/v1/connect", id="connect"),
    ],
)
def test_two_user_headers_are_refused(env: Env, method: str, path: str) -> None:
    headers = [
        ("Authorization", f"Bearer {env.live.keys.secret_key}"),
        ("Wattfare-User", "alice"),
        ("Wattfare-User", "bob"),
        ("Content-Type", "application/json"),
    ]
    body = b'{"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
    response = env.client.request(
        method, path, headers=headers, content=body if method == "POST" else None
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "invalid_request"
    assert response.json()["error"]["param"] == "Wattfare-User"
    assert env.sql("SELECT COUNT(*) FROM holds") == [(0,)]
    assert env.sql("SELECT COUNT(*) FROM consents") == [(0,)]


def test_one_user_header_still_works(env: Env) -> None:
    response = env.client.get(
        "/v1/connection",
        headers={"Authorization": f"Bearer {env.live.keys.secret_key}", "Wattfare-User": "ada"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["user_id"] == "ada"
