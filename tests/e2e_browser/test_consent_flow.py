"""The consent layer in a real browser: a sample app on another origin connects an AI
budget through the popup, streams through the gateway, and is revoked on the dashboard."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable

import pytest
from playwright.sync_api import BrowserContext, Page, expect

from .harness import Stack

pytestmark = pytest.mark.browser

PASSWORD = "a long passphrase"


def new_email() -> str:
    return f"person-{uuid.uuid4().hex[:8]}@example.com"


def wait_closed(page: Page, *, seconds: float = 5.0) -> bool:
    for _ in range(int(seconds * 10)):
        if page.is_closed():
            return True
        time.sleep(0.1)
    return page.is_closed()


def sign_up(page: Page, stack: Stack, email: str) -> None:
    """Create the account, then sign in with it (sign-up alone signs nobody in)."""
    page.goto(f"{stack.gateway}/signup")
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(re.escape(stack.gateway) + r"/signin\?"))
    sign_in(page, email)
    expect(page).to_have_url(f"{stack.gateway}/dashboard")


def sign_in(page: Page, email: str) -> None:
    """Fill in the sign-in form the page shows."""
    page.fill("#email", email)
    page.fill("#password", PASSWORD)
    page.get_by_role("button", name="Sign in").click()


def open_consent(page: Page, stack: Stack, user: str) -> Page:
    """The sample app, as ``user``, opens the consent popup; the popup, once the gateway's
    page has the proof from the SDK that opened it."""
    page.goto(f"{stack.app}/?user={user}")
    expect(page.locator("#status")).to_have_attribute("data-status", "not_connected")
    with page.expect_popup() as opened:
        page.get_by_role("button", name="Connect AI budget").click()
    popup = opened.value
    popup.wait_for_url(f"{stack.gateway}/connect/**")
    return popup


def test_connect_stream_and_revoke(
    stack: Stack, context: BrowserContext, shot: Callable[..., None]
) -> None:
    user = "alice-" + uuid.uuid4().hex[:6]
    page = context.new_page()
    page.goto(f"{stack.app}/?user={user}")
    expect(page.locator("#status")).to_have_attribute("data-status", "not_connected")
    expect(page.locator("#status")).to_have_text("Not connected")
    expect(page.get_by_role("button", name="Disconnect")).to_be_hidden()  # nothing to undo
    shot(page, "app-not-connected")

    with page.expect_popup() as opened:
        page.get_by_role("button", name="Connect AI budget").click()
    popup = opened.value
    popup.set_viewport_size({"width": 480, "height": 760})
    expect(popup).to_have_url(re.compile(re.escape(stack.gateway) + r"/connect/[\w-]+$"))
    expect(popup.get_by_role("heading", level=1)).to_contain_text("Acme Writer")
    shot(popup, "consent-signed-out")

    expect(popup.locator(".app-account")).to_have_text(user)
    popup.get_by_role("link", name="Create account").click()
    email = new_email()
    popup.fill("#email", email)
    popup.fill("#password", PASSWORD)
    shot(popup, "signup")
    popup.get_by_role("button", name="Create account").click()
    expect(popup.locator(".notice")).to_contain_text("Sign in with the email and password")
    sign_in(popup, email)

    # Back on the consent page, signed in: the page has the SDK's proof, so the form
    # shows; the app asks for $5, the most it may get, and the person lowers it.
    expect(popup.locator("#bound")).to_be_visible()
    expect(popup.locator("#unbound")).to_be_hidden()
    expect(popup.locator("#cap")).to_have_value("5.00")
    expect(popup.locator(".ceiling")).to_have_text("$5.00")
    expect(popup.locator(".budget-left strong")).to_have_text("$20.00")
    popup.fill("#cap", "2.50")
    shot(popup, "consent-popup", docs=True)
    popup.get_by_role("button", name="Approve").click()

    # The popup answered the app and was closed by the SDK.
    expect(page.locator("#status")).to_have_attribute("data-status", "connected")
    expect(page.locator("#cap")).to_have_text("$2.50")
    expect(page.get_by_role("button", name="Disconnect")).to_be_visible()
    expect(page.get_by_role("button", name="Connect AI budget")).to_be_hidden()
    assert wait_closed(popup)
    rows = stack.sql(
        "SELECT c.cap_nano, c.status, a.budget_nano FROM connections c "
        "JOIN accounts a ON a.id = c.account_id WHERE c.app_id = ? AND c.user_id = ?",
        stack.acme.app_id, user,
    )
    assert rows == [(2_500_000_000, "connected", 20_000_000_000)]

    # Stream a completion from the page, with its session token, through the gateway.
    page.get_by_role("button", name="Write").click()
    expect(page.locator("#activity")).to_have_text("Done.")
    expect(page.locator("#output")).not_to_be_empty()
    expect(page.locator("#cost")).to_contain_text("Cost of this answer: $")
    expect(page.locator("#error")).to_be_empty()
    # The spend shown is the cost shown, in the same form (not "$0.00" beside it).
    cost_text = page.locator("#cost").inner_text().rpartition(" ")[2]
    assert cost_text != "$0.00"
    expect(page.locator("#spent")).to_have_text(cost_text)
    shot(page, "app-connected-streamed")
    charged = stack.sql(
        "SELECT cost_nano, account_id IS NOT NULL FROM ledger WHERE app_id = ? AND user_id = ?",
        stack.acme.app_id, user,
    )
    assert len(charged) == 1
    cost, on_account = charged[0]
    assert isinstance(cost, int) and cost > 0 and on_account == 1

    # The dashboard shows the app, its spend and the request; revoke, once confirmed.
    dash = context.new_page()
    dash.goto(f"{stack.gateway}/dashboard")
    card = dash.locator("section.app", has_text="Acme Writer")
    expect(card.locator(".badge.connected")).to_be_visible()
    expect(card.locator("tbody tr")).to_have_count(1)
    expect(card.locator("tbody tr")).to_contain_text("openai/gpt-4o-mini")
    expect(card.locator("svg rect")).to_have_count(1)
    expect(card.locator("td.num span").first).to_have_attribute("title", re.compile("tokens sent"))
    shot(dash, "dashboard-first-request", full_page=True)
    card.get_by_role("link", name="Revoke Acme Writer").click()
    expect(dash.get_by_role("heading", level=1)).to_have_text("Revoke Acme Writer?")
    dash.get_by_role("button", name="Revoke Acme Writer").click()
    expect(dash.locator(".notice")).to_contain_text("Revoked")
    expect(card.locator(".badge.revoked")).to_be_visible()
    shot(dash, "dashboard-revoked", full_page=True)

    # The app sees it: its status poll, and its next request.
    expect(page.locator("#status")).to_have_attribute("data-status", "revoked", timeout=10_000)
    expect(page.get_by_role("button", name="Disconnect")).to_be_hidden()
    expect(page.get_by_role("button", name="Connect AI budget")).to_be_visible()
    page.get_by_role("button", name="Write").click()
    expect(page.locator("#error")).to_have_attribute("data-code", "connection_revoked")
    expect(page.locator("#error")).to_contain_text("no longer has access")
    expect(page.locator("#activity")).to_be_empty()  # not left "writing"
    shot(page, "app-revoked")
