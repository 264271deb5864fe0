"""A person's self-service in a real browser: the dashboard's budget, chart, token
explanation, revoke confirmation and CSV export; the account page's password change,
sign-out everywhere and account deletion (which cuts an open stream at once)."""

from __future__ import annotations

import csv
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from .harness import Stack
from .test_consent_flow import PASSWORD, new_email, open_consent, sign_up

pytestmark = pytest.mark.browser

NEW_PASSWORD = "another long passphrase"
MODEL = "openai/gpt-4o-mini"


def approve(page: Page, stack: Stack, user: str) -> None:
    """Connect Acme Writer for ``user`` to the signed-in account, through the app's popup
    (a consent link works only in the window the app opened)."""
    popup = open_consent(page, stack, user)
    popup.get_by_role("button", name="Approve").click()
    expect(page.locator("#status")).to_have_attribute("data-status", "connected")


def chat(stack: Stack, user: str, **fake: object) -> httpx.Response:
    return httpx.post(
        f"{stack.gateway}/v1/chat/completions",
        headers={"Authorization": f"Bearer {stack.token(user)}"},
        json={"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}],
              "fake": {"chunks": 8, **fake}},
        timeout=30,
    )


def seed_history(stack: Stack, user: str) -> None:
    """Earlier days' requests, as settled requests leave them (ledger row and totals)."""
    (account_id,) = stack.sql(
        "SELECT account_id FROM connections WHERE app_id = ? AND user_id = ?",
        stack.acme.app_id, user,
    )[0]
    now = int(time.time())
    for days_ago, cost, tokens in ((12, 41_000_000, 900), (9, 18_000_000, 400),
                                   (5, 66_000_000, 1500), (2, 27_000_000, 650)):
        at = now - days_ago * 86_400
        period = time.strftime("%Y-%m", time.gmtime(at))
        stack.sql(
            "INSERT INTO ledger (request_id, app_id, user_id, period, model, prompt_tokens, "
            "completion_tokens, cost_nano, upstream_cost_nano, operator_nano, cost_source, "
            "status, http_status, duration_ms, created_at, account_id) VALUES "
            "(?, ?, ?, ?, ?, ?, ?, ?, ?, 0, 'upstream', 'ok', 200, 900, ?, ?)",
            "req_" + uuid.uuid4().hex, stack.acme.app_id, user, period, MODEL, tokens // 3,
            tokens, cost, cost, at, account_id,
        )
        stack.sql(
            "INSERT INTO spend (app_id, user_id, period, settled_nano) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (app_id, user_id, period) DO UPDATE SET "
            "settled_nano = settled_nano + excluded.settled_nano",
            stack.acme.app_id, user, period, cost,
        )
        stack.sql(
            "INSERT INTO account_spend (account_id, period, settled_nano) VALUES (?, ?, ?) "
            "ON CONFLICT (account_id, period) DO UPDATE SET "
            "settled_nano = settled_nano + excluded.settled_nano",
            account_id, period, cost,
        )


def test_dashboard_budget_chart_revoke_and_csv(
    stack: Stack, context: BrowserContext, shot: Callable[..., None], tmp_path: Path
) -> None:
    user = "dana-" + uuid.uuid4().hex[:6]
    page = context.new_page()
    sign_up(page, stack, new_email())
    approve(page, stack, user)
    seed_history(stack, user)
    for _ in range(2):
        assert chat(stack, user).status_code == 200

    page.goto(f"{stack.gateway}/dashboard")
    card = page.locator("section.app", has_text="Acme Writer")
    chart = card.locator("figure.chart svg")
    # The money axis: round amounts from $0 up past the busiest day ($0.066).
    expect(chart.locator(".grid text")).to_have_text(["$0", "$0.02", "$0.04", "$0.06", "$0.08"])
    expect(chart.locator(".dates text")).to_have_count(5)  # the date axis
    expect(chart.locator("rect")).to_have_count(5)  # four earlier days and today
    expect(card.locator("figcaption")).to_contain_text("the busiest day was")
    expect(card.locator("thead")).to_contain_text("Tokens (prompt + completion)")
    expect(card).to_contain_text("prompt tokens are what the app sent")
    page.set_viewport_size({"width": 800, "height": 600})
    shot(page, "dashboard", docs=True, full_page=True)
    page.set_viewport_size({"width": 1100, "height": 860})

    # The person's own budget: lowered below this month's spend, it admits nothing more.
    page.fill("#budget", "0")
    page.get_by_role("button", name="Save budget").click()
    expect(page.locator(".notice")).to_contain_text("below what your apps spent")
    expect(page.locator(".alert.warn")).to_contain_text("used up")
    refused = chat(stack, user)
    assert refused.status_code == 402 and refused.json()["error"]["code"] == "spend_cap_reached"
    page.fill("#budget", "25")
    page.get_by_role("button", name="Save budget").click()
    expect(page.locator(".notice")).to_have_text("Budget updated.")
    assert stack.sql("SELECT budget_nano FROM accounts a JOIN connections c ON "
                     "c.account_id = a.id WHERE c.user_id = ?", user) == [(25_000_000_000,)]
    assert chat(stack, user).status_code == 200

    # The CSV has every request, with amounts that add up to the ledger's exactly.
    with page.expect_download() as download:
        page.get_by_role("link", name="all usage (CSV)").click()
    saved = tmp_path / "usage.csv"
    download.value.save_as(saved)
    with saved.open(newline="") as f:
        rows = list(csv.DictReader(f))
    ledger = stack.sql("SELECT cost_nano FROM ledger WHERE user_id = ? ORDER BY id", user)
    assert len(rows) == len(ledger) == 7
    assert sum(round(float(r["cost_usd"]) * 1e9) for r in rows) == sum(
        int(str(c)) for (c,) in ledger)
    assert {r["app"] for r in rows} == {"Acme Writer"}

    # Revoke asks first; Cancel changes nothing.
    card.get_by_role("link", name="Revoke Acme Writer").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Revoke Acme Writer?")
    expect(page.locator(".confirm")).to_contain_text("stops now")
    page.set_viewport_size({"width": 640, "height": 480})
    shot(page, "revoke-confirm", docs=True)
    page.set_viewport_size({"width": 1100, "height": 860})
    page.get_by_role("link", name="Cancel").click()
    expect(card.locator(".badge.connected")).to_be_visible()
    card.get_by_role("link", name="Revoke Acme Writer").click()
    page.get_by_role("button", name="Revoke Acme Writer").click()
    expect(page.locator(".notice")).to_contain_text("Revoked")
    expect(card.locator(".badge.revoked")).to_be_visible()
    assert chat(stack, user).json()["error"]["code"] == "connection_revoked"


