"""The sample app (code people copy) when things go wrong: a spent cap, a network
failure, a disconnect. It never stays "writing", says what happened in words, and
offers only the action that fits the connection."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable

import pytest
from playwright.sync_api import BrowserContext, Route, expect

from .harness import Stack
from .test_consent_flow import new_email, sign_up

pytestmark = pytest.mark.browser


def test_sample_app_errors_and_disconnect(
    stack: Stack, context: BrowserContext, shot: Callable[..., None]
) -> None:
    user = "fay-" + uuid.uuid4().hex[:6]
    sign_up(context.new_page(), stack, new_email())
    page = context.new_page()
    page.goto(f"{stack.app}/?user={user}")
    expect(page.locator("#status")).to_have_attribute("data-status", "not_connected")
    with page.expect_popup() as opened:
        page.get_by_role("button", name="Connect AI budget").click()
    opened.value.get_by_role("button", name="Approve").click()
    expect(page.locator("#status")).to_have_attribute("data-status", "connected")

    # The cap is all but spent: the request is refused, or cut once the cap is reached.
    period = time.strftime("%Y-%m", time.gmtime())
    stack.sql(
        "INSERT INTO spend (app_id, user_id, period, settled_nano) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (app_id, user_id, period) DO UPDATE SET settled_nano = excluded.settled_nano",
        stack.acme.app_id, user, period, 5_000_000_000 - 3_000,
    )
    page.get_by_role("button", name="Write").click()
    expect(page.locator("#error")).to_have_attribute("data-code", "spend_cap_reached")
    expect(page.locator("#error")).to_contain_text("budget for Acme Writer is used up")
    expect(page.locator("#activity")).to_be_empty()
    expect(page.get_by_role("button", name="Write")).to_be_enabled()
    expect(page.locator("#left")).to_have_text(re.compile(r"^\$0\.0000\d+$"))
    shot(page, "app-cap-reached")

    # The gateway cannot be reached: a sentence, not a stack trace or a code.
    def fail(route: Route) -> None:
        route.abort("connectionrefused")

    page.route("**/v1/chat/completions", fail)
    page.get_by_role("button", name="Write").click()
    expect(page.locator("#error")).to_have_attribute("data-code", "network_error")
    expect(page.locator("#error")).to_have_text(
        "Could not reach Wattfare. Check your connection and try again.")
    expect(page.locator("#activity")).to_be_empty()
    page.unroute("**/v1/chat/completions", fail)

    page.get_by_role("button", name="Disconnect").click()
    expect(page.locator("#status")).to_have_attribute("data-status", "revoked")
    expect(page.get_by_role("button", name="Disconnect")).to_be_hidden()
    expect(page.get_by_role("button", name="Connect AI budget")).to_be_visible()
