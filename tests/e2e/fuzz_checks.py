"""Schemathesis checks of the API's fuzz run (loaded through ``SCHEMATHESIS_HOOKS``):
every error of a JSON operation, and of any path under ``/v1/``, is in the OpenAI shape
with a stable string code."""

from __future__ import annotations

from typing import Any

import orjson
import schemathesis


@schemathesis.check
def openai_error_shape(ctx: Any, response: Any, case: Any) -> None:
    if response.status_code < 400:
        return
    tags = case.operation.tags or []
    if "api" not in tags and not case.path.startswith("/v1/"):
        return  # the hosted pages answer HTML, by design
    try:
        body = orjson.loads(response.content or b"")
    except orjson.JSONDecodeError:
        raise AssertionError(f"error {response.status_code} is not JSON") from None
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or set(error) != {"message", "type", "code", "param"}:
        raise AssertionError(f"error {response.status_code} is not in the OpenAI shape: {body}")
    if not isinstance(error["code"], str) or not isinstance(error["message"], str):
        raise AssertionError(f"error {response.status_code} has no string code: {body}")
