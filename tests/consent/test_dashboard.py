"""``/dashboard``: budget, connected apps, spend, cap changes and one-click revoke."""

from __future__ import annotations

import time
import uuid

import pytest

from gateway.live import LiveStreams
from gateway.store.base import period_of

from .helpers import Env, csrf_of, sign_up, start_consent_with_proof


def connect(env: Env, *, user: str = "u1", cap: str = "4") -> None:
    path, proof = start_consent_with_proof(env, user=user)
    page = env.client.get(path)
    done = env.client.post(path, data={"csrf": csrf_of(page.text), "decision": "approve",
                                       "cap": cap, "proof": proof})
    assert 'data-state="approved"' in done.text


def ledger_row(env: Env, *, user: str, cost: int, account: bool = True) -> None:
    account_id = env.sql("SELECT id FROM accounts")[0][0] if account else None
    env.sql(
        "INSERT INTO ledger (request_id, app_id, user_id, period, model, prompt_tokens, "
        "completion_tokens, cost_nano, upstream_cost_nano, operator_nano, cost_source, status, "
        "http_status, duration_ms, created_at, account_id) "
        "VALUES (?, ?, ?, ?, 'openai/gpt-4o-mini', 11, 22, ?, ?, 0, 'upstream', 'ok', 200, 5, "
        "?, ?)",
        "req_" + uuid.uuid4().hex, env.live.app.id, user, period_of(time.time()), cost, cost,
        int(time.time()), account_id,
    )


def test_signed_out_goes_to_sign_in(env: Env) -> None:
    response = env.client.get("/dashboard", follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/signin?next=/dashboard"


def test_empty_dashboard(env: Env) -> None:
    sign_up(env.client)
    page = env.client.get("/dashboard")
    assert "No apps yet" in page.text and "$20.00" in page.text


def test_lists_apps_with_spend_requests_and_chart(env: Env) -> None:
    sign_up(env.client)
    connect(env)
    ledger_row(env, user="u1", cost=1_250_000_000)
    page = env.client.get("/dashboard").text
    assert "Shop" in page and "Connected" in page
    assert "$4.00" in page and "$1.25" in page  # cap, and spent (this request)
    assert "openai/gpt-4o-mini" in page and "11 + 22" in page
    assert page.count("<rect ") == 1 and "<svg" in page
    assert "<script" not in page  # nothing runs on the dashboard


def test_over_budget_state(env: Env) -> None:
    sign_up(env.client)
    env.sql("UPDATE accounts SET budget_nano = 0")
    page = env.client.get("/dashboard").text
    assert "budget for this month is used up" in page


def test_revoke_in_one_click_cuts_streams(env: Env) -> None:
    sign_up(env.client)
    connect(env)
    state = env.gateway.state
    assert state is not None and isinstance(state.live, LiveStreams)
    flag = state.live.open((env.live.app.id, "u1"))
    page = env.client.get("/dashboard")
    response = env.client.post(
        "/dashboard/revoke",
        data={"csrf": csrf_of(page.text), "app_id": env.live.app.id, "user_id": "u1"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/dashboard?notice=revoked"
    assert flag.revoked
    assert env.sql("SELECT status FROM connections") == [("revoked",)]
    assert env.sql("SELECT kind FROM events ORDER BY seq")[-1] == ("revoked",)  # others hear it
    api = env.client.get("/v1/connection", headers={"Authorization": f"Bearer {env.token()}"})
    assert api.json()["status"] == "revoked"
    after = env.client.get("/dashboard?notice=revoked").text
    assert "Revoked." in after and "Revoked</span>" in after


@pytest.mark.parametrize("action", ["revoke", "cap"])
def test_csrf_is_required(env: Env, action: str) -> None:
    sign_up(env.client)
    connect(env)
    response = env.client.post(
        f"/dashboard/{action}",
        data={"app_id": env.live.app.id, "user_id": "u1", "cap": "100", "csrf": "forged"},
    )
    assert response.status_code == 403
    assert env.sql("SELECT status, cap_nano FROM connections") == [("connected", 4_000_000_000)]


def test_cannot_touch_another_accounts_connection(env: Env) -> None:
    sign_up(env.client, email="ada@example.com")
    connect(env, user="u1")
    env.client.cookies.clear()
    sign_up(env.client, email="eve@example.com")
    page = env.client.get("/dashboard")
    response = env.client.post(
        "/dashboard/revoke",
        data={"csrf": csrf_of(page.text), "app_id": env.live.app.id, "user_id": "u1"},
    )
    assert response.status_code == 404
    assert env.sql("SELECT status FROM connections") == [("connected",)]


def test_change_cap(env: Env) -> None:
    sign_up(env.client)
    connect(env)
    page = env.client.get("/dashboard")
    response = env.client.post(
        "/dashboard/cap",
        data={"csrf": csrf_of(page.text), "app_id": env.live.app.id, "user_id": "u1",
              "cap": "7.5"},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert env.sql("SELECT cap_nano FROM connections") == [(7_500_000_000,)]
    bad = env.client.post(
        "/dashboard/cap",
        data={"csrf": csrf_of(page.text), "app_id": env.live.app.id, "user_id": "u1",
              "cap": "nan"},
    )
    assert bad.status_code == 400
