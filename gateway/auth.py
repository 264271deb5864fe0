"""Credentials → a frozen :class:`Principal`.

Three kinds of bearer credential reach the gateway:

- a session token (the 10-minute EdDSA JWT an app mints for one of its users);
- a secret key ``sk_…`` from an app's backend, with the user in ``Wattfare-User``;
- a publishable key ``pk_…``, accepted only where a route says so (the model list).

Verified session tokens are cached until they expire, so the hot path checks a
signature once per token, not once per request. App records are cached for a few
seconds, and dropped as soon as any node rolls the app's key or disables it (the store's
change feed, see :meth:`Authenticator.forget_app`); a rolled key, or an app the operator
disabled, is still refused at once: the store checks the app's key version and status
inside the same transaction that takes the request's hold, and routes that take no hold
look the app up afresh.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import jwt

from gateway.errors import InvalidApiKey, InvalidRequest, InvalidSession, SessionExpired
from gateway.keys import (
    PUBLISHABLE_KEY_RE,
    SECRET_KEY_RE,
    KeyFormatError,
    parse_publishable_key,
    secret_key_hash,
)
from gateway.money import usd_to_nano
from gateway.store.base import App, Store
from gateway.tokens import AUDIENCE, MAX_LIFETIME_S, valid_user_id

CLOCK_SKEW_S = 30
APP_CACHE_TTL_S = 5.0
TOKEN_CACHE_MAX = 100_000
# Every route refuses a request carrying the user header twice (see routes.user_header).
ONE_USER_HEADER = "Send one 'Wattfare-User' header, not several."

K = TypeVar("K", bound=Hashable)

CredentialKind = Literal["session", "secret", "publishable"]


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: an app, and (except for publishable keys) one of its users."""

    app: App
    kind: CredentialKind
    user_id: str | None
    requested_cap_nano: int | None = None
    expires_at: float | None = None


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise InvalidApiKey("Missing credentials: send 'Authorization: Bearer <key or token>'.")
    scheme, _, value = authorization.partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value:
        raise InvalidApiKey("Malformed Authorization header: expected 'Bearer <key or token>'.")
    return value


def _cap_from_claims(claims: dict[str, Any]) -> int | None:
    lim = claims.get("lim")
    if lim is None:
        return None
    if not isinstance(lim, dict):
        raise InvalidSession("Session token claim 'lim' must be an object.")
    usd = lim.get("monthly_usd")
    if usd is None:
        return None
    try:
        return usd_to_nano(usd)
    except ValueError as exc:
        raise InvalidSession(f"Session token claim 'lim.monthly_usd' {exc}.") from None


async def _cached_app(
    cache: dict[K, tuple[App | None, float]],
    key: K,
    *,
    fresh: bool,
    fetch: Callable[[K], Awaitable[App | None]],
) -> App | None:
    """An app (or its absence) looked up by ``fetch``, kept ``APP_CACHE_TTL_S``; ``fresh``
    skips the cached answer. An app found disabled is looked up again each time, so one
    the operator enables again works at once."""
    now = time.monotonic()
    hit = cache.get(key)
    if (
        hit is not None
        and not fresh
        and hit[1] > now
        and (hit[0] is None or hit[0].status == "active")
    ):
        return hit[0]
    app = await fetch(key)
    if len(cache) > TOKEN_CACHE_MAX:
        cache.clear()
    cache[key] = (app, now + APP_CACHE_TTL_S)
    return app


def _check_status(app: App, error: type[InvalidApiKey] | type[InvalidSession]) -> None:
    """Refuse an app the operator disabled or deleted (``wattfare apps disable``)."""
    if app.status == "disabled":
        raise error("This app is disabled by the gateway's operator.")
    if app.status != "active":
        raise error("This app was deleted by the gateway's operator.")


def _forget(cache: dict[K, tuple[App | None, float]], app_id: str) -> None:
    for key in [k for k, (app, _) in cache.items() if app is not None and app.id == app_id]:
        del cache[key]