def sign_in(page: Page, stack: Stack, email: str, password: str) -> None:
    page.goto(f"{stack.gateway}/signin")
    page.fill("#email", email)
    page.fill("#password", password)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{stack.gateway}/dashboard")


def signed_out(page: Page, stack: Stack) -> bool:
    page.goto(f"{stack.gateway}/dashboard")
    return page.url.startswith(f"{stack.gateway}/signin")


def test_account_password_sessions_and_deletion(
    stack: Stack, browser_context_factory: Callable[[], BrowserContext],
    shot: Callable[..., None],
) -> None:
    email = new_email()
    here = browser_context_factory().new_page()
    elsewhere = browser_context_factory().new_page()
    sign_up(here, stack, email)
    sign_in(elsewhere, stack, email, PASSWORD)

    here.goto(f"{stack.gateway}/dashboard")
    here.get_by_role("link", name="Account").click()
    expect(here.get_by_role("heading", level=1)).to_have_text("Your account")
    here.set_viewport_size({"width": 720, "height": 600})
    shot(here, "account", docs=True, full_page=True)
    here.set_viewport_size({"width": 1100, "height": 860})

    # A wrong current password changes nothing; the right one signs the others out.
    here.fill("#current-password", "not my password")
    here.fill("#new-password", NEW_PASSWORD)
    here.get_by_role("button", name="Change password").click()
    expect(here.locator("section", has_text="Change password").locator(".alert")).to_have_text(
        "That is not your current password.")
    here.fill("#current-password", PASSWORD)
    here.fill("#new-password", NEW_PASSWORD)
    here.get_by_role("button", name="Change password").click()
    expect(here.locator(".notice")).to_contain_text("Password changed.")
    assert signed_out(elsewhere, stack)
    assert not signed_out(here, stack)
    sign_in(elsewhere, stack, email, NEW_PASSWORD)

    # Sign out everywhere ends both.
    here.goto(f"{stack.gateway}/account")
    here.get_by_role("button", name="Sign out everywhere").click()
    expect(here.get_by_role("heading", level=1)).to_have_text("Signed out everywhere")
    expect(here.locator("main")).to_contain_text("2 browser sessions")
    assert signed_out(here, stack) and signed_out(elsewhere, stack)

    # Deleting the account cuts a stream that is running on this gateway at once.
    sign_in(here, stack, email, NEW_PASSWORD)
    user = "erin-" + uuid.uuid4().hex[:6]
    approve(here, stack, user)
    received: list[bytes] = []
    started = threading.Event()

    def stream() -> None:
        with httpx.stream(
            "POST", f"{stack.gateway}/v1/chat/completions",
            headers={"Authorization": f"Bearer {stack.token(user)}"},
            json={"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "x"}],
                  "fake": {"chunks": 400, "gap_ms": 50}},
            timeout=30,
        ) as response:
            for part in response.iter_bytes():
                received.append(part)
                started.set()

    reader = threading.Thread(target=stream, daemon=True)
    began = time.monotonic()
    reader.start()
    assert started.wait(10)
    here.goto(f"{stack.gateway}/account")
    here.fill("#delete-password", NEW_PASSWORD)
    here.get_by_role("button", name="Delete my account").click()
    expect(here.get_by_role("heading", level=1)).to_have_text("Account deleted")
    expect(here.locator("main")).to_contain_text("1 connected app lost access")
    shot(here, "account-deleted")
    reader.join(10)
    assert not reader.is_alive()
    body = b"".join(received)
    assert b'"connection_revoked"' in body and body.rstrip().endswith(b"data: [DONE]")
    assert time.monotonic() - began < 15  # 400 chunks 50 ms apart would take 20 s
    assert signed_out(here, stack)
    here.goto(f"{stack.gateway}/signin")
    here.fill("#email", email)
    here.fill("#password", NEW_PASSWORD)
    here.get_by_role("button", name="Sign in").click()
    expect(here.locator(".alert")).to_have_text("Wrong email or password.")
