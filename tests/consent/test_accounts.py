"""Sign-up, sign-in, sign-out: cookies, CSRF, throttling, closed sign-up, page headers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from gateway.consent.limits import Backoff

from .helpers import PASSWORD, PUBLIC, Env, csrf_of, sign_in, sign_up, start


def test_signin_after_signup_sets_a_hardened_session_cookie(env: Env) -> None:
    page = env.client.get("/signup")
    response = env.client.post(
        "/signup", data={"csrf": csrf_of(page.text), "email": " Ada@Example.com ",
                         "password": PASSWORD},
        follow_redirects=False,
    )
    assert response.status_code == 303
    assert response.headers["location"] == "/signin?next=%2Fdashboard&signed_up=1"
    assert not any(c.startswith("wattfare_session=")
                   for c in response.headers.get_list("set-cookie"))
    rows = env.sql("SELECT email, password_hash, budget_nano FROM accounts")
    assert rows[0][0] == "ada@example.com"
    assert rows[0][1].startswith("$argon2id$")
    assert rows[0][2] == 20_000_000_000
    page = env.client.get(response.headers["location"])
    assert "Sign in with the email and password you just chose" in page.text
    signed_in = env.client.post(
        "/signin", data={"csrf": csrf_of(page.text), "email": "ada@example.com",
                         "password": PASSWORD},
        follow_redirects=False,
    )
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/dashboard"
    cookie = next(c for c in signed_in.headers.get_list("set-cookie")
                  if c.startswith("wattfare_session="))
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    assert env.client.get("/dashboard").status_code == 200


def _signup(client: TestClient, email: str, password: str) -> Any:
    page = client.get("/signup")
    return client.post(
        "/signup", data={"csrf": csrf_of(page.text), "email": email, "password": password},
        follow_redirects=False,
    )


def test_signup_answers_alike_for_taken_and_free_emails(env: Env) -> None:
    sign_up(env.client, "taken@example.com")
    env.client.cookies.clear()
    taken = _signup(env.client, "taken@example.com", "another fine passphrase")
    env.client.cookies.clear()
    free = _signup(env.client, "free@example.com", "another fine passphrase")
    assert taken.status_code == free.status_code == 303
    assert taken.headers["location"] == free.headers["location"]
    assert taken.content == free.content

    def cookie_names(response: Any) -> list[str]:
        return sorted(c.partition("=")[0] for c in response.headers.get_list("set-cookie"))

    assert cookie_names(taken) == cookie_names(free)
    # The taken account is untouched: its own password still works, the other does not.
    assert env.sql("SELECT COUNT(*) FROM accounts") == [(2,)]
    env.client.cookies.clear()
    sign_in(env.client, "taken@example.com", PASSWORD)


@pytest.mark.parametrize(
    "password",
    [
        pytest.param("aaaaaaaa", id="repeats"),
        pytest.param("password1", id="common"),
        pytest.param("qwertyuiop", id="keyboard-walk"),
        pytest.param("iloveyou2", id="common-with-digit"),
        pytest.param("grace@example.com", id="own-email"),
    ],
)
def test_signup_refuses_easy_passwords(env: Env, password: str) -> None:
    response = _signup(env.client, "grace@example.com", password)
    assert response.status_code == 400
    assert "Choose a harder password" in response.text
    assert env.sql("SELECT COUNT(*) FROM accounts") == [(0,)]


def from_address(env: Env, ip: str) -> TestClient:
    """Another browser at another address, on the running app's own event loop (the
    store's connections belong to that loop)."""
    client = TestClient(env.gateway, base_url=PUBLIC, client=(ip, 40000))
    client.portal = env.client.portal
    return client


def test_a_strangers_guesses_do_not_lock_out_the_owner(env: Env) -> None:
    sign_up(env.client)
    env.client.cookies.clear()
    limit = env.gateway.settings.consent.signin_attempts_per_email
    attacker = from_address(env, "203.0.113.66")
    statuses = []
    for _ in range(limit + 3):
        page = attacker.get("/signin")
        statuses.append(attacker.post(
            "/signin", data={"csrf": csrf_of(page.text), "email": "ada@example.com",
                             "password": "wrong password"},
        ).status_code)
    # The stranger is slowed down: a wait after the free attempts...
    assert statuses[:limit] == [401] * limit and 429 in statuses[limit:]
    # ... and the owner, from another address, signs in at the first try.
    owner = from_address(env, "198.51.100.7")
    sign_in(owner)
    assert owner.get("/dashboard").status_code == 200


def test_the_wait_doubles_and_a_success_clears_it() -> None:
    now = [1000.0]
    backoff = Backoff(free=2, max_wait_s=60, first_wait_s=1, clock=lambda: now[0])
    for _ in range(2):
        assert backoff.wait_s("k") == 0
        backoff.fail("k")
    assert backoff.wait_s("k") == 1.0  # two free failures, then a second's wait
    now[0] += 1
    assert backoff.wait_s("k") == 0
    backoff.fail("k")
    assert backoff.wait_s("k") == 2.0
    now[0] += 2
    backoff.fail("k")
    assert backoff.wait_s("k") == 4.0
    for _ in range(10):
        backoff.fail("k")
    assert backoff.wait_s("k") == 60  # bounded
    assert backoff.wait_s("other") == 0  # per key
    backoff.reset("k")
    assert backoff.wait_s("k") == 0
    backoff.fail("k")
    now[0] += 121  # forgotten after twice the longest wait
    assert backoff._entry("k") is None


