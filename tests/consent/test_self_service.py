"""A person's self-service on the hosted pages: their own budget, the revoke
confirmation, password change, sign-out everywhere, account deletion, usage CSV."""

from __future__ import annotations

import csv
import io
import re

import pytest

from gateway.consent import export
from gateway.live import LiveStreams

from .helpers import PASSWORD, Env, csrf_of, sign_up
from .test_dashboard import connect, ledger_row

NEW_PASSWORD = "a brand new passphrase"


def sign_in(env: Env, email: str = "ada@example.com", password: str = PASSWORD) -> str:
    """Sign in afresh (a new session); its cookie value."""
    env.client.cookies.clear()
    page = env.client.get("/signin")
    response = env.client.post(
        "/signin", data={"csrf": csrf_of(page.text), "email": email, "password": password},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return str(env.client.cookies["wattfare_session"])


def use(env: Env, cookie: str) -> None:
    env.client.cookies.clear()
    env.client.cookies.set("wattfare_session", cookie)


def signed_in(env: Env, cookie: str) -> bool:
    use(env, cookie)
    return env.client.get("/dashboard", follow_redirects=False).status_code == 200


def post(env: Env, path: str, page: str = "/dashboard", **fields: str) -> object:
    csrf = csrf_of(env.client.get(page).text)
    return env.client.post(path, data={"csrf": csrf, **fields}, follow_redirects=False)


@pytest.mark.parametrize(
    ("typed", "nano", "notice"),
    [
        pytest.param("35", 35_000_000_000, "budget", id="raise"),
        pytest.param("$1,000.50", 1_000_500_000_000, "budget", id="dollar-sign-and-comma"),
        pytest.param("0.5", 500_000_000, "budget_below", id="below-this-months-spend"),
        pytest.param("0", 0, "budget_below", id="zero"),
    ],
)
def test_change_own_budget(env: Env, typed: str, nano: int, notice: str) -> None:
    sign_up(env.client)
    connect(env)
    ledger_row(env, user="u1", cost=1_000_000_000)
    env.sql("INSERT INTO account_spend (account_id, period, settled_nano, held_nano) "
            "SELECT id, strftime('%Y-%m', 'now'), 1000000000, 0 FROM accounts")
    response = post(env, "/dashboard/budget", budget=typed)
    assert response.status_code == 303  # type: ignore[attr-defined]
    assert response.headers["location"] == f"/dashboard?notice={notice}"  # type: ignore[attr-defined]
    assert env.sql("SELECT budget_nano FROM accounts") == [(nano,)]
    api = env.client.get("/v1/connection", headers={"Authorization": f"Bearer {env.token()}"})
    remaining = api.json()["remaining_usd"]
    assert remaining == (0.0 if notice == "budget_below" else 4.0)  # else the cap binds
    page = env.client.get(response.headers["location"]).text  # type: ignore[attr-defined]
    assert "Budget updated." in page


@pytest.mark.parametrize("typed", ["-1", "nan", "1000001", "", "ten"])
def test_budget_out_of_range_is_refused(env: Env, typed: str) -> None:
    sign_up(env.client)
    response = post(env, "/dashboard/budget", budget=typed)
    assert response.status_code == 400  # type: ignore[attr-defined]
    assert "Enter a monthly budget" in response.text  # type: ignore[attr-defined]
    assert env.sql("SELECT budget_nano FROM accounts") == [(20_000_000_000,)]


@pytest.mark.parametrize(
    ("path", "fields"),
    [
        pytest.param("/dashboard/budget", {"budget": "99"}, id="budget"),
        pytest.param("/account/password", {"password": PASSWORD, "new_password": NEW_PASSWORD},
                     id="password"),
        pytest.param("/account/signout-everywhere", {}, id="signout-everywhere"),
        pytest.param("/account/delete", {"password": PASSWORD}, id="delete"),
    ],
)
def test_every_new_form_needs_its_csrf_token(env: Env, path: str, fields: dict[str, str]) -> None:
    sign_up(env.client)
    response = env.client.post(path, data={"csrf": "forged", **fields})
    assert response.status_code == 403
    assert "did not come from this page" in response.text
    cross_site = env.client.post(
        path, data={"csrf": csrf_of(env.client.get("/account").text), **fields},
        headers={"Origin": "http://evil.example"},
    )
    assert cross_site.status_code == 403
    assert env.sql("SELECT budget_nano, email FROM accounts") == [
        (20_000_000_000, "ada@example.com")]
    assert env.client.get("/dashboard", follow_redirects=False).status_code == 200


def test_revoke_asks_first(env: Env) -> None:
    sign_up(env.client)
    connect(env)
    dashboard = env.client.get("/dashboard").text
    assert 'action="/dashboard/revoke"' not in dashboard  # no one-click revoke form
    link = f"/dashboard/revoke?app_id={env.live.app.id}&amp;user_id=u1"
    assert link in dashboard
    confirm = env.client.get(link.replace("&amp;", "&"))
    assert confirm.status_code == 200
    assert "Revoke Shop?" in confirm.text and "stops now" in confirm.text
    assert "<script" not in confirm.text
    assert "frame-ancestors 'none'" in confirm.headers["content-security-policy"]
    assert env.sql("SELECT status FROM connections") == [("connected",)]  # GET changes nothing
    response = env.client.post(
        "/dashboard/revoke",
        data={"csrf": csrf_of(confirm.text), "app_id": env.live.app.id, "user_id": "u1"},
        follow_redirects=False,
    )
    assert response.headers["location"] == "/dashboard?notice=revoked"
    assert env.sql("SELECT status FROM connections") == [("revoked",)]
    gone = env.client.get(link.replace("&amp;", "&"))
    assert gone.status_code == 404  # nothing left to revoke


def test_revoke_confirmation_of_another_accounts_connection_is_404(env: Env) -> None:
    sign_up(env.client, email="ada@example.com")
    connect(env)
    env.client.cookies.clear()
    sign_up(env.client, email="eve@example.com")
    page = env.client.get(f"/dashboard/revoke?app_id={env.live.app.id}&user_id=u1")
    assert page.status_code == 404 and "Shop" not in page.text


def test_change_password_signs_out_the_other_sessions(env: Env) -> None:
    sign_up(env.client)
    elsewhere = sign_in(env)
    here = sign_in(env)
    response = post(env, "/account/password", "/account", password=PASSWORD,
                    new_password=NEW_PASSWORD)
    assert response.status_code == 303  # type: ignore[attr-defined]
    assert response.headers["location"] == "/account?notice=password"  # type: ignore[attr-defined]
    fresh = str(env.client.cookies["wattfare_session"])
    assert fresh != here  # this browser got a new session
    assert "Password changed." in env.client.get("/account?notice=password").text
    assert signed_in(env, fresh)
    assert not signed_in(env, here)
    assert not signed_in(env, elsewhere)
    sign_in(env, password=NEW_PASSWORD)
    env.client.cookies.clear()
    page = env.client.get("/signin")
    old = env.client.post("/signin", data={"csrf": csrf_of(page.text),
                                           "email": "ada@example.com", "password": PASSWORD})
    assert old.status_code == 401


@pytest.mark.parametrize(
    ("current", "new", "status", "says"),
    [
        pytest.param("wrong password", NEW_PASSWORD, 401, "not your current password",
                     id="wrong-current"),
        pytest.param(PASSWORD, "short", 400, "at least 8", id="too-short"),
    ],
)
def test_change_password_refusals(env: Env, current: str, new: str, status: int,
                                  says: str) -> None:
    sign_up(env.client)
    hashed = env.sql("SELECT password_hash FROM accounts")
    response = post(env, "/account/password", "/account", password=current, new_password=new)
    assert response.status_code == status  # type: ignore[attr-defined]
    assert says in response.text.lower()  # type: ignore[attr-defined]
    assert env.sql("SELECT password_hash FROM accounts") == hashed
    assert env.client.get("/dashboard", follow_redirects=False).status_code == 200


def test_current_password_attempts_are_limited(env: Env) -> None:
    sign_up(env.client)
    limit = env.gateway.settings.consent.signin_attempts_per_email
    for _ in range(limit):
        wrong = post(env, "/account/delete", "/account", password="guess")
        assert wrong.status_code == 401  # type: ignore[attr-defined]
    blocked = post(env, "/account/delete", "/account", password=PASSWORD)
    assert blocked.status_code == 429  # type: ignore[attr-defined]
    assert env.sql("SELECT email FROM accounts") == [("ada@example.com",)]


def test_sign_out_everywhere(env: Env) -> None:
    sign_up(env.client)
    elsewhere = sign_in(env)
    here = sign_in(env)
    response = post(env, "/account/signout-everywhere", "/account")
    assert response.status_code == 200  # type: ignore[attr-defined]
    assert "Signed out everywhere" in response.text  # type: ignore[attr-defined]
    assert "3 browser sessions" in response.text  # type: ignore[attr-defined]
    assert not signed_in(env, here) and not signed_in(env, elsewhere)
    assert env.sql("SELECT COUNT(*) FROM web_sessions") == [(0,)]


def test_delete_account(env: Env) -> None:
    sign_up(env.client)
    connect(env, user="u1")
    connect(env, user="u2")
    ledger_row(env, user="u1", cost=1_250_000_000)
    state = env.gateway.state
    assert state is not None and isinstance(state.live, LiveStreams)
    flags = [state.live.open((env.live.app.id, u)) for u in ("u1", "u2")]
    wrong = post(env, "/account/delete", "/account", password="not it")
    assert wrong.status_code == 401  # type: ignore[attr-defined]
    assert env.sql("SELECT status FROM connections") == [("connected",), ("connected",)]

    done = post(env, "/account/delete", "/account", password=PASSWORD)

    assert done.status_code == 200  # type: ignore[attr-defined]
    assert "Account deleted" in done.text  # type: ignore[attr-defined]
    assert "2 connected apps lost access" in done.text  # type: ignore[attr-defined]
    assert all(f.revoked for f in flags)  # open streams on this gateway are cut now
    assert env.sql("SELECT status FROM connections") == [("revoked",), ("revoked",)]
    assert env.sql("SELECT COUNT(*) FROM events WHERE kind = 'revoked'") == [(2,)]
    (email,) = env.sql("SELECT email FROM accounts")[0]
    assert "@" not in email
    assert env.sql("SELECT cost_nano FROM ledger") == [(1_250_000_000,)]  # history kept
    assert env.client.get("/dashboard", follow_redirects=False).status_code == 303
    for token in ("u1", "u2"):
        api = env.client.get("/v1/connection",
                             headers={"Authorization": f"Bearer {env.token(token)}"})
        assert api.json()["status"] == "revoked"
    sign_up(env.client)  # the address can make a new account


def test_usage_csv(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(export, "PAGE", 2)  # pages through the rows
    sign_up(env.client)
    connect(env)
    for cost in (1_250_000_000, 1, 333_333_333):
        ledger_row(env, user="u1", cost=cost)
    env.sql("UPDATE ledger SET model = '=HYPERLINK(1)' WHERE cost_nano = 1")
    env.sql("UPDATE ledger SET period = '2026-01' WHERE cost_nano = 333333333")
    env.sql("UPDATE ledger SET funded_by = 'account:' || account_id WHERE cost_nano = 1")
    env.sql("UPDATE ledger SET funded_by = 'account:acct_other' WHERE cost_nano = 333333333")
    response = env.client.get("/dashboard/usage.csv")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"].startswith(
        'attachment; filename="wattfare-usage-all-to-')
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert [r["cost_usd"] for r in rows] == ["1.250000000", "0.000000001", "0.333333333"]
    assert rows[0]["app"] == "Shop" and rows[0]["user_id"] == "u1"
    assert (rows[0]["prompt_tokens"], rows[0]["completion_tokens"], rows[0]["total_tokens"]) \
        == ("11", "22", "33")
    assert rows[1]["model"] == "'=HYPERLINK(1)"  # no formula runs in a spreadsheet
    # Who paid each request: the operator, the person's own OpenRouter account, or (a
    # connection that changed hands mid-request) someone else's.
    assert [r["paid_by"] for r in rows] == ["operator", "own_openrouter", "other_account"]
    assert rows[0]["time_utc"].endswith("Z")
    january = env.client.get("/dashboard/usage.csv?month=2026-01")
    assert [r["cost_usd"] for r in csv.DictReader(io.StringIO(january.text))] == [
        "0.333333333"]
    assert env.client.get("/dashboard/usage.csv?month=2026-13").status_code == 400
    # Another person's download has none of these rows.
    env.client.cookies.clear()
    sign_up(env.client, email="eve@example.com")
    theirs = env.client.get("/dashboard/usage.csv").text
    assert theirs.strip().count("\n") == 0  # the header only
    env.client.cookies.clear()
    signed_out = env.client.get("/dashboard/usage.csv", follow_redirects=False)
    assert signed_out.status_code == 303


def test_dashboard_shows_who_paid_each_request(env: Env) -> None:
    sign_up(env.client)
    connect(env)
    ledger_row(env, user="u1", cost=2)
    ledger_row(env, user="u1", cost=1)
    env.sql("UPDATE ledger SET funded_by = 'account:' || account_id WHERE cost_nano = 1")
    page = env.client.get("/dashboard").text
    assert '<th scope="col">Paid by</th>' in page
    paid = re.findall(r'data-paid-by="([a-z_]+)">([^<]+)</td>', page)
    # Newest first: the one the person's own OpenRouter account paid, then the operator's.
    assert paid == [("own_openrouter", "Your OpenRouter account"),
                    ("operator", "The operator")]


def test_dashboard_explains_tokens_and_links_account_pages(env: Env) -> None:
    sign_up(env.client)
    connect(env)
    ledger_row(env, user="u1", cost=1_250_000_000)
    page = env.client.get("/dashboard").text
    assert "prompt + completion" in page and "11 + 22" in page
    assert 'title="11 tokens sent to the model + 22 tokens it wrote back"' in page
    assert 'href="/account"' in page and 'href="/dashboard/usage.csv' in page
    # The chart has a money axis and a date axis.
    assert [f"{label}</text>" in page for label in ("$0", "$0.50", "$1", "$1.50")] == [True] * 4
    assert page.count("<text") == 4 + 5  # four amounts, five dates
    assert "$1.25" in page
    account = env.client.get("/account")
    assert account.status_code == 200 and "<script" not in account.text
    assert "Delete account" in account.text and "ada@example.com" in account.text
    assert env.client.get("/account?x", follow_redirects=False).status_code == 200
    env.client.cookies.clear()
    assert env.client.get("/account", follow_redirects=False).headers["location"] == \
        "/signin?next=/account"
