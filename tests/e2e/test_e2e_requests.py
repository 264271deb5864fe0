"""Requests the gateway must refuse, and why: bad bodies, bad credentials, forged or stale
session tokens, rolled keys, revoked and missing connections. A refused request reaches
no upstream and leaves no charge."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import jwt
import pytest

from gateway.keys import generate_key_pair, parse_secret_key
from gateway.tokens import mint_session_token

from .harness import (
    MODEL,
    AppKeys,
    FakeUpstream,
    Gateway,
    assert_consistent,
    chat_body,
    ledger,
    secret_headers,
)

pytestmark = pytest.mark.e2e

CHAT = "/v1/chat/completions"


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["code"] == code, error
    assert error["message"]
    return error


def assert_untouched(gateway: Gateway, user_id: str) -> None:
    """No hold was taken for ``user_id``, so nothing was charged or recorded."""
    assert_consistent(gateway.db)
    assert ledger(gateway.db, user_id) == []


# -- bodies -------------------------------------------------------------------------------


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _chunked(data: bytes) -> Iterator[bytes]:
    # An iterator body has no Content-Length: httpx sends it chunked.
    for i in range(0, len(data), 512):
        yield data[i:i + 512]


BIG = _json(chat_body("x" * 3000, stream=False))
BODIES = [
    pytest.param(b'{"model": "openai/gpt-4o-mini", "messages": [', 400, "invalid_request",
                 None, id="malformed-json"),
    pytest.param(b"", 400, "invalid_request", None, id="empty-body"),
    pytest.param(_json([1, 2]), 400, "invalid_request", None, id="not-an-object"),
    pytest.param(_json({"messages": [{"role": "user", "content": "hi"}]}), 400,
                 "invalid_request", "model", id="missing-model"),
    pytest.param(_json({"model": 42, "messages": [{"role": "user", "content": "hi"}]}), 400,
                 "invalid_request", "model", id="model-not-a-string"),
    pytest.param(_json({"model": MODEL}), 400, "invalid_request", "messages",
                 id="missing-messages"),
    pytest.param(_json({"model": MODEL, "messages": "hi"}), 400, "invalid_request", "messages",
                 id="messages-not-an-array"),
    pytest.param(_json({"model": MODEL, "messages": [1]}), 400, "invalid_request", "messages",
                 id="message-not-an-object"),
    pytest.param(_json({"model": MODEL, "messages": [{"content": "no role"}]}), 400,
                 "invalid_request", "messages", id="message-without-role"),
    pytest.param(_json({**chat_body("hi"), "stream": "yes"}), 400, "invalid_request", "stream",
                 id="stream-not-a-boolean"),
    pytest.param(_json({**chat_body("hi"), "max_tokens": 0}), 400, "invalid_request",
                 "max_tokens", id="max-tokens-zero"),
    pytest.param(_json({**chat_body("hi"), "max_tokens": "10"}), 400, "invalid_request",
                 "max_tokens", id="max-tokens-a-string"),
    pytest.param(_json({**chat_body("hi"), "stream_options": True}), 400, "invalid_request",
                 "stream_options", id="stream-options-not-an-object"),
    # orjson reads 1,024 levels but writes 255: refused before the hold, not after it.
    pytest.param(
        b'{"model": "' + MODEL.encode() + b'", "messages": [{"role": "user", "content": "hi"}],'
        b' "extra": ' + b"[" * 300 + b"]" * 300 + b"}",
        400, "invalid_request", None, id="nested-deeper-than-forwardable",
    ),
    pytest.param(BIG, 413, "request_too_large", None, id="over-size-limit"),
    pytest.param(_chunked(BIG), 413, "request_too_large", None, id="over-size-limit-chunked"),
    pytest.param(_json({**chat_body("hi"), "model": "nobody/no-such-model"}), 404,
                 "model_not_found", "model", id="unknown-model"),
    pytest.param(_json({**chat_body("hi"), "models": [MODEL, "nobody/fallback"]}), 404,
                 "model_not_found", "models", id="unknown-fallback-model"),
]


@pytest.mark.parametrize(("content", "status", "code", "param"), BODIES)
def test_bad_body(
    gateway: Gateway,
    fake: FakeUpstream,
    app: AppKeys,
    user_id: str,
    content: bytes | Iterator[bytes],
    status: int,
    code: str,
    param: str | None,
) -> None:
    before = fake.last_request()
    response = httpx.post(
        gateway.url + CHAT,
        content=content,
        headers={**secret_headers(app, user_id), "Content-Type": "application/json"},
        timeout=10,
    )
    error = assert_error(response, status, code)
    assert error["param"] == param
    assert fake.last_request() == before
    assert_untouched(gateway, user_id)


# -- Authorization on the chat route ----------------------------------------------------

AUTHS = [
    pytest.param(lambda app: None, 401, "invalid_api_key", id="no-authorization"),
    pytest.param(lambda app: "Basic dXNlcjpwYXNz", 401, "invalid_api_key", id="basic-scheme"),
    pytest.param(lambda app: "Bearer", 401, "invalid_api_key", id="empty-bearer"),
    pytest.param(lambda app: "Bearer garbage", 401, "invalid_api_key", id="garbage"),
    pytest.param(lambda app: "Bearer sk_test_short", 401, "invalid_api_key",
                 id="truncated-secret-key"),
    pytest.param(lambda app: "Bearer " + app.secret_key[:-1] + "?", 401, "invalid_api_key",
                 id="mangled-secret-key"),
    pytest.param(lambda app: "Bearer " + generate_key_pair("live").secret_key, 401,
                 "invalid_api_key", id="unknown-secret-key"),
    pytest.param(lambda app: "Bearer " + app.publishable_key, 401, "invalid_api_key",
                 id="publishable-key"),
    pytest.param(lambda app: "Bearer a.b.c", 401, "invalid_session", id="not-a-jwt"),
]


@pytest.mark.parametrize(("authorization", "status", "code"), AUTHS)
def test_bad_authorization(
    gateway: Gateway,
    app: AppKeys,
    user_id: str,
    authorization: Callable[[AppKeys], str | None],
    status: int,
    code: str,
) -> None:
    headers = {"Wattfare-User": user_id}
    value = authorization(app)
    if value is not None:
        headers["Authorization"] = value
    response = httpx.post(gateway.url + CHAT, json=chat_body("hi"), headers=headers, timeout=10)
    assert_error(response, status, code)
    assert_untouched(gateway, user_id)


@pytest.mark.parametrize(
    "user_header",
    [pytest.param(None, id="missing"), pytest.param("u" * 257, id="too-long"),
     pytest.param("", id="empty")],
)
def test_secret_key_needs_a_valid_user_header(
    gateway: Gateway, app: AppKeys, user_header: str | None
) -> None:
    headers = {"Authorization": f"Bearer {app.secret_key}"}
    if user_header is not None:
        headers["Wattfare-User"] = user_header
    response = httpx.post(gateway.url + CHAT, json=chat_body("hi"), headers=headers, timeout=10)
    error = assert_error(response, 400, "invalid_request")
    assert error["param"] == "Wattfare-User"
    assert_consistent(gateway.db)


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        pytest.param(lambda app: f"Bearer {app.publishable_key}", "invalid_api_key",
                     id="publishable-key"),
        pytest.param(lambda app: None, "invalid_api_key", id="no-authorization"),
        pytest.param(lambda app: "Bearer sk_live_" + "A" * 43, "invalid_api_key",
                     id="unknown-secret-key"),
    ],
)
def test_sessions_need_the_secret_key(
    gateway: Gateway, app: AppKeys, authorization: Callable[[AppKeys], str | None], code: str
) -> None:
    value = authorization(app)
    headers = {} if value is None else {"Authorization": value}
    response = httpx.post(
        gateway.url + "/v1/sessions", json={"user_id": "someone"}, headers=headers, timeout=10
    )
    assert_error(response, 401, code)


def test_sessions_refuse_a_bad_user_id(gateway: Gateway, app: AppKeys) -> None:
    response = httpx.post(
        gateway.url + "/v1/sessions",
        json={"user_id": ""},
        headers={"Authorization": f"Bearer {app.secret_key}"},
        timeout=10,
    )
    assert assert_error(response, 400, "invalid_request")["param"] == "user_id"


def test_models_accept_a_publishable_key(gateway: Gateway, app: AppKeys) -> None:
    response = httpx.get(
        gateway.url + "/v1/models",
        headers={"Authorization": f"Bearer {app.publishable_key}"},
        timeout=10,
    )
    assert response.status_code == 200
    ids = {m["id"] for m in response.json()["data"]}
    assert MODEL in ids


# -- forged and stale session tokens ----------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _claims(app: AppKeys, user_id: str, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": app.publishable_key, "sub": user_id, "aud": "wattfare",
        "iat": now, "exp": now + 300,
    }
    for key, value in changes.items():
        if value is None:
            claims.pop(key, None)
        else:
            claims[key] = value
    return claims


def _signed(app: AppKeys, claims: dict[str, Any], *, kid: str | None = None) -> str:
    _, private = parse_secret_key(app.secret_key)
    return jwt.encode(
        claims, private, algorithm="EdDSA",
        headers={"kid": app.publishable_key if kid is None else kid, "typ": "JWT"},
    )


def _alg_none(app: AppKeys, user_id: str) -> str:
    header = {"alg": "none", "typ": "JWT", "kid": app.publishable_key}
    payload = _claims(app, user_id)
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}."


def _hs256(app: AppKeys, user_id: str) -> str:
    # The classic confusion attack: an HMAC keyed with the (public) publishable key.
    return jwt.encode(
        _claims(app, user_id), app.publishable_key, algorithm="HS256",
        headers={"kid": app.publishable_key},
    )


def _tampered(app: AppKeys, user_id: str) -> str:
    # A valid token for someone else, its payload rewritten to name this user.
    header, payload, signature = _signed(app, _claims(app, "someone-else")).split(".")
    claims = json.loads(_unb64(payload))
    claims["sub"] = user_id
    return f"{header}.{_b64(json.dumps(claims).encode())}.{signature}"


def _unknown_app(app: AppKeys, user_id: str) -> str:
    other = generate_key_pair("test")
    return mint_session_token(other.secret_key, user_id).token


def _now() -> int:
    return int(time.time())


TokenMaker = Callable[[AppKeys, str], str]
TOKENS = [
    pytest.param(_alg_none, "invalid_session", id="alg-none"),
    pytest.param(_hs256, "invalid_session", id="hs256-keyed-with-publishable-key"),
    pytest.param(lambda a, u: _signed(a, _claims(a, u, aud="someone-else")), "invalid_session",
                 id="wrong-aud"),
    pytest.param(lambda a, u: _signed(a, _claims(a, u, iss="pk_test_" + "B" * 43)),
                 "invalid_session", id="iss-not-kid"),
    pytest.param(_tampered, "invalid_session", id="tampered-payload"),
    pytest.param(lambda a, u: _signed(a, _claims(a, u, exp=_now() + 601)), "invalid_session",
                 id="lifetime-over-600s"),
    pytest.param(lambda a, u: _signed(a, _claims(a, u, iat=_now() - 640, exp=_now() - 40)),
                 "session_expired", id="expired-past-skew"),
    pytest.param(lambda a, u: _signed(a, _claims(a, u, iat=_now() + 120, exp=_now() + 300)),
                 "invalid_session", id="iat-in-the-future"),
    pytest.param(lambda a, u: _signed(a, _claims(a, u, nbf=_now() + 120)), "invalid_session",
                 id="nbf-in-the-future"),
    pytest.param(lambda a, u: _signed(a, _claims(a, u, sub=None)), "invalid_session",
                 id="missing-sub"),
    pytest.param(lambda a, u: _signed(a, _claims(a, u, exp=None)), "invalid_session",
                 id="missing-exp"),
    pytest.param(lambda a, u: _signed(a, _claims(a, u, iat=str(_now()))), "invalid_session",
                 id="iat-a-string"),
    pytest.param(lambda a, u: _signed(a, _claims(a, u, lim={"monthly_usd": -1})),
                 "invalid_session", id="negative-cap"),
    pytest.param(_unknown_app, "invalid_session", id="unknown-kid"),
    pytest.param(lambda a, u: _signed(a, _claims(a, u), kid="../../../etc/passwd"),
                 "invalid_session", id="kid-path-traversal"),
    pytest.param(lambda a, u: _signed(a, _claims(a, u), kid="pk_test_' OR '1'='1"),
                 "invalid_session", id="kid-sql-injection"),
    pytest.param(lambda a, u: _signed(a, _claims(a, u), kid="pk_test_" + "C" * 43),
                 "invalid_session", id="kid-of-no-app"),
]


@pytest.mark.parametrize(("make", "code"), TOKENS)
def test_forged_or_stale_token(
    gateway: Gateway, fake: FakeUpstream, app: AppKeys, user_id: str, make: TokenMaker, code: str
) -> None:
    before = fake.last_request()
    response = httpx.post(
        gateway.url + CHAT,
        json=chat_body(f"forged for {user_id}", stream=False),
        headers={"Authorization": f"Bearer {make(app, user_id)}"},
        timeout=10,
    )
    assert_error(response, 401, code)
    assert fake.last_request() == before
    assert_untouched(gateway, user_id)


@pytest.mark.parametrize(
    "claims",
    [
        pytest.param({"iat": -610, "exp": -10}, id="expired-within-skew"),
        pytest.param({"iat": 10, "exp": 300}, id="iat-ahead-within-skew"),
        pytest.param({"iat": 0, "exp": 600}, id="lifetime-exactly-600s"),
    ],
)
def test_token_within_the_rules_is_accepted(
    gateway: Gateway, app: AppKeys, user_id: str, claims: dict[str, int]
) -> None:
    now = _now()
    token = _signed(app, _claims(app, user_id, **{k: now + v for k, v in claims.items()}))
    response = httpx.post(
        gateway.url + CHAT,
        json=chat_body("hi", stream=False),
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert_consistent(gateway.db)
    [row] = ledger(gateway.db, user_id)
    assert row.status == "ok" and row.cost_nano > 0


# -- rolled keys, revoked and missing connections --------------------------------------


def _chat(gateway: Gateway, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(
        gateway.url + CHAT, json=chat_body("hi", stream=False), headers=headers, timeout=10
    )


def test_rolled_key_is_refused_at_once(gateway: Gateway, user_id: str) -> None:
    old = gateway.create_app("rolled")
    old_token = mint_session_token(old.secret_key, user_id).token
    # Both credentials work (and sit in the gateway's caches) before the roll.
    assert _chat(gateway, secret_headers(old, user_id)).status_code == 200
    assert _chat(gateway, {"Authorization": f"Bearer {old_token}"}).status_code == 200

    new = gateway.roll_key(old.app_id)
    assert new.app_id == old.app_id
    assert new.secret_key != old.secret_key and new.publishable_key != old.publishable_key

    assert_error(_chat(gateway, secret_headers(old, user_id)), 401, "invalid_api_key")
    assert_error(_chat(gateway, {"Authorization": f"Bearer {old_token}"}), 401, "invalid_session")
    fresh_old = mint_session_token(old.secret_key, user_id).token
    assert_error(_chat(gateway, {"Authorization": f"Bearer {fresh_old}"}), 401, "invalid_session")
    sessions = httpx.post(
        gateway.url + "/v1/sessions", json={"user_id": user_id},
        headers={"Authorization": f"Bearer {old.secret_key}"}, timeout=10,
    )
    assert_error(sessions, 401, "invalid_api_key")
    connection = httpx.get(
        gateway.url + "/v1/connection", headers=secret_headers(old, user_id), timeout=10
    )
    assert_error(connection, 401, "invalid_api_key")

    assert _chat(gateway, secret_headers(new, user_id)).status_code == 200
    new_token = mint_session_token(new.secret_key, user_id).token
    assert _chat(gateway, {"Authorization": f"Bearer {new_token}"}).status_code == 200
    assert_consistent(gateway.db)
    assert [row.status for row in ledger(gateway.db, user_id)] == ["ok"] * 4


def test_revoked_connection_is_refused(gateway: Gateway, app: AppKeys, user_id: str) -> None:
    token = mint_session_token(app.secret_key, user_id, monthly_usd=5).token
    assert _chat(gateway, {"Authorization": f"Bearer {token}"}).status_code == 200

    revoked = httpx.delete(
        gateway.url + "/v1/connection", headers=secret_headers(app, user_id), timeout=10
    )
    assert revoked.status_code == 200
    assert revoked.json()["status"] == "revoked"
    assert revoked.json()["remaining_usd"] == 0

    assert_error(_chat(gateway, secret_headers(app, user_id)), 403, "connection_revoked")
    assert_error(_chat(gateway, {"Authorization": f"Bearer {token}"}), 403, "connection_revoked")
    state = httpx.get(
        gateway.url + "/v1/connection", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert state.status_code == 200 and state.json()["status"] == "revoked"
    assert_consistent(gateway.db)
    assert [row.status for row in ledger(gateway.db, user_id)] == ["ok"]


def test_disconnecting_an_unknown_user(gateway: Gateway, app: AppKeys, user_id: str) -> None:
    response = httpx.delete(
        gateway.url + "/v1/connection", headers=secret_headers(app, user_id), timeout=10
    )
    assert_error(response, 403, "not_connected")


def test_live_app_needs_consent(gateway: Gateway, user_id: str) -> None:
    live = gateway.create_app("live-only", live=True)
    assert live.secret_key.startswith("sk_live_")
    token = mint_session_token(live.secret_key, user_id, monthly_usd=5).token
    assert_error(_chat(gateway, secret_headers(live, user_id)), 403, "not_connected")
    assert_error(_chat(gateway, {"Authorization": f"Bearer {token}"}), 403, "not_connected")
    state = httpx.get(
        gateway.url + "/v1/connection", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    assert state.status_code == 200 and state.json()["status"] == "not_connected"
    assert_untouched(gateway, user_id)


def test_utf8_user_header_names_one_user_on_every_route(gateway: Gateway, app: AppKeys) -> None:
    """A ``Wattfare-User`` sent as UTF-8 is the same user for chat completions (which
    charge it) and for ``/v1/connection`` (which reports and revokes it)."""
    user_id = f"josé-ü-{time.monotonic_ns()}"
    headers = [(b"authorization", f"Bearer {app.secret_key}".encode()),
               (b"wattfare-user", user_id.encode())]
    chat = httpx.post(gateway.url + CHAT, json=chat_body("hi", stream=False), headers=headers,
                      timeout=10)
    assert chat.status_code == 200
    state = httpx.get(gateway.url + "/v1/connection", headers=headers, timeout=10)
    assert state.status_code == 200
    doc = state.json()
    assert (doc["status"], doc["user_id"]) == ("connected", user_id)
    assert doc["spent_usd"] > 0
    token = mint_session_token(app.secret_key, user_id).token
    by_token = httpx.get(gateway.url + "/v1/connection",
                         headers={"Authorization": f"Bearer {token}"}, timeout=10).json()
    assert by_token["spent_usd"] == doc["spent_usd"]

    revoked = httpx.delete(gateway.url + "/v1/connection", headers=headers, timeout=10)
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    again = httpx.post(gateway.url + CHAT, json=chat_body("hi", stream=False), headers=headers,
                       timeout=10)
    assert_error(again, 403, "connection_revoked")
    assert_consistent(gateway.db)
    assert [row.status for row in ledger(gateway.db, user_id)] == ["ok"]


@pytest.mark.parametrize(
    ("method", "path"),
    [pytest.param("POST", CHAT, id="chat"),
     pytest.param("GET", "/v1/connection", id="connection")],
)
def test_user_header_that_is_not_utf8(
    gateway: Gateway, app: AppKeys, method: str, path: str
) -> None:
    headers = [(b"authorization", f"Bearer {app.secret_key}".encode()),
               (b"wattfare-user", b"bad-\xff\xfe")]
    response = httpx.request(method, gateway.url + path, json=chat_body("hi", stream=False),
                             headers=headers, timeout=10)
    assert assert_error(response, 400, "invalid_request")["param"] == "Wattfare-User"


def test_session_token_ignores_a_user_header(gateway: Gateway, app: AppKeys, user_id: str) -> None:
    """A browser holding a session token cannot act for another user by adding
    ``Wattfare-User``: the token's ``sub`` is the user."""
    other = user_id + "-other"
    token = mint_session_token(app.secret_key, user_id).token
    response = _chat(gateway, {"Authorization": f"Bearer {token}", "Wattfare-User": other})
    assert response.status_code == 200
    assert_consistent(gateway.db)
    assert len(ledger(gateway.db, user_id)) == 1
    assert ledger(gateway.db, other) == []


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        pytest.param("GET", CHAT, 405, "method_not_allowed", id="get-chat"),
        pytest.param("PUT", "/v1/connection", 405, "method_not_allowed", id="put-connection"),
        pytest.param("GET", "/v1/nothing-here", 404, "unsupported_endpoint",
                     id="unknown-v1-path"),
        pytest.param("GET", "/nothing-here", 404, "not_found", id="unknown-path"),
    ],
)
def test_wrong_route_errors_keep_the_openai_shape(
    gateway: Gateway, app: AppKeys, method: str, path: str, status: int, code: str
) -> None:
    response = httpx.request(method, gateway.url + path,
                             headers=secret_headers(app, "someone"), timeout=10)
    assert_error(response, status, code)


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        pytest.param(b"{", 400, "invalid_request", id="malformed"),
        pytest.param(b"[]", 400, "invalid_request", id="not-an-object"),
        pytest.param(b'{"user_id": ""}', 400, "invalid_request", id="empty-user"),
        pytest.param(b'{"user_id": "u", "request_limit": {"monthly_usd": -1}}', 400,
                     "invalid_request", id="negative-cap"),
        pytest.param(b'{"user_id": "' + b"x" * 20_000 + b'"}', 413, "request_too_large",
                     id="too-large"),
    ],
)
def test_sessions_refuse_bad_bodies(
    gateway: Gateway, app: AppKeys, body: bytes, status: int, code: str
) -> None:
    response = httpx.post(
        gateway.url + "/v1/sessions", content=body, timeout=10,
        headers={"Authorization": f"Bearer {app.secret_key}", "Content-Type": "application/json"},
    )
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
