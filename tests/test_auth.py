"""Credentials → principal: every way a key or token can be wrong."""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest

from gateway.auth import Authenticator, CredentialKind
from gateway.errors import GatewayError, InvalidApiKey, InvalidRequest
from gateway.keys import generate_key_pair, parse_secret_key
from gateway.store.sqlite import SQLiteStore
from gateway.tokens import mint_session_token

ALL: frozenset[CredentialKind] = frozenset({"session", "secret", "publishable"})
USER: frozenset[CredentialKind] = frozenset({"session", "secret"})


async def make_app(store: SQLiteStore) -> tuple[str, str]:
    created = await store.create_app(name="shop", mode="test", origins=())
    return created.keys.secret_key, created.keys.publishable_key


def signed(secret: str, claims: dict[str, Any], **header: Any) -> str:
    _, private = parse_secret_key(secret)
    return jwt.encode(claims, private, algorithm="EdDSA", headers=header)


def claims(pk: str, **over: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {"iss": pk, "sub": "u1", "aud": "wattfare", "iat": now,
                            "exp": now + 600}
    base.update(over)
    return {k: v for k, v in base.items() if v is not None}


async def test_session_token_round_trip(store: SQLiteStore) -> None:
    secret, pk = await make_app(store)
    auth = Authenticator(store)
    token = mint_session_token(secret, "alice", monthly_usd=2.5).token
    principal = await auth.authenticate(f"Bearer {token}", None, allow=USER)
    assert (principal.kind, principal.user_id) == ("session", "alice")
    assert principal.app.publishable_key == pk
    assert principal.requested_cap_nano == 2_500_000_000
    # Cached: the same object comes back without verifying again.
    assert await auth.authenticate(f"Bearer {token}", None, allow=USER) is principal


async def test_secret_key_with_user_header(store: SQLiteStore) -> None:
    secret, _ = await make_app(store)
    auth = Authenticator(store)
    principal = await auth.authenticate(f"Bearer {secret}", "bob", allow=USER)
    assert (principal.kind, principal.user_id) == ("secret", "bob")
    with pytest.raises(InvalidRequest):
        await auth.authenticate(f"Bearer {secret}", "bad\x00id", allow=USER)


def _bad_tokens(secret: str, pk: str) -> list[tuple[str, str]]:
    now = int(time.time())
    other = generate_key_pair("test")
    hs_key = "a-shared-secret-of-at-least-32-bytes!"
    hs256 = jwt.encode(claims(pk), hs_key, algorithm="HS256", headers={"kid": pk})
    none_alg = (
        jwt.utils.base64url_encode(b'{"alg":"none","typ":"JWT","kid":"' + pk.encode() + b'"}')
        + b"."
        + jwt.utils.base64url_encode(json.dumps(claims(pk)).encode())
        + b"."
    ).decode()
    good = signed(secret, claims(pk), kid=pk)
    head, _, sig = good.split(".")
    tampered_body = jwt.utils.base64url_encode(
        json.dumps(claims(pk, sub="mallory")).encode()
    ).decode()
    return [
        (none_alg, "invalid_session"),
        (hs256, "invalid_session"),
        (signed(secret, claims(pk, aud="other"), kid=pk), "invalid_session"),
        (f"{head}.{tampered_body}.{sig}", "invalid_session"),
        (signed(secret, claims(pk, exp=now + 601), kid=pk), "invalid_session"),
        (signed(secret, claims(pk, iat=now - 700, exp=now - 100), kid=pk), "session_expired"),
        (signed(secret, claims(pk, iat=now + 120, exp=now + 600), kid=pk), "invalid_session"),
        (signed(secret, claims(pk, nbf=now + 120), kid=pk), "invalid_session"),
        (signed(other.secret_key, claims(other.publishable_key), kid=other.publishable_key),
         "invalid_session"),
        (signed(secret, claims(pk), kid="../../etc/passwd"), "invalid_session"),
        (signed(secret, claims(pk), kid="pk_test_' OR 1=1 --"), "invalid_session"),
        (signed(secret, claims(pk, iss=other.publishable_key), kid=pk), "invalid_session"),
        (signed(secret, claims(pk, sub=""), kid=pk), "invalid_session"),
        (signed(secret, claims(pk, sub="x" * 257), kid=pk), "invalid_session"),
        (signed(secret, claims(pk, exp=None), kid=pk), "invalid_session"),
        (signed(secret, claims(pk, lim={"monthly_usd": -1}), kid=pk), "invalid_session"),
        (signed(secret, claims(pk, lim="lots"), kid=pk), "invalid_session"),
        ("a.b.c", "invalid_session"),
        ("garbage", "invalid_api_key"),
    ]


async def test_every_bad_token_is_refused_with_its_code(store: SQLiteStore) -> None:
    secret, pk = await make_app(store)
    auth = Authenticator(store)
    for token, code in _bad_tokens(secret, pk):
        with pytest.raises(GatewayError) as info:
            await auth.authenticate(f"Bearer {token}", None, allow=USER)
        assert info.value.code == code, token
        assert info.value.status == 401


async def test_within_skew_is_accepted(store: SQLiteStore) -> None:
    secret, pk = await make_app(store)
    now = int(time.time())
    token = signed(secret, claims(pk, iat=now - 620, exp=now - 20), kid=pk)
    principal = await Authenticator(store).authenticate(f"Bearer {token}", None, allow=USER)
    assert principal.user_id == "u1"


@pytest.mark.parametrize(
    ("header", "allow"),
    [
        pytest.param(None, USER, id="missing"),
        pytest.param("Basic abc", USER, id="not-bearer"),
        pytest.param("Bearer ", USER, id="empty"),
        pytest.param("Bearer sk_test_short", USER, id="malformed-secret"),
        pytest.param("Bearer sk_test_" + "A" * 43, USER, id="unknown-secret"),
        pytest.param("Bearer pk_test_" + "A" * 43, ALL, id="unknown-publishable"),
    ],
)
async def test_bad_keys(store: SQLiteStore, header: str | None,
                        allow: frozenset[CredentialKind]) -> None:
    await make_app(store)
    with pytest.raises(InvalidApiKey):
        await Authenticator(store).authenticate(header, "u", allow=allow)


async def test_key_kinds_per_route(store: SQLiteStore) -> None:
    secret, pk = await make_app(store)
    auth = Authenticator(store)
    with pytest.raises(InvalidApiKey):
        await auth.authenticate(f"Bearer {pk}", None, allow=USER)
    with pytest.raises(InvalidApiKey):
        await auth.authenticate(f"Bearer {secret}", "u", allow=frozenset({"session"}))
    principal = await auth.authenticate(f"Bearer {pk}", None, allow=ALL)
    assert principal.kind == "publishable"


async def test_rolled_keys_stop_on_fresh_routes(store: SQLiteStore) -> None:
    secret, _ = await make_app(store)
    auth = Authenticator(store)
    token = mint_session_token(secret, "alice").token
    await auth.authenticate(f"Bearer {token}", None, allow=USER)
    await store.roll_key("shop")
    with pytest.raises(InvalidApiKey):
        await auth.authenticate(f"Bearer {secret}", "u", allow=USER, fresh=True)
    with pytest.raises(GatewayError) as info:
        await auth.authenticate(f"Bearer {token}", None, allow=USER, fresh=True)
    assert info.value.code == "invalid_session"
