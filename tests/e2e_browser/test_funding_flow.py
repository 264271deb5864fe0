"""People fund their own requests, in a real browser: sign up in the consent popup,
connect OpenRouter there on the simulated upstream's ``/auth`` page, approve the app's
cap, stream; the simulated OpenRouter's ledger shows the person's key paid and the
operator's did not, and the dashboard says so of the request; the key is in no page and
no log; disconnecting stops the app and says the key stays valid at OpenRouter."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
from playwright.sync_api import BrowserContext, Page, expect

from gateway.funding.vault import new_kek

from .harness import Stack, start_stack
from .test_consent_flow import PASSWORD, new_email, sign_in, sign_up, wait_closed

pytestmark = pytest.mark.browser

OPERATOR_KEY = "sk-or-test"


@pytest.fixture(scope="module")
def funded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tmp_path_factory.mktemp("funded-stack"), funding_kek=new_kek("k1"))
    try:
        yield s
    finally:
        s.processes.close()


def upstream_root(stack: Stack) -> str:
    text = stack.config.read_text()
    match = re.search(r'base_url = "(http://127\.0\.0\.1:\d+)/api/v1"', text)
    assert match is not None
    return match.group(1)


def fake_ledger(stack: Stack) -> dict[str, dict[str, object]]:
    doc = httpx.get(f"{upstream_root(stack)}/_fake/ledger", timeout=5).json()
    keys: dict[str, dict[str, object]] = doc["keys"]
    return keys


def test_connect_openrouter_in_the_popup_and_stream_on_the_persons_key(
    funded: Stack, context: BrowserContext, shot: Callable[..., None]
) -> None:
    stack = funded
    pages: list[str] = []
    user = "bob-" + uuid.uuid4().hex[:6]
    page = context.new_page()
    page.goto(f"{stack.app}/?user={user}")
    expect(page.locator("#status")).to_have_attribute("data-status", "not_connected")

    with page.expect_popup() as opened:
        page.get_by_role("button", name="Connect AI budget").click()
    popup = opened.value
    popup.set_viewport_size({"width": 480, "height": 820})
    popup.get_by_role("link", name="Create account").click()
    email = new_email()
    popup.fill("#email", email)
    popup.fill("#password", PASSWORD)
    popup.get_by_role("button", name="Create account").click()
    expect(popup.locator(".notice")).to_contain_text("Sign in with the email and password")
    sign_in(popup, email)

    # Signed in, no funding source yet: the popup asks for one before approving.
    expect(popup.get_by_role("button", name="Approve")).to_be_disabled()
    pages.append(popup.content())
    shot(popup, "consent-needs-funding")
    popup.get_by_role("button", name="Connect OpenRouter").click()

    # The simulated OpenRouter's consent page, on its own origin.
    expect(popup).to_have_url(re.compile(re.escape(upstream_root(stack)) + r"/auth\?"))
    openrouter_id = popup.locator("#account").input_value()
    shot(popup, "openrouter-authorize")
    popup.locator("#approve").click()

    # Back on the consent page, with OpenRouter connected: approve the cap.
    expect(popup).to_have_url(re.compile(re.escape(stack.gateway) + r"/connect/[\w-]+$"))
    expect(popup.get_by_role("button", name="Approve")).to_be_enabled()
    pages.append(popup.content())
    popup.fill("#cap", "3.00")
    popup.get_by_role("button", name="Approve").click()
    expect(page.locator("#status")).to_have_attribute("data-status", "connected")
    assert wait_closed(popup)

    operator_before = fake_ledger(stack).get(OPERATOR_KEY, {}).get("billed_nano_usd", 0)
    page.get_by_role("button", name="Write").click()
    expect(page.locator("#activity")).to_have_text("Done.")
    expect(page.locator("#cost")).to_contain_text("Cost of this answer: $")
    expect(page.locator("#error")).to_be_empty()
    pages.append(page.content())

    # The simulated OpenRouter billed the person's key, and not the operator's.
    ledger = fake_ledger(stack)
    mine = [(k, v) for k, v in ledger.items() if v["user_id"] == openrouter_id]
    assert len(mine) == 1
    key, entry = mine[0]
    assert entry["requests"] == 1 and isinstance(entry["billed_nano_usd"], int)
    assert entry["billed_nano_usd"] > 0
    assert ledger.get(OPERATOR_KEY, {}).get("billed_nano_usd", 0) == operator_before
    rows = stack.sql(
        "SELECT l.funded_by, l.cost_nano, a.id FROM ledger l JOIN accounts a "
        "ON a.id = l.account_id WHERE l.user_id = ?", user,
    )
    assert len(rows) == 1 and rows[0][0] == f"account:{rows[0][2]}"
    assert rows[0][1] == entry["billed_nano_usd"]

    # The dashboard says who pays; disconnecting stops the app at once.
    dash = context.new_page()
    dash.goto(f"{stack.gateway}/dashboard")
    funding = dash.locator("section.funding")
    expect(funding).to_contain_text("your own OpenRouter account")
    # Each request says who paid for it: this one, the person's own OpenRouter account.
    paid = dash.locator("section.app table td.paid-by")
    expect(paid).to_have_count(1)
    expect(paid).to_have_text("Your OpenRouter account")
    expect(paid).to_have_attribute("data-paid-by", "own_openrouter")
    pages.append(dash.content())
    shot(dash, "dashboard-funded", full_page=True)
    dash.get_by_role("button", name="Disconnect OpenRouter").click()
    notice = dash.locator(".notice")
    expect(notice).to_contain_text("OpenRouter disconnected")
    # The gateway cannot delete the key at OpenRouter (that takes a management key):
    # the person is told it stays valid there, and where to delete it.
    expect(notice).to_contain_text("stays valid at OpenRouter until you delete it there")
    expect(notice.get_by_role("link")).to_have_attribute(
        "href", "https://openrouter.ai/settings/keys"
    )
    expect(funding).to_contain_text("No funding source")
    pages.append(dash.content())
    page.get_by_role("button", name="Write").click()
    expect(page.locator("#error")).to_have_attribute("data-code", "funding_unavailable")
    expect(page.locator("#error")).to_contain_text("OpenRouter account cannot pay")

    # The key never reached a page or the gateway's log.
    assert all(key not in html for html in pages)
    assert key not in (stack.workdir / "gateway.log").read_text(errors="replace")


def test_the_authorize_redirect_is_allowed_by_the_pages_csp(
    funded: Stack, context: BrowserContext
) -> None:
    """The dashboard's Connect form posts to the gateway, which redirects to OpenRouter:
    the page's form-action allows exactly that origin (and the browser follows)."""
    page: Page = context.new_page()
    sign_up(page, funded, new_email())
    page.get_by_role("button", name="Connect OpenRouter").click()
    expect(page).to_have_url(re.compile(re.escape(upstream_root(funded)) + r"/auth\?"))
    page.locator("#deny").click()
    expect(page.locator("[role=alert]")).to_contain_text("cancelled or denied")
