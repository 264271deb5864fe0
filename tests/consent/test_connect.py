"""``POST /v1/connect`` and the consent page ``/connect/<id>``."""

from __future__ import annotations

import re
import time

import pytest

from .helpers import APP_ORIGIN, OTHER_ORIGIN, Env, csrf_of, sign_up, start_consent


def test_start_returns_a_one_time_url(env: Env) -> None:
    before = int(time.time())
    response = env.client.post(
        "/v1/connect", headers={"Authorization": f"Bearer {env.token()}", "Origin": APP_ORIGIN}
    )
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"url", "expires_at"}
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
    path = start_consent(env)
    sign_up(env.client)
    page = env.client.get(path)
    assert 'data-state="ask"' in page.text and 'value="5.00"' in page.text
    assert "$20.00" in page.text  # what is left of the budget
    done = env.client.post(path, data={"csrf": csrf_of(page.text), "decision": "approve",
                                       "cap": "2.50"})
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
    path = start_consent(env)
    sign_up(env.client)
    page = env.client.get(path)
    done = env.client.post(path, data={"csrf": csrf_of(page.text), "decision": "deny"})
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
    path = start_consent(env)
    sign_up(env.client)
    page = env.client.get(path)
    response = env.client.post(path, data={"csrf": csrf_of(page.text), "decision": "approve",
                                           "cap": cap})
    assert response.status_code == 400
    assert env.sql("SELECT used_at FROM consents") == [(None,)]


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
