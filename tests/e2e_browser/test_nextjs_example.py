"""The Next.js example (``examples/nextjs``) in a real browser, against the gateway and
the simulated upstream: its WattfareProvider renders the right state on the server, the
person connects in the popup, a reply streams through ``streamText`` with the user's
model, a revocation on the dashboard turns into the typed "not connected" state, and
the browser SDK's own failures (popup blocked, popup closed, origin not registered)
show as typed, explained states.

The example must have been built (``npm run build`` in ``examples/nextjs``; ``./run
test`` does it).
"""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from e2e.harness import free_port, stop_process, wait_healthy
from playwright.sync_api import BrowserContext, Page, expect

from .harness import Stack, _create_app
from .test_consent_flow import PASSWORD, new_email, wait_closed
from .test_consent_flow import sign_in as sign_in_gateway

pytestmark = pytest.mark.browser

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nextjs"
NEXT_BIN = EXAMPLE / "node_modules" / "next" / "dist" / "bin" / "next"


@dataclass(frozen=True)
class Example:
    url: str  # registered as the app's origin
    elsewhere: str  # the same app, served from an origin no app registered


def _missing(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def _next_start(port: int, *, secret_key: str, gateway: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["node", str(NEXT_BIN), "start", "-p", str(port), "-H", "127.0.0.1"],
            cwd=EXAMPLE, stdout=out, stderr=subprocess.STDOUT,
            env={**os.environ, "WATTFARE_SECRET_KEY": secret_key, "WATTFARE_URL": gateway,
                 "NEXT_TELEMETRY_DISABLED": "1"},
        )
    wait_healthy(f"http://127.0.0.1:{port}/", process, log, "next start")
    return process


@pytest.fixture(scope="module")
def example(stack: Stack) -> Iterator[Example]:
    if not (EXAMPLE / ".next" / "BUILD_ID").exists() or not NEXT_BIN.exists():
        _missing("the Next.js example is not built: npm ci && npm run build in examples/nextjs")
    ports = free_port(), free_port()
    url, elsewhere = (f"http://127.0.0.1:{p}" for p in ports)
    keys = _create_app(stack.config, "Acme Chat", url, log=stack.workdir / "cli.log")
    with ExitStack() as processes:
        for port, name in zip(ports, ("next", "next-elsewhere"), strict=True):
            process = _next_start(port, secret_key=keys.secret_key, gateway=stack.gateway,
                                  log=stack.workdir / f"{name}.log")
            processes.callback(stop_process, process)
        yield Example(url=url, elsewhere=elsewhere)


def sign_in(page: Page, example_url: str, user: str) -> None:
    page.goto(example_url + "/")
    page.fill("#user", user)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("header")).to_contain_text(f"signed in as {user}")


def test_connect_stream_revoke(
    stack: Stack, example: Example, context: BrowserContext, shot: Callable[..., None]
) -> None:
    user = "nextjs-" + uuid.uuid4().hex[:6]
    page = context.new_page()
    sign_in(page, example.url, user)
    # Server-rendered with the real state: no "loading" or guessed state to flash first.
    cookies = {c["name"]: c["value"] for c in context.cookies(example.url)}
    html = httpx.get(example.url + "/", cookies=cookies, timeout=15).text
    assert re.search(r'<dd id="status">not_connected</dd>', html), html[:2000]
    expect(page.locator("#status")).to_have_text("not_connected")
    shot(page, "nextjs-not-connected")

    with page.expect_popup() as opened:
        page.get_by_role("button", name="Connect AI budget").click()
    popup = opened.value
    expect(popup).to_have_url(re.compile(re.escape(stack.gateway) + r"/connect/[\w-]+$"))
    popup.get_by_role("link", name="Create account").click()
    email = new_email()
    popup.fill("#email", email)
    popup.fill("#password", PASSWORD)
    popup.get_by_role("button", name="Create account").click()
    expect(popup.locator(".notice")).to_contain_text("Sign in with the email and password")
    sign_in_gateway(popup, email)
    # The SDK in the Next.js page answered the consent page's handshake: the form shows.
    expect(popup.locator("#bound")).to_be_visible()
    expect(popup.locator("#cap")).to_have_value("5.00")
    popup.get_by_role("button", name="Approve").click()
    expect(page.locator("#status")).to_have_text("connected")
    expect(page.locator("#cap")).to_have_text("$5.00")
    assert wait_closed(popup)

    # One reply, streamed through the chat route's streamText and the user's model.
    page.get_by_role("button", name="Send").click()
    reply = page.locator("#messages li.assistant")
    expect(reply).to_contain_text("tok tok")
    expect(reply.locator(".cost")).to_contain_text("cost $")
    expect(page.locator("#chat-status")).to_have_text("ready")
    shot(page, "nextjs-streamed")
    [(cost,)] = stack.sql(
        "SELECT cost_nano FROM ledger l JOIN apps a ON a.id = l.app_id "
        "WHERE a.name = 'Acme Chat' AND l.user_id = ?", user,
    )
    assert isinstance(cost, int) and cost > 0

    # Revoked on the gateway's dashboard (the person is signed in there from the popup).
    dash = context.new_page()
    dash.goto(f"{stack.gateway}/dashboard")
    dash.locator("section.app", has_text="Acme Chat").get_by_role(
        "link", name="Revoke Acme Chat"
    ).click()
    expect(dash.get_by_role("heading", level=1)).to_have_text("Revoke Acme Chat?")
    dash.get_by_role("button", name="Revoke Acme Chat").click()
    expect(dash.locator(".notice")).to_contain_text("Revoked")
    expect(page.locator("#status")).to_have_text("revoked", timeout=10_000)
    expect(page.get_by_role("button", name="Connect AI budget")).to_be_visible()
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#chat-error")).to_contain_text("connection_revoked")
    shot(page, "nextjs-revoked")


def test_popup_blocked_and_closed_are_typed_states(
    example: Example, context: BrowserContext, shot: Callable[..., None]
) -> None:
    user = "nextjs-popups-" + uuid.uuid4().hex[:6]
    page = context.new_page()
    sign_in(page, example.url, user)
    button = page.get_by_role("button", name="Connect AI budget")
    with page.expect_popup() as opened:
        button.click()
    opened.value.close()
    # Bounded, not timed: on a busy machine the session and consent calls take a while.
    expect(page.locator("#error")).to_have_attribute("data-code", "closed", timeout=20_000)
    expect(page.locator("#error")).to_contain_text("closed before the person answered")
    expect(page.locator("#status")).to_have_text("not_connected")

    # Headless Chromium has no popup blocker; a blocked window.open() returns null, which
    # is what a browser that blocks the window gives the page.
    blocked = context.new_page()
    blocked.add_init_script("window.open = () => null;")
    blocked.goto(example.url + "/")
    blocked.get_by_role("button", name="Connect AI budget").click()
    expect(blocked.locator("#error")).to_have_attribute("data-code", "popup_blocked")
    expect(blocked.locator("#error")).to_contain_text("blocked the consent window")
    expect(blocked.locator("#status")).to_have_text("not_connected")
    shot(blocked, "nextjs-popup-blocked")


def test_unregistered_origin_is_explained(
    example: Example, context: BrowserContext, shot: Callable[..., None]
) -> None:
    page = context.new_page()
    sign_in(page, example.elsewhere, "nextjs-elsewhere")
    expect(page.locator("#error")).to_have_attribute("data-code", "origin_not_allowed")
    expect(page.locator("#error")).to_contain_text(example.elsewhere)
    expect(page.locator("#error")).to_contain_text("not registered")
    shot(page, "nextjs-origin-not-registered")
