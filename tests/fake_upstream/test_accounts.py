"""People's keys from the OAuth PKCE flow, their credits and limits, and the ledger."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from .helpers import KEY, Upstream, billed_nano, chat, data, nano, stream
from .test_generations import mini_cost

pytestmark = pytest.mark.e2e

CALLBACK = "http://127.0.0.1:9/connect/callback?state=abc"


def challenge_of(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def authorize(
    admin: httpx.Client,
    *,
    verifier: str | None,
    account: str,
    decision: str = "approve",
    limit: str = "",
    method: str = "S256",
) -> httpx.Response:
    """Open `/auth`, answer its form; the redirect it gives."""
    params = {"callback_url": CALLBACK}
    if verifier is not None:
        params |= {
            "code_challenge": challenge_of(verifier) if method == "S256" else verifier,
            "code_challenge_method": method,
        }
    page = admin.get("/auth", params=params)
    assert page.status_code == 200
    found = re.search(r'name="request" value="([^"]+)"', page.text)
    assert found is not None
    form = {"request": found.group(1), "account": account, "limit": limit, "decision": decision}
    return admin.post("/auth/decision", data=form)


def code_of(redirect: httpx.Response) -> str:
    assert redirect.status_code == 303
    location = urlsplit(redirect.headers["location"])
    assert f"{location.scheme}://{location.netloc}{location.path}" == CALLBACK.split("?")[0]
    query = parse_qs(location.query)
    assert query["state"] == ["abc"]
    (code,) = query["code"]
    return code


def connect(admin: httpx.Client, account: str, *, limit: str = "") -> str:
    verifier = secrets.token_urlsafe(32)
    code = code_of(authorize(admin, verifier=verifier, account=account, limit=limit))
    exchanged = admin.post(
        "/api/v1/auth/keys",
        json={"code": code, "code_verifier": verifier, "code_challenge_method": "S256"},
    )
    assert exchanged.status_code == 200
    body = exchanged.json()
    assert body["user_id"] == account
    key: str = body["key"]
    assert re.fullmatch(r"sk-or-v1-[0-9a-f]{64}", key)
    return key


def as_key(upstream: Upstream, key: str) -> httpx.Client:
    return httpx.Client(
        base_url=upstream.api, headers={"authorization": f"Bearer {key}"}, timeout=10
    )


def test_auth_page_is_a_real_form_under_a_strict_csp(admin: httpx.Client) -> None:
    page = admin.get("/auth", params={"callback_url": CALLBACK})
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp
    assert "form-action 'self' http://127.0.0.1:9" in csp
    assert "<script" not in page.text
    assert 'id="approve"' in page.text
    assert 'id="deny"' in page.text
    for bad in ("http://example.com/cb", "javascript:alert(1)", "", "ftp://127.0.0.1/x"):
        refused = admin.get("/auth", params={"callback_url": bad})
        assert refused.status_code == 400
    params = {"callback_url": CALLBACK, "code_challenge": "x", "code_challenge_method": "MD5"}
    bad_method = admin.get("/auth", params=params)
    assert bad_method.status_code == 400


def test_pkce_exchange_verifies_the_challenge_once(admin: httpx.Client) -> None:
    verifier = secrets.token_urlsafe(32)
    code = code_of(authorize(admin, verifier=verifier, account="pkce-person"))
    wrong = admin.post(
        "/api/v1/auth/keys",
        json={"code": code, "code_verifier": "not-it", "code_challenge_method": "S256"},
    )
    assert wrong.status_code == 403
    # The code was used up by the failed attempt: the right verifier no longer helps.
    again = admin.post(
        "/api/v1/auth/keys",
        json={"code": code, "code_verifier": verifier, "code_challenge_method": "S256"},
    )
    assert again.status_code == 403
    # Without the verifier, a stolen code is worthless.
    code = code_of(authorize(admin, verifier=verifier, account="pkce-person"))
    assert admin.post("/api/v1/auth/keys", json={"code": code}).status_code == 403
    assert admin.post("/api/v1/auth/keys", json={"nothing": 1}).status_code == 400
    # A code works once.
    code = code_of(authorize(admin, verifier=verifier, account="pkce-person"))
    body = {"code": code, "code_verifier": verifier, "code_challenge_method": "S256"}
    assert admin.post("/api/v1/auth/keys", json=body).status_code == 200
    assert admin.post("/api/v1/auth/keys", json=body).status_code == 403
    # The plain method, and no challenge at all, as the docs allow.
    code = code_of(authorize(admin, verifier="plain-secret", account="p2", method="plain"))
    plain = {"code": code, "code_verifier": "plain-secret", "code_challenge_method": "plain"}
    assert admin.post("/api/v1/auth/keys", json=plain).status_code == 200
    code = code_of(authorize(admin, verifier=None, account="p3"))
    assert admin.post("/api/v1/auth/keys", json={"code": code}).status_code == 200


def test_deny_redirects_with_access_denied(admin: httpx.Client) -> None:
    redirect = authorize(admin, verifier="v" * 43, account="someone", decision="deny")
    assert redirect.status_code == 303
    query = parse_qs(urlsplit(redirect.headers["location"]).query)
    assert query["error"] == ["access_denied"]
    assert query["state"] == ["abc"]
    assert "code" not in query


def test_a_persons_key_is_billed_to_them(upstream: Upstream, admin: httpx.Client) -> None:
    key = connect(admin, "billed-person")
    with as_key(upstream, key) as c:
        _, evs = stream(c, chat(chunks=5, generation_delay_ms=0))
        assert data(evs[-2])["usage"]["completion_tokens"] == 5
        info = c.get("/key").json()["data"]
    assert billed_nano(upstream.root, key) == nano(mini_cost(5))
    ledger = admin.get("/_fake/ledger").json()
    assert ledger["keys"][key]["user_id"] == "billed-person"
    person = ledger["people"]["billed-person"]
    assert person["usage_nano_usd"] == nano(mini_cost(5))
    assert person["remaining_nano_usd"] == person["credits_nano_usd"] - nano(mini_cost(5))
    assert info["creator_user_id"] == "billed-person"
    assert info["limit"] is None
    assert info["usage"] == pytest.approx(float(mini_cost(5)))
    assert info["label"].startswith("sk-or-v1-")
    assert key not in info["label"]


def _chat_as(upstream: Upstream, key: str, **extra: Any) -> httpx.Response:
    body = {**chat(stream=False, chunks=5, generation_delay_ms=0), **extra}
    with as_key(upstream, key) as c:
        return c.post("/chat/completions", json=body)


def test_credits_and_limits_refuse_what_the_key_cannot_pay(
    upstream: Upstream, admin: httpx.Client
) -> None:
    key = connect(admin, "thrifty")
    # $0.001 buys ~1,600 completion tokens of this model, not its 16,384 default maximum.
    admin.post("/_fake/person", json={"user_id": "thrifty", "credits_usd": 0.001})
    refused = _chat_as(upstream, key)
    assert refused.status_code == 402
    message = refused.json()["error"]["message"]
    assert message.startswith("This request requires more credits, or fewer max_tokens.")
    assert "You requested up to 16384 tokens, but can only afford 1665." in message
    assert "settings/credits" in message
    assert _chat_as(upstream, key, max_tokens=100).status_code == 200

    # A key limit below the credits binds instead, and says so.
    limited = admin.post("/_fake/key", json={"key": key, "limit_usd": "0.00001"})
    assert limited.json()["limit_nano_usd"] == 10_000
    refused = _chat_as(upstream, key, max_tokens=100)
    assert refused.status_code == 402
    assert "create a key with a higher limit" in refused.json()["error"]["message"]
    assert _chat_as(upstream, key, max_tokens=5).status_code == 200
    # At its limit (spent ≥ limit), the key is refused with 403.
    admin.post("/_fake/key", json={"key": key, "limit_usd": 0})
    at_limit = _chat_as(upstream, key, max_tokens=1)
    assert at_limit.status_code == 403
    assert at_limit.json()["error"]["message"].startswith("Key limit exceeded")
    with as_key(upstream, key) as c:
        assert c.get("/key").json()["data"]["limit_remaining"] < 0

    # No credits left at all.
    other = connect(admin, "broke")
    admin.post("/_fake/person", json={"user_id": "broke", "credits_usd": 0})
    broke = _chat_as(upstream, other, stream=True)
    assert broke.status_code == 402
    assert broke.json()["error"]["message"].startswith("Insufficient credits")
    # Free models need no credits.
    free = _chat_as(upstream, other, model="meta-llama/llama-3.1-8b-instruct:free")
    assert free.status_code == 200


def test_a_limit_chosen_on_the_auth_page(upstream: Upstream, admin: httpx.Client) -> None:
    key = connect(admin, "careful", limit="0.5")
    with as_key(upstream, key) as c:
        info = c.get("/key").json()["data"]
    assert (info["limit"], info["limit_remaining"]) == (0.5, 0.5)


def test_revoked_key_is_unknown(upstream: Upstream, admin: httpx.Client) -> None:
    key = connect(admin, "revoker")
    assert _chat_as(upstream, key).status_code == 200
    assert admin.post("/_fake/key", json={"key": key, "revoked": True}).status_code == 200
    refused = _chat_as(upstream, key)
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == "User not found."
    with as_key(upstream, key) as c:
        assert c.get("/key").status_code == 401
    never = admin.post("/_fake/key", json={"key": "sk-or-v1-never", "revoked": True})
    assert never.status_code == 404


def test_keys_issued_without_the_browser(upstream: Upstream, admin: httpx.Client) -> None:
    issued = admin.post("/_fake/key", json={"user_id": "scripted", "limit_usd": 1})
    assert issued.status_code == 201
    key = issued.json()["key"]
    assert _chat_as(upstream, key).status_code == 200
    assert admin.post("/_fake/key", json={"user_id": "bad id!"}).status_code == 400
    assert admin.post("/_fake/person", json={"user_id": "x", "credits_usd": -1}).status_code == 400
    assert admin.post("/_fake/person", content=b"[]").status_code == 400


def test_ledger_totals_every_key(upstream: Upstream, admin: httpx.Client) -> None:
    before = admin.get("/_fake/ledger").json()
    with as_key(upstream, KEY) as c:
        c.post("/chat/completions", json=chat(stream=False, chunks=2))
    after = admin.get("/_fake/ledger").json()
    assert after["total_nano_usd"] - before["total_nano_usd"] == nano(mini_cost(2))
    assert after["total_nano_usd"] == sum(e["billed_nano_usd"] for e in after["keys"].values())
    entry = after["keys"][KEY]
    assert entry["requests"] == before["keys"].get(KEY, {"requests": 0})["requests"] + 1
    assert admin.get("/_fake/ledger", params={"key": "nobody"}).json()["billed_nano_usd"] == 0


def test_ledger_bill_of_one_generation_on_either_dialect(
    upstream: Upstream, admin: httpx.Client
) -> None:
    # Readable at once, unlike /generation, and for the OpenAI dialect's ids too.
    with as_key(upstream, KEY) as c:
        routed = c.post("/chat/completions", json=chat(stream=False, chunks=4))
    local = httpx.post(
        f"{upstream.openai}/chat/completions", json=chat(stream=False, chunks=3), timeout=10
    )
    for response, key, tokens in ((routed, KEY, 4), (local, "", 3)):
        generation_id = response.json()["id"]
        bill = admin.get("/_fake/ledger", params={"id": generation_id}).json()
        assert bill == {"id": generation_id, "key": key, "billed_nano_usd": nano(mini_cost(tokens))}
    assert admin.get("/_fake/ledger", params={"id": "gen-0-none"}).status_code == 404
