"""OpenAI compatibility beyond chat, with the official SDK as the client: the model list
and one model in OpenAI's shapes (pricing kept), and a clear refusal, in the OpenAI error
shape, of the OpenAI endpoints the gateway does not serve."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest

from .harness import AppKeys

pytestmark = pytest.mark.e2e


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    models = list(client.models.list())
    assert models, "the simulated upstream lists models"
    for model in models:
        assert model.object == "model" and isinstance(model.created, int)
        assert model.owned_by == model.id.split("/", 1)[0]
    mini = next(m for m in models if m.id == "openai/gpt-4o-mini")
    extra: dict[str, Any] = mini.model_extra or {}
    assert set(extra["pricing"]) >= {"prompt", "completion"}  # the upstream's fields stay
    one = client.models.retrieve("openai/gpt-4o-mini")  # the SDK sends %2F for the slash
    assert one.id == "openai/gpt-4o-mini" and one.owned_by == "openai"
    assert one.model_dump() == mini.model_dump()


def test_unknown_model_is_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client.models.retrieve("nobody/no-such-model")
    assert raised.value.code == "model_not_found"
    assert "nobody/no-such-model" in raised.value.message


def test_models_need_a_credential(http: httpx.Client) -> None:
    for path in ("/v1/models", "/v1/models/openai/gpt-4o-mini"):
        response = http.get(path)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda c: c.completions.create(model="m", prompt="x"), id="completions"),
        pytest.param(lambda c: c.embeddings.create(model="m", input="x"), id="embeddings"),
        pytest.param(lambda c: c.responses.create(model="m", input="x"), id="responses"),
        pytest.param(lambda c: c.images.generate(prompt="x"), id="images"),
        pytest.param(lambda c: c.audio.speech.create(model="m", voice="alloy", input="x"),
                     id="audio-speech"),
        pytest.param(lambda c: c.files.list(), id="files"),
        pytest.param(lambda c: c.moderations.create(input="x"), id="moderations"),
        pytest.param(lambda c: c.batches.list(), id="batches"),
        pytest.param(lambda c: c.fine_tuning.jobs.list(), id="fine-tuning"),
    ],
)
def test_unsupported_openai_endpoints_say_what_is_supported(
    client: openai.OpenAI, call: Callable[[openai.OpenAI], object]
) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        call(client)
    error = raised.value
    assert error.code == "unsupported_endpoint" and error.type == "invalid_request_error"
    assert "is not supported by this gateway" in error.message
    assert "POST /v1/chat/completions" in error.message


def test_unsupported_endpoint_without_credentials(http: httpx.Client, app: AppKeys) -> None:
    response = http.post("/v1/embeddings", json={"model": "m", "input": "x"})
    assert response.status_code == 404
    body = response.json()
    assert set(body["error"]) == {"message", "type", "code", "param"}
    assert body["error"]["code"] == "unsupported_endpoint"
    other = http.get("/nope")
    assert other.json()["error"]["code"] == "not_found"  # outside /v1: a plain 404
    wrong = http.put("/v1/models", headers={"Authorization": f"Bearer {app.secret_key}"})
    assert (wrong.status_code, wrong.json()["error"]["code"]) == (405, "method_not_allowed")