def test_cookie_is_secure_and_host_prefixed_behind_https(env: Env) -> None:
    state = env.gateway.router.state.consent
    state.secure = True
    page = env.client.get("/signup")
    cookie = page.headers["set-cookie"]
    assert cookie.startswith("__Host-wattfare_pre=") and "Secure" in cookie


@pytest.mark.parametrize(
    "path", [pytest.param("/signin", id="signin"), pytest.param("/signup", id="signup"),
             pytest.param("/connect/nope", id="consent")],
)
def test_pages_send_security_headers(env: Env, path: str) -> None:
    response = env.client.get(path)
    csp = response.headers["content-security-policy"]
    assert "script-src 'nonce-" in csp and "frame-ancestors 'none'" in csp
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"
    # Pages of the popup keep their opener.
    assert "cross-origin-opener-policy" not in response.headers


def test_dashboard_isolates_its_browsing_context(env: Env) -> None:
    sign_up(env.client)
    response = env.client.get("/dashboard")
    assert response.headers["cross-origin-opener-policy"] == "same-origin"


@pytest.mark.parametrize(
    ("headers", "with_token"),
    [
        pytest.param({}, False, id="no-token"),
        pytest.param({"Origin": "http://evil.localhost"}, True, id="foreign-origin"),
        pytest.param({"Sec-Fetch-Site": "same-site"}, True, id="same-site-page"),
    ],
)
def test_forms_refuse_cross_site_posts(env: Env, headers: dict[str, str], with_token: bool) -> None:
    page = env.client.get("/signup")
    data = {"email": "mallory@example.com", "password": PASSWORD}
    if with_token:
        data["csrf"] = csrf_of(page.text)
    response = env.client.post("/signup", data=data, headers=headers, follow_redirects=False)
    assert response.status_code == 403
    assert env.sql("SELECT COUNT(*) FROM accounts") == [(0,)]


def test_own_form_with_null_origin_is_accepted(env: Env) -> None:
    # Referrer-Policy: no-referrer makes browsers send "Origin: null" on the pages' forms.
    page = env.client.get("/signup")
    response = env.client.post(
        "/signup", data={"csrf": csrf_of(page.text), "email": "n@example.com",
                         "password": PASSWORD},
        headers={"Origin": "null", "Sec-Fetch-Site": "same-origin"}, follow_redirects=False,
    )
    assert response.status_code == 303


def test_signin_wrong_password_then_limit(env: Env) -> None:
    sign_up(env.client)
    env.client.cookies.clear()
    limit = env.gateway.settings.consent.signin_attempts_per_email
    for _ in range(limit):
        page = env.client.get("/signin")
        response = env.client.post(
            "/signin", data={"csrf": csrf_of(page.text), "email": "ada@example.com",
                             "password": "wrong password"},
        )
        assert response.status_code == 401
        assert "Wrong email or password." in response.text
    page = env.client.get("/signin")
    response = env.client.post(
        "/signin", data={"csrf": csrf_of(page.text), "email": "ada@example.com",
                         "password": PASSWORD},
    )
    assert response.status_code == 429
    assert "Too many attempts" in response.text


def test_signin_unknown_email_looks_like_a_wrong_password(env: Env) -> None:
    page = env.client.get("/signin")
    response = env.client.post(
        "/signin", data={"csrf": csrf_of(page.text), "email": "nobody@example.com",
                         "password": PASSWORD},
    )
    assert response.status_code == 401 and "Wrong email or password." in response.text


def test_signin_redirects_only_to_local_paths(env: Env) -> None:
    sign_up(env.client)
    env.client.cookies.clear()
    page = env.client.get("/signin")
    response = env.client.post(
        "/signin?next=//evil.example/x",
        data={"csrf": csrf_of(page.text), "email": "ada@example.com", "password": PASSWORD},
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"] == "/dashboard"


def test_signout_ends_the_session_for_good(env: Env) -> None:
    sign_up(env.client)
    cookie = env.client.cookies.get("wattfare_session")
    page = env.client.get("/dashboard")
    response = env.client.post("/signout", data={"csrf": csrf_of(page.text)},
                               follow_redirects=False)
    assert response.status_code == 303
    assert env.sql("SELECT COUNT(*) FROM web_sessions") == [(0,)]
    assert cookie is not None
    env.client.cookies.set("wattfare_session", cookie)  # a copy kept by someone
    response = env.client.get("/dashboard", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/signin")


def test_forged_session_cookie_is_ignored(env: Env) -> None:
    env.client.cookies.set("wattfare_session", "abc.def")
    response = env.client.get("/dashboard", follow_redirects=False)
    assert response.status_code == 303


def test_signup_closed(tmp_path: Path) -> None:
    for env in start(tmp_path, signup="closed"):
        page = env.client.get("/signup")
        assert page.status_code == 403 and "does not take new accounts" in page.text
        response = env.client.post("/signup", data={"email": "a@b.co", "password": PASSWORD})
        assert response.status_code == 403
        assert env.sql("SELECT COUNT(*) FROM accounts") == [(0,)]
