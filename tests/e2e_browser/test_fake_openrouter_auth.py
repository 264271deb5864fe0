"""The simulated OpenRouter's "Sign in with OpenRouter" page, in a real Chromium: Authorize
redirects with a code that buys a key billed to that person, Deny with `access_denied`,
and the page's CSP holds (no console errors) through the redirect."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest
from e2e.harness import free_port
from fake_upstream.helpers import Upstream, start_upstream
from playwright.sync_api import BrowserContext, Page, Route, expect

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    yield from start_upstream(tmp_path_factory.mktemp("fake-auth") / "stderr.log")


def _open_auth(context: BrowserContext, fake: Upstream, verifier: str) -> tuple[Page, list[str]]:
    callback = f"http://127.0.0.1:{free_port()}/connect/callback"

    def land(route: Route) -> None:
        route.fulfill(status=200, content_type="text/html", body="<h1>Back at the app</h1>")

    context.route(f"{callback}**", land)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    params = {
        "callback_url": callback,
        "code_challenge": challenge.rstrip(b"=").decode(),
        "code_challenge_method": "S256",
    }
    page.goto(f"{fake.root}/auth?{urlencode(params)}")
    expect(page.get_by_role("heading", level=1)).to_have_text("Authorize application")
    return page, errors


def test_authorize_gives_a_code_for_a_persons_key(context: BrowserContext, fake: Upstream) -> None:
    verifier = secrets.token_urlsafe(32)
    page, errors = _open_auth(context, fake, verifier)
    page.get_by_label("Signed in as").fill("browser-person")
    page.get_by_role("button", name="Authorize").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Back at the app")
    (code,) = parse_qs(urlsplit(page.url).query)["code"]
    exchanged = httpx.post(
        f"{fake.api}/auth/keys",
        json={"code": code, "code_verifier": verifier, "code_challenge_method": "S256"},
        timeout=5,
    ).json()
    assert exchanged["user_id"] == "browser-person"
    ledger = httpx.get(f"{fake.root}/_fake/ledger", timeout=5).json()
    assert ledger["keys"][exchanged["key"]]["user_id"] == "browser-person"
    assert errors == []


def test_deny_returns_access_denied(context: BrowserContext, fake: Upstream) -> None:
    page, errors = _open_auth(context, fake, secrets.token_urlsafe(32))
    page.get_by_role("button", name="Deny").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Back at the app")
    query = parse_qs(urlsplit(page.url).query)
    assert query["error"] == ["access_denied"]
    assert "code" not in query
    assert errors == []
