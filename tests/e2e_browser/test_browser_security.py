"""The consent layer's browser-facing defences, in a real browser: one-time and expiring
consent links, registered origins only, forged answers ignored, no framing, no cross-site
form posts, and a sign-in limit."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from .harness import SIGNIN_LIMIT, Stack
from .test_consent_flow import PASSWORD, new_email, open_consent, sign_up

pytestmark = pytest.mark.browser


def consent_hash(url: str) -> bytes:
    return hashlib.sha256(url.rsplit("/", 1)[1].encode()).digest()


def consent_row(stack: Stack, url: str) -> tuple[object, ...]:
    rows = stack.sql("SELECT used_at, outcome FROM consents WHERE id_hash = ?", consent_hash(url))
    assert len(rows) == 1
    return rows[0]


def post_from(page: Page, action: str, fields: dict[str, str]) -> None:
    """Submit a form to ``action`` from whatever origin ``page`` is on (a CSRF attempt)."""
    page.evaluate(
        """([action, fields]) => {
            const form = document.createElement("form");
            form.method = "POST";
            form.action = action;
            for (const [name, value] of Object.entries(fields)) {
                const input = document.createElement("input");
                input.type = "hidden"; input.name = name; input.value = value;
                form.appendChild(input);
            }
            document.body.appendChild(form);
            form.submit();
        }""",
        [action, fields],
    )


def test_consent_link_works_once(
    stack: Stack, context: BrowserContext, shot: Callable[..., None]
) -> None:
    page = context.new_page()
    sign_up(page, stack, new_email())
    popup = open_consent(page, stack, "once-" + uuid.uuid4().hex[:6])
    url = popup.url
    popup.get_by_role("button", name="Approve").click()
    expect(page.locator("#status")).to_have_attribute("data-status", "connected")
    again = context.new_page()
    response = again.goto(url)
    assert response is not None and response.status == 410
    expect(again.get_by_role("heading", level=1)).to_have_text("This link was already used")
    shot(again, "consent-used")


def test_a_forwarded_consent_link_connects_nothing(
    stack: Stack, browser_context_factory: Callable[[], BrowserContext],
    shot: Callable[..., None],
) -> None:
    # Two people, two browsers: the sender uses the app; the victim has a budget.
    sender_browser, victim_browser = browser_context_factory(), browser_context_factory()
    sender = "sender-" + uuid.uuid4().hex[:6]
    popup = open_consent(sender_browser.new_page(), stack, sender)
    expect(popup.locator("#bound")).to_be_visible()  # her own window: the proof arrived
    link = popup.url

    victim = victim_browser.new_page()
    sign_up(victim, stack, new_email())
    victim.goto(link)
    expect(victim.locator("#unbound")).to_be_visible()
    expect(victim.locator("#unbound")).to_contain_text("forwarded")
    expect(victim.locator("#bound")).to_be_hidden()
    expect(victim.locator(".app-account")).to_have_text(sender)
    shot(victim, "consent-forwarded", docs=True)

    # Opened as a popup from a page on another origin: no proof comes, the same answer.
    opener = victim_browser.new_page()
    opener.goto(f"{stack.evil}/forge")
    opener.evaluate(
        """(link) => { const b = document.createElement("button"); b.id = "go";
            b.textContent = "go"; b.onclick = () => window.open(link, "x", "popup");
            document.body.appendChild(b); }""",
        link,
    )
    with opener.expect_popup() as opened:
        opener.click("#go")
    expect(opened.value.locator("#unbound")).to_be_visible()
    expect(opened.value.locator("#bound")).to_be_hidden()

    # The hidden form forced open and sent without the proof: refused, nothing used.
    victim.evaluate("() => { document.getElementById('bound').hidden = false; }")
    victim.get_by_role("button", name="Approve").click()
    expect(victim.get_by_role("heading", level=1)).to_have_text("Nothing was connected")
    shot(victim, "consent-forwarded-refused")
    assert stack.sql("SELECT COUNT(*) FROM connections WHERE user_id = ?", sender) == [(0,)]
    assert consent_row(stack, link) == (None, None)


def test_expired_consent_link(
    stack: Stack, context: BrowserContext, shot: Callable[..., None]
) -> None:
    # Opened directly: a clear page.
    page = context.new_page()
    url = stack.start_consent("late-" + uuid.uuid4().hex[:6])
    stack.sql("UPDATE consents SET expires_at = ? WHERE id_hash = ?", int(time.time()) - 1,
              consent_hash(url))
    response = page.goto(url)
    assert response is not None and response.status == 410
    expect(page.get_by_role("heading", level=1)).to_have_text("This link has expired")
    shot(page, "consent-expired")

    # Opened by the SDK: connect() rejects with "expired".
    app = context.new_page()
    app.goto(f"{stack.app}/?user=late-{uuid.uuid4().hex[:6]}")
    expect(app.locator("#status")).to_have_attribute("data-status", "not_connected")
    with app.expect_popup() as opened:
        app.get_by_role("button", name="Connect AI budget").click()
    popup = opened.value
    popup.wait_for_url(f"{stack.gateway}/connect/**")
    stack.sql("UPDATE consents SET expires_at = ? WHERE id_hash = ?", int(time.time()) - 1,
              consent_hash(popup.url))
    # The reloaded page tells the opener, and the SDK closes it.
    popup.evaluate("() => location.reload()")
    expect(app.locator("#error")).to_have_attribute("data-code", "expired")


def test_unregistered_origin_is_refused(
    stack: Stack, context: BrowserContext, shot: Callable[..., None]
) -> None:
    # The sample app served from an origin its app did not register (another app did).
    page = context.new_page()
    page.goto(f"{stack.evil}/?user=elsewhere")
    page.get_by_role("button", name="Connect AI budget").click()
    expect(page.locator("#error")).to_have_attribute("data-code", "origin_not_allowed")
    shot(page, "app-unregistered-origin")
    assert stack.sql("SELECT COUNT(*) FROM consents WHERE user_id = 'elsewhere'") == [(0,)]

    # An origin no app registered: the preflight is refused, and so is the request.
    nowhere = "http://127.0.0.1:9"
    preflight = httpx.options(
        f"{stack.gateway}/v1/connect",
        headers={"Origin": nowhere, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization"},
    )
    assert preflight.status_code == 403
    assert "access-control-allow-origin" not in preflight.headers
    refused = httpx.post(
        f"{stack.gateway}/v1/connect",
        headers={"Authorization": f"Bearer {stack.token('elsewhere')}", "Origin": nowhere},
    )
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "origin_not_allowed"


def test_forged_answer_from_another_origin_is_ignored(
    stack: Stack, browser: Browser, shot: Callable[..., None]
) -> None:
    # The sample page's own CSP allows no frames; an app's page may well allow them, so
    # the policy is lifted here to show that the SDK itself ignores the forgery.
    context = browser.new_context(viewport={"width": 1100, "height": 860}, bypass_csp=True)
    context.set_default_timeout(15_000)
    try:
        forged_answer_is_ignored(stack, context, shot)
    finally:
        context.close()


def forged_answer_is_ignored(
    stack: Stack, context: BrowserContext, shot: Callable[..., None]
) -> None:
    page = context.new_page()
    page.goto(f"{stack.app}/?user=forged-{uuid.uuid4().hex[:6]}")
    expect(page.locator("#status")).to_have_attribute("data-status", "not_connected")
    with page.expect_popup() as opened:
        page.get_by_role("button", name="Connect AI budget").click()
    popup = opened.value
    popup.wait_for_url(f"{stack.gateway}/connect/**")
    consent = popup.url.rsplit("/", 1)[1]
    # A frame on another origin, and the page itself, post a perfect-looking answer.
    page.evaluate(
        """(src) => new Promise((resolve) => {
            const frame = document.createElement("iframe");
            frame.src = src; frame.onload = resolve; document.body.appendChild(frame);
        })""",
        f"{stack.evil}/forge?consent={consent}",
    )
    expect(page.frame_locator("iframe").locator("body")).to_have_attribute("data-sent", "yes")
    page.evaluate(
        """(consent) => window.postMessage({wattfare: "connect", consent, status: "connected",
            connection: {status: "connected", monthly_cap_usd: 1000000}}, "*")""",
        consent,
    )
    page.wait_for_timeout(1_000)
    expect(page.locator("#status")).to_have_attribute("data-status", "not_connected")
    expect(page.locator("#activity")).to_have_text("Waiting for your approval…")
    shot(page, "app-forged-message-ignored")
    popup.close()
    expect(page.locator("#error")).to_have_attribute("data-code", "closed")


def test_consent_page_cannot_be_framed(
    stack: Stack, context: BrowserContext, shot: Callable[..., None]
) -> None:
    page = context.new_page()
    url = stack.start_consent("framed-" + uuid.uuid4().hex[:6])
    direct = httpx.get(url)
    assert direct.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in direct.headers["content-security-policy"]
    page.goto(f"{stack.app}/?user=framer")
    page.evaluate(
        """(src) => { const f = document.createElement("iframe"); f.id = "framed";
            f.src = src; f.width = 480; f.height = 300; document.body.prepend(f); }""",
        url,
    )
    page.wait_for_timeout(1_000)
    child = page.frame_locator("#framed")
    expect(child.locator("text=would like a monthly AI budget")).to_have_count(0)
    frames = [f for f in page.frames if f is not page.main_frame]
    assert frames and all(not f.url.startswith(stack.gateway) for f in frames)
    shot(page, "consent-in-iframe-blocked")
    assert consent_row(stack, url) == (None, None)


def test_cross_site_posts_are_refused(
    stack: Stack, context: BrowserContext, shot: Callable[..., None]
) -> None:
    page = context.new_page()
    sign_up(page, stack, new_email())
    user = "csrf-" + uuid.uuid4().hex[:6]

    # Approve, posted from another origin while the person is signed in.
    url = stack.start_consent(user)
    page.goto(f"{stack.evil}/forge")
    post_from(page, url, {"decision": "approve", "cap": "1000"})
    expect(page.get_by_role("alert").first).to_contain_text("came from another site")
    shot(page, "csrf-approve-refused")
    assert consent_row(stack, url) == (None, None)
    assert stack.sql("SELECT COUNT(*) FROM connections WHERE user_id = ?", user) == [(0,)]

    # Connect for real (through the app's popup), then try to revoke from another origin.
    popup = open_consent(page, stack, user)
    popup.get_by_role("button", name="Approve").click()
    expect(page.locator("#status")).to_have_attribute("data-status", "connected")
    page.goto(f"{stack.evil}/forge")
    post_from(page, f"{stack.gateway}/dashboard/revoke",
              {"app_id": stack.acme.app_id, "user_id": user})
    expect(page.get_by_role("alert")).to_contain_text("did not come from this page")
    shot(page, "csrf-revoke-refused", full_page=True)
    assert stack.sql(
        "SELECT status FROM connections WHERE user_id = ?", user
    ) == [("connected",)]


def test_signin_brute_force_runs_into_the_limit(
    stack: Stack, context: BrowserContext, browser_context_factory: Callable[[], BrowserContext],
    shot: Callable[..., None],
) -> None:
    email = new_email()
    sign_up(context.new_page(), stack, email)
    attacker = browser_context_factory().new_page()
    for _ in range(SIGNIN_LIMIT):
        attacker.goto(f"{stack.gateway}/signin")
        attacker.fill("#email", email)
        attacker.fill("#password", "guess-" + uuid.uuid4().hex[:6])
        attacker.get_by_role("button", name="Sign in").click()
        expect(attacker.get_by_role("alert")).to_have_text("Wrong email or password.")
    shot(attacker, "signin-wrong-password")
    # Even the right password is refused now.
    attacker.goto(f"{stack.gateway}/signin")
    attacker.fill("#email", email)
    attacker.fill("#password", PASSWORD)
    attacker.get_by_role("button", name="Sign in").click()
    expect(attacker.get_by_role("alert")).to_contain_text("Too many attempts")
    shot(attacker, "signin-rate-limited")
    assert attacker.url.startswith(f"{stack.gateway}/signin")
