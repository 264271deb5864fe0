"""What an operator sees: the access log line, /metrics and /healthz."""

from __future__ import annotations

import json

import httpx
import pytest

from .harness import AppKeys, Gateway, chat_body, secret_headers, wait_until

pytestmark = pytest.mark.e2e


def _access_lines(gateway: Gateway) -> list[dict[str, object]]:
    lines = []
    for line in gateway.stderr().splitlines():
        if line.startswith("{") and '"request_id"' in line:
            lines.append(json.loads(line))
    return lines


def test_one_access_line_per_request_with_its_fields(
    gateway: Gateway, app: AppKeys, user_id: str, http: httpx.Client
) -> None:
    ok = http.post("/v1/chat/completions", json=chat_body("hi", stream=False, chunks=2),
                   headers=secret_headers(app, user_id))
    assert ok.status_code == 200
    bad = http.post("/v1/chat/completions", json={"model": "nope/nope", "messages": [
        {"role": "user", "content": "x"}]}, headers=secret_headers(app, user_id))
    assert bad.status_code == 404
    ids = {ok.headers["x-request-id"], bad.headers["x-request-id"]}

    def logged() -> list[dict[str, object]]:
        return [line for line in _access_lines(gateway) if line["request_id"] in ids]

    assert wait_until(lambda: len(logged()) == 2, timeout=5), gateway.stderr()[-2000:]
    by_status = {line["status"]: line for line in logged()}
    good, refused = by_status[200], by_status[404]
    assert (good["app"], good["user"], good["model"]) == (app.app_id, user_id,
                                                          "openai/gpt-4o-mini")
    assert isinstance(good["ttfb_ms"], float)
    assert isinstance(good["cost_usd"], float)
    assert good["cost_usd"] > 0
    assert refused["code"] == "model_not_found"
    assert app.secret_key not in gateway.stderr()


def test_metrics_and_health(gateway: Gateway, app: AppKeys, user_id: str,
                            http: httpx.Client) -> None:
    assert http.post("/v1/chat/completions", json=chat_body("hi", chunks=2),
                     headers=secret_headers(app, user_id)).status_code == 200
    assert http.post("/v1/chat/completions", content=b"{",
                     headers=secret_headers(app, user_id)).status_code == 400
    metrics = http.get("/metrics").text
    for name in ("wattfare_requests_total", "wattfare_ttfb_seconds_bucket",
                 "wattfare_spend_usd_total", "wattfare_open_streams",
                 'wattfare_errors_total{code="invalid_request"}',
                 'wattfare_stream_ends_total{reason="ok"}'):
        assert name in metrics, name
    health = http.get("/healthz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "store": "ok"}
