"""The operator's commands against a running gateway: a disabled app is refused at once
and its open streams are cut; the usage report adds up to what was charged."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from .harness import (
    BackgroundStream,
    FakeUpstream,
    Gateway,
    assert_consistent,
    chat_body,
    cli,
    query,
    secret_headers,
)

pytestmark = pytest.mark.e2e

CHAT = "/v1/chat/completions"


def test_a_disabled_app_is_refused_at_once_and_its_streams_are_cut(
    gateway: Gateway, fake: FakeUpstream
) -> None:
    app = gateway.create_app("disabled-later")
    headers = secret_headers(app, "user-1")
    token = httpx.post(gateway.url + "/v1/sessions", headers=headers,
                       json={"user_id": "user-2"}, timeout=10).json()["token"]
    session = {"Authorization": f"Bearer {token}"}
    ok = httpx.post(gateway.url + CHAT, headers=session, json=chat_body("hi", stream=False),
                    timeout=10)
    assert ok.status_code == 200, ok.text  # the session token is now in the auth cache
    stream = BackgroundStream(gateway.url + CHAT, headers=headers,
                              body=chat_body("hi", chunks=80, gap_ms=300))
    try:
        assert stream.wait_for_content(2, timeout=10)
        done = cli("apps", "disable", app.name, config=gateway.config_path)
        disabled_at = time.monotonic()
        assert done.returncode == 0, done.stderr
        for credential in (headers, session):
            refused = httpx.post(gateway.url + CHAT, headers=credential,
                                 json=chat_body("hi", stream=False), timeout=10)
            assert refused.status_code == 401, refused.text
        connection = httpx.get(gateway.url + "/v1/connection", headers=headers, timeout=10)
        assert connection.status_code == 401
        assert "disabled" in connection.json()["error"]["message"]
    finally:
        stream.join(timeout=30)
    error_at, error = next((at, e) for at, e in stream.events if b'"error"' in e)
    assert b'"code":"connection_revoked"' in error
    assert error_at - disabled_at < 0.25 + 0.3 + 0.5
    assert stream.events[-1][1] == b"data: [DONE]"
    assert_consistent(gateway.db)

    assert cli("apps", "enable", app.app_id, config=gateway.config_path).returncode == 0
    again = httpx.post(gateway.url + CHAT, headers=headers, json=chat_body("hi", stream=False),
                       timeout=10)
    assert again.status_code == 200, again.text


def test_the_usage_report_is_what_was_charged(gateway: Gateway) -> None:
    app = gateway.create_app("reported")
    for user in ("ann", "bob", "ann"):
        done = httpx.post(gateway.url + CHAT, headers=secret_headers(app, user),
                          json=chat_body("hello there"), timeout=10)
        assert done.status_code == 200
    assert_consistent(gateway.db)
    report = cli("usage", "--app", app.name, "--by", "user", "--format", "json",
                 config=gateway.config_path)
    assert report.returncode == 0, report.stderr
    doc = json.loads(report.stdout)
    charged = dict(query(gateway.db, "SELECT user_id, SUM(cost_nano) FROM ledger "
                         "WHERE app_id = ? GROUP BY user_id", (app.app_id,)))
    assert {r["user"]: r["cost_nano"] for r in doc["rows"]} == charged
    assert doc["totals"]["cost_nano"] == sum(charged.values()) > 0
    assert doc["totals"]["requests"] == 3
