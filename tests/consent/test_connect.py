"""``POST /v1/connect`` and the consent page ``/connect/<id>``."""

from __future__ import annotations

import re
import time

import pytest

from .helpers import (
    APP_ORIGIN,
    OTHER_ORIGIN,
    Env,
    csrf_of,
    sign_up,
    start_consent,
    start_consent_with_proof,
)


def test_start_returns_a_one_time_url(env: Env) -> None:
    before = int(time.time())
    response = env.client.post(
        "/v1/connect", headers={"Authorization": f"Bearer {env.token()}", "Origin": APP_ORIGIN}
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"url", "expires_at", "proof"}
    assert body["proof"] not in body["url"]
    assert re.fullmatch(r"http://testserver/connect/[\w-]{43}", body["url"])
    assert before + 600 <= body["expires_at"] <= int(time.time()) + 600
    rows = env.sql("SELECT app_id, user_id, cap_nano, origin FROM consents")
    assert rows == [(env.live.app.id, "u1", 5_000_000_000, APP_ORIGIN)]


@pytest.mark.parametrize(
    ("credential", "origin", "status", "code"),
    [
        pytest.param("secret", APP_ORIGIN, 401, "invalid_api_key", id="secret-key"),
        pytest.param("publishable", APP_ORIGIN, 401, "invalid_api_key", id="publishable-key"),
        pytest.param("session", None, 403, "origin_not_allowed", id="no-origin"),
        pytest.param("session", OTHER_ORIGIN, 403, "origin_not_allowed", id="other-apps-origin"),
        pytest.param("session", "http://nowhere.localhost", 403, "origin_not_allowed",
                     id="unregistered-origin"),
    ],
)
def test_start_refusals(
    env: Env, credential: str, origin: str | None, status: int, code: str
) -> None:
    value = {
        "secret": env.live.keys.secret_key,
        "publishable": env.live.keys.publishable_key,
        "session": env.token(),
    }[credential]
    headers = {"Authorization": f"Bearer {value}"}
    if origin is not None:
        headers["Origin"] = origin
    response = env.client.post("/v1/connect", headers=headers)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    assert env.sql("SELECT COUNT(*) FROM consents") == [(0,)]


def test_signed_out_person_is_asked_to_sign_in(env: Env) -> None:
    path = start_consent(env)
    page = env.client.get(path)
    assert page.status_code == 200
    assert 'data-state="signin"' in page.text and "Shop" in page.text and "$5.00" in page.text
    assert f'href="/signin?next={path}"' in page.text


def test_approve_with_a_lower_cap_posts_to_the_exact_origin(env: Env) -> None:
    path, proof = start_consent_with_proof(env)
    sign_up(env.client)
    page = env.client.get(path)
    assert 'data-state="ask"' in page.text and 'value="5.00"' in page.text
    assert "$20.00" in page.text  # what is left of the budget
    done = env.client.post(path, data={"csrf": csrf_of(page.text), "decision": "approve",
                                       "cap": "2.50", "proof": proof})
    assert done.status_code == 200 and 'data-state="approved"' in done.text
    assert f'var target = "{APP_ORIGIN}";' in done.text
    assert '"*"' not in done.text
    assert '"status": "connected"' in done.text
    nonce = re.search(r"script-src 'nonce-([^']+)'", done.headers["content-security-policy"])
    assert nonce is not None and f'<script nonce="{nonce.group(1)}">' in done.text
    rows = env.sql("SELECT c.cap_nano, c.status, a.email FROM connections c "
                   "JOIN accounts a ON a.id = c.account_id")
    assert rows == [(2_500_000_000, "connected", "ada@example.com")]
    # The app sees it at once.
    connection = env.client.get(
        "/v1/connection", headers={"Authorization": f"Bearer {env.token()}"}
    ).json()
    assert connection["status"] == "connected" and connection["monthly_cap_usd"] == 2.5
    # One use only.
    again = env.client.get(path)
    assert again.status_code == 410 and 'data-state="used"' in again.text


def test_deny_uses_the_link_and_connects_nothing(env: Env) -> None:
    path, proof = start_consent_with_proof(env)
    sign_up(env.client)
    page = env.client.get(path)
    done = env.client.post(path, data={"csrf": csrf_of(page.text), "decision": "deny",
                                       "proof": proof})
    assert 'data-state="denied"' in done.text and '"status": "denied"' in done.text
    assert env.sql("SELECT COUNT(*) FROM connections") == [(0,)]
    assert env.sql("SELECT outcome FROM consents") == [("denied",)]


def test_approve_without_csrf_token_changes_nothing(env: Env) -> None:
    path = start_consent(env)
    sign_up(env.client)
    refused = env.client.post(path, data={"decision": "approve", "cap": "5"})
    assert refused.status_code == 403
    assert env.sql("SELECT used_at FROM consents") == [(None,)]
    assert env.sql("SELECT COUNT(*) FROM connections") == [(0,)]


@pytest.mark.parametrize("cap", ["0", "-1", "abc", "nan", "inf", "99999999"])
def test_bad_caps_are_refused(env: Env, cap: str) -> None:
    path, proof = start_consent_with_proof(env)
    sign_up(env.client)
    page = env.client.get(path)
    response = env.client.post(path, data={"csrf": csrf_of(page.text), "decision": "approve",
                                           "cap": cap, "proof": proof})
    assert response.status_code == 400
    assert env.sql("SELECT used_at FROM consents") == [(None,)]