class Authenticator:
    """Verifies credentials against the store's app table. One per process."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock
        self._tokens: dict[str, Principal] = {}
        self._apps_by_pk: dict[str, tuple[App | None, float]] = {}
        self._apps_by_hash: dict[bytes, tuple[App | None, float]] = {}

    async def authenticate(
        self,
        authorization: str | None,
        user_header: str | None,
        *,
        allow: frozenset[CredentialKind],
        fresh: bool = False,
    ) -> Principal:
        """The caller, or an error of the :mod:`gateway.errors` tree.

        ``fresh`` skips the app cache (routes that must see a rolled key at once and do
        not take a hold).
        """
        value = _bearer(authorization)
        if value.startswith("sk_"):
            if "secret" not in allow:
                raise InvalidApiKey("A secret key cannot be used on this route.")
            return await self._secret(value, user_header, fresh=fresh)
        if value.startswith("pk_"):
            if "publishable" not in allow:
                raise InvalidApiKey(
                    "A publishable key cannot be used on this route: use a session token."
                )
            return await self._publishable(value, fresh=fresh)
        if value.count(".") != 2:
            raise InvalidApiKey("Unrecognised credential: expected a session token or API key.")
        if "session" not in allow:
            raise InvalidSession("A session token cannot be used on this route.")
        return await self._session(value, fresh=fresh)

    def forget_app(self, app_id: str) -> None:
        """Drop everything cached about an app (its key was rolled or it was disabled,
        maybe on another node): its next credential is checked against the store."""
        _forget(self._apps_by_pk, app_id)
        _forget(self._apps_by_hash, app_id)
        for token in [t for t, p in self._tokens.items() if p.app.id == app_id]:
            del self._tokens[token]

    # -- app lookups (cached briefly) ---------------------------------------------------

    async def _app_by_pk(self, publishable_key: str, *, fresh: bool) -> App | None:
        return await _cached_app(self._apps_by_pk, publishable_key, fresh=fresh,
                                 fetch=self._store.app_by_publishable_key)

    async def _app_by_hash(self, digest: bytes, *, fresh: bool) -> App | None:
        return await _cached_app(self._apps_by_hash, digest, fresh=fresh,
                                 fetch=self._store.app_by_secret_hash)

    # -- the three credentials ----------------------------------------------------------

    async def _secret(self, key: str, user_header: str | None, *, fresh: bool) -> Principal:
        if SECRET_KEY_RE.match(key) is None:
            raise InvalidApiKey("Malformed secret key.")
        digest = secret_key_hash(key)
        app = await self._app_by_hash(digest, fresh=fresh)
        if app is None or not hmac.compare_digest(app.secret_hash, digest):
            raise InvalidApiKey("Unknown or rolled secret key.")
        _check_status(app, InvalidApiKey)
        if user_header is None:
            return Principal(app=app, kind="secret", user_id=None)
        if not valid_user_id(user_header):
            raise InvalidRequest(
                "Header 'Wattfare-User' must be 1-256 printable characters.",
                param="Wattfare-User",
            )
        return Principal(app=app, kind="secret", user_id=user_header)

    async def _publishable(self, key: str, *, fresh: bool) -> Principal:
        if PUBLISHABLE_KEY_RE.match(key) is None:
            raise InvalidApiKey("Malformed publishable key.")
        app = await self._app_by_pk(key, fresh=fresh)
        if app is None:
            raise InvalidApiKey("Unknown or rolled publishable key.")
        _check_status(app, InvalidApiKey)
        return Principal(app=app, kind="publishable", user_id=None)

    async def _session(self, token: str, *, fresh: bool) -> Principal:
        now = self._clock()
        cached = self._tokens.get(token)
        if cached is not None:
            assert cached.expires_at is not None
            if now > cached.expires_at + CLOCK_SKEW_S:
                del self._tokens[token]
                raise SessionExpired("Session token has expired.")
            if not fresh:
                return cached
        principal = await self._verify(token, now=now, fresh=fresh)
        if len(self._tokens) >= TOKEN_CACHE_MAX:
            self._evict(now)
        self._tokens[token] = principal
        return principal

    def _evict(self, now: float) -> None:
        expired = [
            t for t, p in self._tokens.items()
            if p.expires_at is None or p.expires_at + CLOCK_SKEW_S < now
        ]
        for t in expired:
            del self._tokens[t]
        if len(self._tokens) >= TOKEN_CACHE_MAX:
            self._tokens.clear()

    async def _verify(self, token: str, *, now: float, fresh: bool) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise InvalidSession("Malformed session token.") from None
        if header.get("alg") != "EdDSA":
            raise InvalidSession("Session tokens must be signed with EdDSA.")
        kid = header.get("kid")
        if not isinstance(kid, str) or PUBLISHABLE_KEY_RE.match(kid) is None:
            raise InvalidSession("Session token names no known app ('kid').")
        app = await self._app_by_pk(kid, fresh=fresh)
        if app is None:
            raise InvalidSession("Session token names an unknown or rolled app.")
        _check_status(app, InvalidSession)
        try:
            _, public_key = parse_publishable_key(kid)
        except KeyFormatError:
            raise InvalidSession("Session token names no known app ('kid').") from None
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                public_key,
                algorithms=["EdDSA"],
                audience=AUDIENCE,
                issuer=kid,
                leeway=CLOCK_SKEW_S,
                options={"require": ["iss", "sub", "aud", "iat", "exp"]},
            )
        except jwt.ExpiredSignatureError:
            raise SessionExpired("Session token has expired.") from None
        except jwt.ImmatureSignatureError:
            raise InvalidSession(
                "Session token is not valid yet (iat or nbf in the future)."
            ) from None
        except jwt.InvalidTokenError as exc:
            raise InvalidSession(f"Invalid session token: {exc}.") from None
        iat, exp = claims["iat"], claims["exp"]
        if not isinstance(iat, (int, float)) or not isinstance(exp, (int, float)):
            raise InvalidSession("Session token 'iat' and 'exp' must be numbers.")
        if exp - iat > MAX_LIFETIME_S:
            raise InvalidSession(f"Session token lifetime exceeds {MAX_LIFETIME_S} seconds.")
        if exp <= iat:
            raise InvalidSession("Session token expires before it is issued.")
        sub = claims["sub"]
        if not valid_user_id(sub):
            raise InvalidSession("Session token 'sub' must be 1-256 printable characters.")
        return Principal(
            app=app,
            kind="session",
            user_id=sub,
            requested_cap_nano=_cap_from_claims(claims),
            expires_at=float(exp),
        )
