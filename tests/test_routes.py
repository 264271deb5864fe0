"""The JSON API's shared request rules, in-process (one user header, read the same way by
every route), and its pure parts (model entries shaped as OpenAI's, the answer to an
OpenAI endpoint the gateway does not serve)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from consent.helpers import Env, start

from gateway.routes import openai_model, openai_model_list, unsupported_endpoint


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


@pytest.mark.parametrize(
    ("entry", "owned_by", "created"),
    [
        pytest.param({"id": "openai/gpt-4o-mini", "created": 1721260800}, "openai", 1721260800,
                     id="openrouter-vendor-prefix"),
        pytest.param({"id": "llama-3.1-8b", "object": "model", "owned_by": "vllm",
                      "created": 5}, "vllm", 5, id="openai-compatible-server"),
        pytest.param({"id": "tiny"}, "system", 0, id="nothing-said"),
        pytest.param({"id": "x/y", "created": True, "owned_by": ""}, "x", 0,
                     id="ill-typed-fields"),
    ],
)
def test_openai_model_shape(entry: dict[str, Any], owned_by: str, created: int) -> None:
    shaped = openai_model(entry)
    assert list(shaped)[:4] == ["id", "object", "created", "owned_by"]
    assert (shaped["id"], shaped["object"], shaped["created"], shaped["owned_by"]) == (
        entry["id"], "model", created, owned_by)


def test_pricing_and_other_fields_are_kept() -> None:
    entry = {"id": "a/b", "name": "B", "pricing": {"prompt": "0.00000015"},
             "context_length": 128000}
    shaped = openai_model(entry)
    assert shaped["pricing"] == {"prompt": "0.00000015"} and shaped["context_length"] == 128000
    assert shaped["name"] == "B"


def test_model_list_leaves_out_entries_without_an_id() -> None:
    entries: list[Any] = [1, {"name": "no id"}, {"id": 7}, {"id": "a/b"}, {"id": "c/d"}]
    assert [m["id"] for m in openai_model_list(entries)] == ["a/b", "c/d"]
    assert openai_model_list([]) == []


def test_unsupported_endpoint_names_what_is_supported() -> None:
    error = unsupported_endpoint("POST", "/v1/embeddings")
    assert (error.status, error.code) == (404, "unsupported_endpoint")
    assert error.message.startswith("POST /v1/embeddings is not supported by this gateway.")
    for served in ("POST /v1/chat/completions", "GET /v1/models", "/openapi.json"):
        assert served in error.message
