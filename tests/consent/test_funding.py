"""Connecting OpenRouter as a person's funding source: the PKCE attempt, the callback's
checks, the sealed key, disconnect and reconnect (in-process; the browser suite and
tests/e2e run the same flow against the simulated upstream's real pages)."""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import orjson
import pytest

from gateway.funding.vault import new_kek

from .helpers import PUBLIC, Env, csrf_of, sign_up, start, start_consent_with_proof

AUTH_URL = "https://openrouter.example/auth"
KEK = new_kek("k1")


class OpenRouterAuth:
    """OpenRouter's PKCE side as its docs describe it: a code is issued for a challenge,
    and ``POST /api/v1/auth/keys`` gives its key only for the matching verifier, once."""

    def __init__(self) -> None:
        self.codes: dict[str, tuple[str, str]] = {}  # code -> (challenge, key)
        self.exchanges: list[dict[str, object]] = []
        self.headers: list[httpx.Headers] = []

    def approve(self, location: str) -> tuple[str, str]:
        """The person approves at /auth: the callback URL with ``?code=`` and the key."""
        query = parse_qs(urlsplit(location).query)
        assert query["code_challenge_method"] == ["S256"]
        code, key = secrets.token_urlsafe(16), "sk-or-v1-" + secrets.token_hex(32)
        self.codes[code] = (query["code_challenge"][0], key)
        return f"{query['callback_url'][0]}?code={code}", key

    def handler(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/auth/keys"
        self.headers.append(request.headers)
        doc = orjson.loads(request.content)
        self.exchanges.append(doc)
        issued = self.codes.get(doc.get("code"))
        if issued is None:
            return httpx.Response(400, json={"error": {"code": 400, "message": "Invalid code"}})
        challenge, key = issued
        verifier = doc.get("code_verifier") or ""
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
        if digest.rstrip(b"=").decode() != challenge:
            return httpx.Response(
                403, json={"error": {"code": 403, "message": "Invalid code_verifier"}}
            )
        del self.codes[doc["code"]]
        return httpx.Response(200, json={"key": key, "user_id": "user_2yOPcMpKoQ"})


@pytest.fixture
def orauth() -> OpenRouterAuth:
    return OpenRouterAuth()


def _funded_env(tmp_path: Path, orauth: OpenRouterAuth, modes: list[str]) -> Iterator[Env]:
    funding: dict[str, object] = {"modes": modes, "openrouter_auth_url": AUTH_URL}
    for env in start(tmp_path, funding=funding, environ={"WATTFARE_FUNDING_KEK": KEK}):
        state = env.gateway.state
        assert state is not None
        state.upstreams.client = httpx.AsyncClient(
            transport=httpx.MockTransport(orauth.handler),
            headers={"Authorization": "Bearer sk-operator"},
        )
        yield env


@pytest.fixture
def user_env(tmp_path: Path, orauth: OpenRouterAuth) -> Iterator[Env]:
    yield from _funded_env(tmp_path, orauth, ["user"])


@pytest.fixture
def both_env(tmp_path: Path, orauth: OpenRouterAuth) -> Iterator[Env]:
    yield from _funded_env(tmp_path, orauth, ["operator", "user"])


def begin(env: Env, *, next_url: str = "/dashboard") -> str:
    page = env.client.get("/dashboard")
    response = env.client.post(
        "/funding/openrouter", data={"csrf": csrf_of(page.text), "next": next_url},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith(AUTH_URL + "?")
    return location


def back(env: Env, callback: str) -> Any:
    assert callback.startswith(PUBLIC + "/funding/openrouter/callback/")
    return env.client.get(callback[len(PUBLIC):], follow_redirects=False)


def test_connects_and_stores_the_key_only_sealed(user_env: Env, orauth: OpenRouterAuth) -> None:
    sign_up(user_env.client)
    location = begin(user_env)
    query = parse_qs(urlsplit(location).query)
    assert len(query["code_challenge"][0]) == 43
    assert query["callback_url"][0].startswith(PUBLIC + "/funding/openrouter/callback/")
    callback, key = orauth.approve(location)
    done = back(user_env, callback)
    assert done.status_code == 303
    assert done.headers["location"] == "/dashboard?notice=funding_connected"
    # The exchange: S256, the verifier, and no operator key on it.
    assert orauth.exchanges[-1]["code_challenge_method"] == "S256"
    assert "authorization" not in orauth.headers[-1]
    page = user_env.client.get("/dashboard").text
    assert "your own OpenRouter account" in page and "user_2yOPcMpKoQ" in page
    assert key not in page
    rows = user_env.sql("SELECT kek_id, wrapped_key, ciphertext FROM funding_sources")
    assert len(rows) == 1 and rows[0][0] == "k1"
    wal = Path(user_env.db + "-wal")
    raw = Path(user_env.db).read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    assert key.encode() not in raw and key[9:].encode() not in raw


def test_every_attempt_has_a_fresh_challenge_and_state(user_env: Env) -> None:
    sign_up(user_env.client)
    first, second = parse_qs(urlsplit(begin(user_env)).query), parse_qs(
        urlsplit(begin(user_env)).query
    )
    assert first["code_challenge"] != second["code_challenge"]
    assert first["callback_url"] != second["callback_url"]


def test_a_tampered_state_is_refused(user_env: Env, orauth: OpenRouterAuth) -> None:
    sign_up(user_env.client)
    callback, _ = orauth.approve(begin(user_env))
    path, _, query = callback.partition("?")
    tampered = path[:-4] + ("AAAA" if not path.endswith("AAAA") else "BBBB") + "?" + query
    refused = back(user_env, tampered)
    assert refused.status_code == 400 and "not one this browser started" in refused.text
    assert orauth.exchanges == []  # the code was never even tried
    assert user_env.sql("SELECT COUNT(*) FROM funding_sources") == [(0,)]
    # The genuine callback still works afterwards.
    assert back(user_env, callback).status_code == 303


def test_a_stolen_callback_url_is_useless_in_another_browser(
    user_env: Env, orauth: OpenRouterAuth
) -> None:
    sign_up(user_env.client)
    callback, _ = orauth.approve(begin(user_env))
    owner = dict(user_env.client.cookies)
    user_env.client.cookies.clear()
    # Signed out: nothing happens.
    assert back(user_env, callback).status_code == 401
    # Signed in as someone else: refused, and the owner's attempt is not used up.
    sign_up(user_env.client, email="mallory@example.com")
    assert back(user_env, callback).status_code == 400
    user_env.client.cookies.clear()
    for name, value in owner.items():
        user_env.client.cookies.set(name, value)
    assert orauth.exchanges == []
    assert user_env.sql("SELECT COUNT(*) FROM funding_sources") == [(0,)]
    assert back(user_env, callback).status_code == 303  # the owner's is intact


def test_a_code_issued_for_another_challenge_is_refused(
    user_env: Env, orauth: OpenRouterAuth
) -> None:
    """A code someone obtained with their own challenge, slipped into this browser's
    callback, fails the exchange: the gateway's verifier does not match it."""
    sign_up(user_env.client)
    mine = begin(user_env)
    foreign = mine.replace("code_challenge=", "code_challenge=X", 1)
    foreign_callback, _ = orauth.approve(foreign)
    foreign_code = foreign_callback.partition("?code=")[2]
    own_callback = parse_qs(urlsplit(mine).query)["callback_url"][0]
    refused = back(user_env, f"{own_callback}?code={foreign_code}")
    assert refused.status_code == 502 and "did not accept" in refused.text
    assert orauth.exchanges[-1]["code_verifier"]  # tried with the real verifier, refused
    assert user_env.sql("SELECT COUNT(*) FROM funding_sources") == [(0,)]
    # Used up: the same callback is not tried twice.
    assert back(user_env, f"{own_callback}?code={foreign_code}").status_code == 400


def test_denied_at_openrouter(user_env: Env) -> None:
    sign_up(user_env.client)
    callback = parse_qs(urlsplit(begin(user_env)).query)["callback_url"][0]
    refused = back(user_env, callback)
    assert refused.status_code == 400 and "cancelled or denied" in refused.text


def test_start_needs_the_pages_csrf_token(user_env: Env) -> None:
    sign_up(user_env.client)
    response = user_env.client.post(
        "/funding/openrouter", data={"csrf": "forged"}, follow_redirects=False
    )
    assert response.status_code == 403
    assert user_env.sql("SELECT COUNT(*) FROM funding_attempts") == [(0,)]


def test_disconnect_and_reconnect(user_env: Env, orauth: OpenRouterAuth) -> None:
    sign_up(user_env.client)
    back(user_env, orauth.approve(begin(user_env))[0])
    first_id = user_env.sql("SELECT id FROM funding_sources")[0][0]
    page = user_env.client.get("/dashboard")
    gone = user_env.client.post(
        "/funding/disconnect", data={"csrf": csrf_of(page.text)}, follow_redirects=False
    )
    assert gone.headers["location"] == "/dashboard?notice=funding_disconnected"
    assert user_env.sql("SELECT COUNT(*) FROM funding_sources") == [(0,)]
    assert "No funding source" in user_env.client.get("/dashboard").text
    # OpenRouter deletes a key only for a management key, which the gateway has not: the
    # person is told the key stays valid there, and where to delete it. Nothing was asked
    # of OpenRouter (the mock answers only the code exchange, and counts it).
    notice = user_env.client.get(gone.headers["location"]).text
    assert "stays valid at OpenRouter until you delete it there" in notice
    assert '<a href="https://openrouter.ai/settings/keys"' in notice
    assert len(orauth.exchanges) == 1
    back(user_env, orauth.approve(begin(user_env))[0])
    rows = user_env.sql("SELECT id FROM funding_sources")
    assert len(rows) == 1 and rows[0][0] != first_id


def test_the_csp_lets_the_connect_form_lead_to_openrouter(user_env: Env) -> None:
    sign_up(user_env.client)
    csp = user_env.client.get("/dashboard").headers["content-security-policy"]
    assert "form-action 'self' https://openrouter.example;" in csp


def test_operator_only_gateways_offer_no_connect(env: Env) -> None:
    sign_up(env.client)
    page = env.client.get("/dashboard")
    assert "Connect OpenRouter" not in page.text
    assert "funded by <strong>this gateway's operator" in page.text
    refused = env.client.post(
        "/funding/openrouter", data={"csrf": csrf_of(page.text)}, follow_redirects=False
    )
    assert refused.status_code == 404


def test_both_modes_offer_connect_beside_the_operator(both_env: Env) -> None:
    sign_up(both_env.client)
    page = both_env.client.get("/dashboard").text
    assert "funded by <strong>this gateway's operator" in page and "Connect OpenRouter" in page


def test_consent_popup_asks_to_connect_first_in_user_mode(
    user_env: Env, orauth: OpenRouterAuth
) -> None:
    sign_up(user_env.client)
    path, proof = start_consent_with_proof(user_env)
    page = user_env.client.get(path)
    assert "paid from <strong>your own OpenRouter account</strong>" in page.text
    assert 'value="approve" class="primary" disabled' in page.text
    refused = user_env.client.post(
        path, data={"csrf": csrf_of(page.text), "decision": "approve", "cap": "3",
                    "proof": proof},
    )
    assert refused.status_code == 409
    response = user_env.client.post(
        "/funding/openrouter", data={"csrf": csrf_of(page.text), "next": path},
        follow_redirects=False,
    )
    done = back(user_env, orauth.approve(response.headers["location"])[0])
    assert done.headers["location"] == path
    page = user_env.client.get(path)
    assert "disabled" not in page.text and "your own OpenRouter account" not in page.text
    approved = user_env.client.post(
        path, data={"csrf": csrf_of(page.text), "decision": "approve", "cap": "3",
                    "proof": proof},
    )
    assert 'data-state="approved"' in approved.text