def test_the_page_names_the_app_account_and_asks_its_opener_for_the_proof(env: Env) -> None:
    path = start_consent(env, user="alice-at-shop")
    signed_out = env.client.get(path)
    assert "alice-at-shop" in signed_out.text
    sign_up(env.client)
    page = env.client.get(path)
    assert 'class="app-account">alice-at-shop<' in page.text
    # The form stays hidden until the opener answers; the proof is nowhere on the page.
    assert '<form id="bound" method="post"' in page.text and "hidden>" in page.text
    assert 'wattfare: "connect-hello"' in page.text
    assert f'var origin = "{APP_ORIGIN}";' in page.text


@pytest.mark.parametrize(
    "proof",
    [
        pytest.param(None, id="none"),
        pytest.param("", id="empty"),
        pytest.param("another-links-proof", id="another-link"),
    ],
)
def test_a_forwarded_link_cannot_connect_anything(env: Env, proof: str | None) -> None:
    path = start_consent(env, user="sender")
    _, other_proof = start_consent_with_proof(env, user="sender")
    sign_up(env.client, "victim@example.com")
    page = env.client.get(path)
    form = {"csrf": csrf_of(page.text), "decision": "approve", "cap": "5"}
    if proof is not None:
        form["proof"] = other_proof if proof == "another-links-proof" else proof
    refused = env.client.post(path, data=form)
    assert refused.status_code == 403
    assert 'data-state="unbound"' in refused.text and "sender" in refused.text
    assert "postMessage" not in refused.text
    assert env.sql("SELECT COUNT(*) FROM connections") == [(0,)]
    assert env.sql("SELECT used_at FROM consents") == [(None,), (None,)]


@pytest.mark.parametrize(
    ("asked", "budget", "entered", "granted", "bound_by"),
    [
        pytest.param(5.0, 20, "50", 5_000_000_000, "asked", id="above-the-ask"),
        pytest.param(50.0, 20, "50", 20_000_000_000, "budget", id="above-the-budget"),
        pytest.param(50.0, 20, "7.25", 7_250_000_000, "budget", id="lowered"),
    ],
)
def test_the_cap_is_clamped_to_the_ask_and_the_budget(
    env: Env, asked: float, budget: int, entered: str, granted: int, bound_by: str
) -> None:
    path, proof = start_consent_with_proof(env, cap=asked)
    sign_up(env.client)
    env.sql("UPDATE accounts SET budget_nano = ?", budget * 1_000_000_000)
    page = env.client.get(path)
    ceiling = min(asked, budget)
    assert f'max="{ceiling:.2f}"' in page.text and f'value="{ceiling:.2f}"' in page.text
    hint = "your monthly budget" if bound_by == "budget" else "what Shop asked for"
    assert f'class="ceiling">${ceiling:,.2f}</strong>: {hint}' in page.text
    done = env.client.post(path, data={"csrf": csrf_of(page.text), "decision": "approve",
                                       "cap": entered, "proof": proof})
    assert done.status_code == 200 and 'data-state="approved"' in done.text
    assert env.sql("SELECT cap_nano FROM connections") == [(granted,)]
    assert ('class="alert warn lowered"' in done.text) == (float(entered) > ceiling)
    assert f'"monthly_cap_usd": {granted / 1e9}' in done.text


def test_expired_and_unknown_links(env: Env) -> None:
    path = start_consent(env)
    env.sql("UPDATE consents SET expires_at = 1")
    expired = env.client.get(path)
    assert expired.status_code == 410 and 'data-state="expired"' in expired.text
    # The opener still hears about it, at its own origin only.
    assert f'var target = "{APP_ORIGIN}";' in expired.text and '"status": "expired"' in expired.text
    unknown = env.client.get("/connect/not-a-real-link")
    assert unknown.status_code == 404 and 'data-state="unknown"' in unknown.text
    assert "postMessage" not in unknown.text


def test_origin_unregistered_after_the_link_was_made(env: Env) -> None:
    path = start_consent(env)
    env.sql("UPDATE apps SET origins = '[]' WHERE id = ?", env.live.app.id)
    page = env.client.get(path)
    assert page.status_code == 403 and 'data-state="origin"' in page.text
    assert "postMessage" not in page.text


def test_test_mode_approves_through_the_same_popup(env: Env) -> None:
    response = env.client.post(
        "/v1/connect", headers={"Authorization": f"Bearer {env.token(app=env.test, cap=3)}",
                                "Origin": APP_ORIGIN},
    )
    path = response.json()["url"].removeprefix("http://testserver")
    page = env.client.get(path)  # nobody signed in: no person is needed
    assert 'data-state="approved"' in page.text and "Test mode" in page.text
    assert f'var target = "{APP_ORIGIN}";' in page.text
    rows = env.sql("SELECT cap_nano, status, account_id FROM connections WHERE app_id = ?",
                   env.test.app.id)
    assert rows == [(3_000_000_000, "connected", None)]
