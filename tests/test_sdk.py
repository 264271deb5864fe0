"""The Python server SDK: local minting, secrecy of the key, and renewing OpenAI clients."""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any, cast

import httpx2
import jwt
import pytest

from gateway.keys import KeyPair, generate_key_pair, parse_publishable_key
from wattfare import Session, Wattfare

T0 = 1_700_000_000.0


class FakeClock:
    """A clock the test moves by hand; ``delay`` makes each reading slow, to widen races."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.delay = 0.0

    def __call__(self) -> float:
        if self.delay:
            time.sleep(self.delay)
        return self.now


@pytest.fixture
def keys() -> KeyPair:
    return generate_key_pair("test")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def wattfare(keys: KeyPair, clock: FakeClock) -> Wattfare:
    return Wattfare(keys.secret_key, base_url="http://gw.example:9000", clock=clock)


def _verify(token: str, publishable_key: str, *, check_time: bool = True) -> dict[str, Any]:
    _, public_key = parse_publishable_key(publishable_key)
    options: dict[str, Any] = {"require": ["iss", "sub", "aud", "iat", "exp"]}
    if not check_time:
        options.update(verify_exp=False, verify_iat=False, verify_nbf=False)
    claims: dict[str, Any] = jwt.decode(
        token,
        public_key,
        algorithms=["EdDSA"],
        audience="wattfare",
        issuer=publishable_key,
        options=cast(Any, options),
    )
    return claims


def _bearer(request: httpx2.Request) -> str:
    scheme, _, token = request.headers["Authorization"].partition(" ")
    assert scheme == "Bearer"
    return token


def _recording_transport(seen: list[httpx2.Request]) -> httpx2.MockTransport:
    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200, json={"object": "list", "data": []})

    return httpx2.MockTransport(handler)


# --- minting -------------------------------------------------------------------------------


def test_session_token_verifies_with_the_publishable_key(keys: KeyPair) -> None:
    wattfare = Wattfare(keys.secret_key)
    before = int(time.time())

    session = wattfare.create_session("user-42", monthly_usd=10)

    assert jwt.get_unverified_header(session.token) == {
        "alg": "EdDSA",
        "typ": "JWT",
        "kid": keys.publishable_key,
    }
    claims = _verify(session.token, keys.publishable_key)
    assert claims["iss"] == keys.publishable_key
    assert claims["sub"] == "user-42"
    assert claims["aud"] == "wattfare"
    assert before <= claims["iat"] <= int(time.time())
    assert claims["exp"] == session.expires_at
    assert 0 < claims["exp"] - claims["iat"] <= 600
    assert claims["lim"] == {"monthly_usd": 10}


def test_session_uses_the_injected_clock(wattfare: Wattfare, keys: KeyPair) -> None:
    session = wattfare.create_session("u", ttl_s=120)

    claims = _verify(session.token, keys.publishable_key, check_time=False)
    assert claims["iat"] == int(T0)
    assert claims["exp"] == session.expires_at == int(T0) + 120


@pytest.mark.parametrize(
    ("default_cap", "cap", "expected_lim"),
    [
        pytest.param(None, None, None, id="no-cap"),
        pytest.param(None, 10, {"monthly_usd": 10}, id="explicit-cap"),
        pytest.param(None, 0, {"monthly_usd": 0}, id="zero-cap"),
        pytest.param(5, None, {"monthly_usd": 5}, id="default-cap"),
        pytest.param(5, 2.5, {"monthly_usd": 2.5}, id="explicit-overrides-default"),
    ],
)
def test_session_cap_claim(
    keys: KeyPair, default_cap: float | None, cap: float | None, expected_lim: object
) -> None:
    wattfare = Wattfare(keys.secret_key, default_monthly_usd=default_cap)

    claims = _verify(wattfare.create_session("u", monthly_usd=cap).token, keys.publishable_key)

    assert claims.get("lim") == expected_lim


def test_session_to_dict_matches_post_sessions(wattfare: Wattfare) -> None:
    session = wattfare.create_session("user-42")

    assert session.to_dict() == {
        "token": session.token,
        "expires_at": int(T0) + 600,
        "user_id": "user-42",
    }
    assert isinstance(session.to_dict()["expires_at"], int)


def test_session_is_frozen_and_hides_its_token(wattfare: Wattfare) -> None:
    session = wattfare.create_session("user-42")

    with pytest.raises(dataclasses.FrozenInstanceError):
        session.user_id = "someone-else"  # type: ignore[misc]
    assert session.token not in repr(session)
    assert "user-42" in repr(session)
    assert isinstance(session, Session)


# --- validation, and the secret never shown ------------------------------------------------


@pytest.mark.parametrize(
    "bad_key",
    [
        pytest.param("", id="empty"),
        pytest.param("sk_test_tooShort", id="too-short"),
        pytest.param("sk_prod_" + "A" * 43, id="unknown-mode"),
        pytest.param("sk_test_" + "!" * 43, id="not-base64url"),
        pytest.param("sk_test_" + "A" * 44, id="too-long"),
        pytest.param(" sk_test_" + "A" * 43, id="leading-space"),
        pytest.param("pk_test_" + "A" * 43, id="publishable-key"),
    ],
)
def test_malformed_secret_key_is_rejected_without_echo(bad_key: str) -> None:
    with pytest.raises(ValueError, match="secret_key") as info:
        Wattfare(bad_key)

    if bad_key:
        assert bad_key.strip() not in str(info.value)
    assert info.value.__context__ is None


def test_non_string_secret_key_is_rejected() -> None:
    with pytest.raises(ValueError, match="secret_key"):
        Wattfare(cast(Any, b"sk_test_" + b"A" * 43))


@pytest.mark.parametrize(
    "bad_user_id",
    [
        pytest.param("", id="empty"),
        pytest.param("x" * 257, id="too-long"),
        pytest.param("a\nb", id="newline"),
        pytest.param("a\x00b", id="nul"),
        pytest.param(42, id="not-a-string"),
    ],
)
def test_bad_user_id_is_rejected(wattfare: Wattfare, keys: KeyPair, bad_user_id: object) -> None:
    user_id = cast(Any, bad_user_id)
    calls: list[Callable[[], object]] = [
        lambda: wattfare.create_session(user_id),
        lambda: wattfare.user(user_id),
        lambda: wattfare.headers_for(user_id),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="user_id") as info:
            call()
        assert keys.secret_key not in str(info.value)


@pytest.mark.parametrize(
    "bad_cap",
    [
        pytest.param(-1, id="negative"),
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="infinite"),
        pytest.param(True, id="bool"),
        pytest.param("10", id="string"),
    ],
)
def test_bad_cap_is_rejected(wattfare: Wattfare, keys: KeyPair, bad_cap: object) -> None:
    cap = cast(Any, bad_cap)
    with pytest.raises(ValueError, match="monthly_usd"):
        wattfare.create_session("u", monthly_usd=cap)
    with pytest.raises(ValueError, match="monthly_usd"):
        wattfare.user("u", monthly_usd=cap)
    with pytest.raises(ValueError, match="default_monthly_usd") as info:
        Wattfare(keys.secret_key, default_monthly_usd=cap)
    assert keys.secret_key not in str(info.value)


@pytest.mark.parametrize(
    "bad_ttl",
    [
        pytest.param(0, id="zero"),
        pytest.param(601, id="over-600"),
        pytest.param(1.5, id="float"),
        pytest.param(True, id="bool"),
    ],
)
def test_bad_ttl_is_rejected(wattfare: Wattfare, bad_ttl: object) -> None:
    with pytest.raises(ValueError, match="ttl_s"):
        wattfare.create_session("u", ttl_s=cast(Any, bad_ttl))


@pytest.mark.parametrize(
    "bad_url",
    [
        pytest.param("127.0.0.1:8787", id="no-scheme"),
        pytest.param("ftp://gw.example", id="wrong-scheme"),
        pytest.param("http://gw.example/v1", id="includes-v1"),
        pytest.param("http://gw.example/?x=1", id="query"),
    ],
)
def test_bad_base_url_is_rejected(keys: KeyPair, bad_url: str) -> None:
    with pytest.raises(ValueError, match="base_url") as info:
        Wattfare(keys.secret_key, base_url=bad_url)
    assert keys.secret_key not in str(info.value)


def test_repr_shows_only_the_publishable_key(wattfare: Wattfare, keys: KeyPair) -> None:
    user = wattfare.user("user-42")

    assert repr(wattfare) == (
        f"Wattfare(publishable_key={keys.publishable_key!r}, base_url='http://gw.example:9000')"
    )
    assert wattfare.publishable_key == keys.publishable_key
    for text in (repr(wattfare), str(wattfare), repr(user), str(user)):
        assert keys.secret_key not in text
        assert keys.secret_key[len("sk_test_") :] not in text
    assert "user-42" in repr(user)


def test_headers_for_carry_the_secret_key_and_user(wattfare: Wattfare, keys: KeyPair) -> None:
    assert wattfare.headers_for("user-42") == {
        "Authorization": f"Bearer {keys.secret_key}",
        "Wattfare-User": "user-42",
    }


def test_headers_for_rejects_a_user_id_a_header_cannot_carry(wattfare: Wattfare) -> None:
    with pytest.raises(ValueError, match="ASCII"):
        wattfare.headers_for("usér")


# --- OpenAI clients ------------------------------------------------------------------------


def test_openai_client_points_at_the_gateway(keys: KeyPair) -> None:
    wattfare = Wattfare(keys.secret_key, base_url="http://gw.example:9000/")
    seen: list[httpx2.Request] = []
    http_client = httpx2.Client(transport=_recording_transport(seen))

    with wattfare.user("user-42").openai(http_client=http_client, max_retries=0) as client:
        assert str(client.base_url) == "http://gw.example:9000/v1/"
        client.models.list()

    assert str(seen[0].url) == "http://gw.example:9000/v1/models"
    claims = _verify(_bearer(seen[0]), keys.publishable_key)
    assert claims["sub"] == "user-42"


async def test_async_openai_client_points_at_the_gateway(wattfare: Wattfare, keys: KeyPair) -> None:
    seen: list[httpx2.Request] = []
    http_client = httpx2.AsyncClient(transport=_recording_transport(seen))
    user = wattfare.user("user-42", monthly_usd=3)

    async with user.async_openai(http_client=http_client, max_retries=0) as client:
        assert str(client.base_url) == "http://gw.example:9000/v1/"
        await client.models.list()

    assert str(seen[0].url) == "http://gw.example:9000/v1/models"
    claims = _verify(_bearer(seen[0]), keys.publishable_key, check_time=False)
    assert claims["sub"] == "user-42"
    assert claims["lim"] == {"monthly_usd": 3}


def test_sync_client_renews_the_token_before_it_expires(
    wattfare: Wattfare, keys: KeyPair, clock: FakeClock
) -> None:
    seen: list[httpx2.Request] = []
    http_client = httpx2.Client(transport=_recording_transport(seen))

    with wattfare.user("user-42").openai(http_client=http_client, max_retries=0) as client:
        client.models.list()  # token minted at T0, expires at T0 + 600
        clock.now = T0 + 540  # exactly 60 s left: still good
        client.models.list()
        clock.now = T0 + 540.5  # under 60 s left: renewed
        client.models.list()
        clock.now = T0 + 1500  # long past the first token's life
        client.models.list()

    first, kept, renewed, later = (_bearer(request) for request in seen)
    assert kept == first
    assert renewed != first
    assert later not in (first, renewed)
    for token, issued in ((renewed, T0 + 540.5), (later, T0 + 1500)):
        claims = _verify(token, keys.publishable_key, check_time=False)
        assert claims["sub"] == "user-42"
        assert claims["iat"] == int(issued)
        assert claims["exp"] - claims["iat"] == 600


async def test_async_client_renews_the_token_before_it_expires(
    wattfare: Wattfare, keys: KeyPair, clock: FakeClock
) -> None:
    seen: list[httpx2.Request] = []
    http_client = httpx2.AsyncClient(transport=_recording_transport(seen))

    async with wattfare.user("user-42").async_openai(
        http_client=http_client, max_retries=0
    ) as client:
        await client.models.list()
        clock.now = T0 + 500
        await client.models.list()
        clock.now = T0 + 541
        await client.models.list()

    first, kept, renewed = (_bearer(request) for request in seen)
    assert kept == first
    assert renewed != first
    assert _verify(renewed, keys.publishable_key, check_time=False)["iat"] == int(T0) + 541


def test_threads_sharing_a_client_renew_once(wattfare: Wattfare, clock: FakeClock) -> None:
    seen: list[httpx2.Request] = []
    http_client = httpx2.Client(transport=_recording_transport(seen))
    threads_n = 16
    barrier = threading.Barrier(threads_n)

    with wattfare.user("user-42").openai(http_client=http_client, max_retries=0) as client:
        client.models.list()
        clock.now = T0 + 590
        clock.delay = 0.002

        def call() -> None:
            barrier.wait()
            client.models.list()

        threads = [threading.Thread(target=call) for _ in range(threads_n)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    first, *renewed = (_bearer(request) for request in seen)
    assert len(renewed) == threads_n
    assert len(set(renewed)) == 1
    assert renewed[0] != first


def test_extra_kwargs_reach_the_openai_client(wattfare: Wattfare) -> None:
    seen: list[httpx2.Request] = []
    http_client = httpx2.Client(transport=_recording_transport(seen))

    with wattfare.user("user-42").openai(
        http_client=http_client, max_retries=0, timeout=7.0, default_headers={"X-App": "shop"}
    ) as client:
        assert client.timeout == 7.0
        client.models.list()

    assert seen[0].headers["X-App"] == "shop"
    assert seen[0].headers["Authorization"].startswith("Bearer ey")


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        pytest.param({"api_key": "sk-other"}, TypeError, id="api-key"),
        pytest.param({"base_url": "https://api.openai.com/v1"}, TypeError, id="base-url"),
        pytest.param(
            {"default_headers": {"authorization": "Bearer x"}}, ValueError, id="auth-header"
        ),
    ],
)
def test_kwargs_that_would_bypass_the_session_are_refused(
    wattfare: Wattfare, kwargs: dict[str, Any], error: type[Exception]
) -> None:
    user = wattfare.user("user-42")

    with pytest.raises(error):
        user.openai(**kwargs)
    with pytest.raises(error):
        user.async_openai(**kwargs)


def test_missing_openai_gives_an_install_hint(
    wattfare: Wattfare, monkeypatch: pytest.MonkeyPatch
) -> None:
    user = wattfare.user("user-42")
    monkeypatch.setitem(sys.modules, "openai", cast(ModuleType, None))

    with pytest.raises(ImportError, match="pip install openai"):
        user.openai()
    with pytest.raises(ImportError, match="pip install openai"):
        user.async_openai()
    # Minting and headers need no openai.
    assert wattfare.create_session("user-42").user_id == "user-42"
