"""A stream's last events leave only after its charge is committed."""

from __future__ import annotations

import httpx
import pytest

from .harness import AppKeys, Gateway, chat_body, holds_of, iter_events, ledger, secret_headers

pytestmark = pytest.mark.e2e


def test_done_is_seen_only_once_the_charge_is_committed(
    gateway: Gateway, app: AppKeys, user_id: str, http: httpx.Client
) -> None:
    for _ in range(5):
        with http.stream(
            "POST", "/v1/chat/completions", json=chat_body("hi", chunks=3),
            headers=secret_headers(app, user_id),
        ) as response:
            assert response.status_code == 200
            for _, event in iter_events(response):
                if event == b"data: [DONE]":
                    # Read the store before the response has even ended: no wait, no poll.
                    assert holds_of(gateway.db, user_id) == 0
                    break
            else:
                pytest.fail("the stream ended without [DONE]")
    rows = ledger(gateway.db, user_id)
    assert len(rows) == 5
    assert all(row.status == "ok" and row.cost_source == "upstream" for row in rows)
