"""``Wattfare``, the app backend's handle on the gateway, and ``UserClient``."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from gateway.keys import KeyFormatError, publishable_key_for
from gateway.tokens import MAX_LIFETIME_S, mint_session_token, valid_user_id
from wattfare._session import RenewingToken, Session

if TYPE_CHECKING:
    import openai as openai_sdk

DEFAULT_BASE_URL = "http://127.0.0.1:8787"

# Arguments of the openai constructors that UserClient owns: passing them would point the
# client elsewhere or replace the renewing session token with a fixed credential.
_RESERVED_OPENAI_KWARGS = frozenset(
    {"api_key", "admin_api_key", "base_url", "data_residency", "provider", "workload_identity"}
)


def _check_secret_key(secret_key: object) -> str:
    """The publishable key of a well-formed secret key; never repeats the input."""
    if isinstance(secret_key, str):
        try:
            return publishable_key_for(secret_key)
        except KeyFormatError:
            pass
    if isinstance(secret_key, str) and secret_key.startswith(("pk_test_", "pk_live_")):
        raise ValueError(
            "secret_key is a publishable key; pass the app's secret key (sk_test_… or sk_live_…)"
        )
    # Raised outside the `except` block, so no chained exception comes along; the
    # message names only the expected form, never the input.
    raise ValueError(
        "secret_key is malformed: expected sk_test_… or sk_live_… followed by "
        "43 base64url characters, as printed by `wattfare apps create`"
    )


def _check_cap(value: object, *, name: str) -> float | None:
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{name} must be a non-negative number of USD, or None")
    return float(value)


def _check_user_id(user_id: object) -> str:
    if not valid_user_id(user_id):
        raise ValueError("user_id must be a string of 1-256 printable characters")
    assert isinstance(user_id, str)
    return user_id


def _check_base_url(base_url: object) -> str:
    if not isinstance(base_url, str):
        raise ValueError("base_url must be a string such as 'http://127.0.0.1:8787'")
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError("base_url must be an http:// or https:// URL of the gateway")
    if parts.query or parts.fragment:
        raise ValueError("base_url must not carry a query or a fragment")
    root = base_url.rstrip("/")
    if root.endswith("/v1"):
        raise ValueError(
            "base_url is the gateway's root (its public_url, e.g. 'http://127.0.0.1:8787'), "
            "without '/v1'"
        )
    return root


def _missing_openai() -> ImportError:
    return ImportError(
        "Wattfare's OpenAI clients need the openai package: pip install openai"
    )


def _openai_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    reserved = sorted(_RESERVED_OPENAI_KWARGS.intersection(kwargs))
    if reserved:
        raise TypeError(
            f"{', '.join(reserved)} cannot be passed: UserClient points the client at the "
            "gateway and authenticates it with a renewing session token"
        )
    headers = kwargs.get("default_headers") or {}
    if any(name.lower() == "authorization" for name in headers):
        raise ValueError(
            "default_headers must not set Authorization: it would replace the renewing "
            "session token"
        )
    return dict(kwargs)


class UserClient:
    """OpenAI clients that act for one of the app's users, through the gateway.

    Made by :meth:`Wattfare.user`. Each client authenticates with a session token for
    ``user_id`` that is re-minted locally whenever fewer than 60 seconds of its life remain,
    so one long-lived client keeps working indefinitely. Both clients of one ``UserClient``
    share that token.
    """

    def __init__(self, *, base_url: str, token: RenewingToken) -> None:
        self._base_url = base_url
        self._token = token

    def __repr__(self) -> str:
        return f"UserClient(user_id={self._token.user_id!r}, base_url={self._base_url!r})"

    @property
    def user_id(self) -> str:
        """The app's id for the user this client acts for."""
        return self._token.user_id

    # How the token reaches each request: openai 3.x accepts a callable as `api_key`
    # (`Callable[[], str]` for OpenAI, `Callable[[], Awaitable[str]]` for AsyncOpenAI).
    # Its `_prepare_options` calls it for every bearer-authenticated request, once per
    # attempt including retries, and pins the result into that request's Authorization
    # header. That is the library's own refresh hook, so it survives `with_options()` /
    # `copy()` and leaves `http_client` free for the caller. The alternatives were worse:
    # overriding the `auth_headers` property relies on private plumbing that this version
    # already bypasses for callable keys, and an httpx2 auth object would require owning
    # the `http_client`.

    def openai(self, **kwargs: Any) -> openai_sdk.OpenAI:
        """An ``openai.OpenAI`` pointed at ``{base_url}/v1``, acting for this user.

        Keyword arguments go to the ``openai.OpenAI`` constructor (``timeout``,
        ``max_retries``, ``http_client``, ``default_headers``…), except those that would
        change where it points or how it authenticates.
        """
        try:
            from openai import OpenAI
        except ImportError as exc:
            raise _missing_openai() from exc
        return OpenAI(
            api_key=self._token.bearer,
            base_url=f"{self._base_url}/v1",
            **_openai_kwargs(kwargs),
        )

    def async_openai(self, **kwargs: Any) -> openai_sdk.AsyncOpenAI:
        """An ``openai.AsyncOpenAI`` pointed at ``{base_url}/v1``, acting for this user.

        Keyword arguments are handled as in :meth:`openai`. Renewing the token never
        blocks the event loop: it is a local signature, with no I/O.
        """
        try:
            from openai import AsyncOpenAI
        except ImportError as exc:
            raise _missing_openai() from exc
        return AsyncOpenAI(
            api_key=self._token.async_bearer,
            base_url=f"{self._base_url}/v1",
            **_openai_kwargs(kwargs),
        )


class Wattfare:
    """An app's server-side handle on a Wattfare gateway.

    Holds the app's secret key, which must stay on the app's backend. Nothing this object
    prints, raises or logs contains that key.

    ``clock`` returns the current time in epoch seconds; it exists so tests can move time.
    """

    def __init__(
        self,
        secret_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        default_monthly_usd: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._publishable_key = _check_secret_key(secret_key)
        self._secret_key = secret_key
        self._base_url = _check_base_url(base_url)
        self._default_monthly_usd = _check_cap(default_monthly_usd, name="default_monthly_usd")
        self._clock = clock

    def __repr__(self) -> str:
        return f"Wattfare(publishable_key={self._publishable_key!r}, base_url={self._base_url!r})"

    @property
    def publishable_key(self) -> str:
        """The app's publishable key (``pk_test_…``/``pk_live_…``), safe to show a browser."""
        return self._publishable_key

    @property
    def base_url(self) -> str:
        """The gateway's root URL, without a trailing slash."""
        return self._base_url

    def _cap(self, monthly_usd: float | None) -> float | None:
        if monthly_usd is None:
            return self._default_monthly_usd
        return _check_cap(monthly_usd, name="monthly_usd")

    def create_session(
        self, user_id: str, *, monthly_usd: float | None = None, ttl_s: int = MAX_LIFETIME_S
    ) -> Session:
        """Mint a session token for ``user_id`` locally, with no network call.

        ``monthly_usd`` is the cap the app asks the user to approve (default:
        ``default_monthly_usd``); ``ttl_s`` is the token's lifetime, 1 to 600 seconds.
        ``Session.to_dict()`` is what to send the browser. Raises ValueError for a
        malformed user id, cap or lifetime.
        """
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, int):
            raise ValueError(f"ttl_s must be an integer between 1 and {MAX_LIFETIME_S}")
        minted = mint_session_token(
            self._secret_key,
            _check_user_id(user_id),
            monthly_usd=self._cap(monthly_usd),
            ttl_s=ttl_s,
            now=self._clock(),
        )
        return Session(token=minted.token, expires_at=minted.expires_at, user_id=minted.user_id)

    def user(self, user_id: str, *, monthly_usd: float | None = None) -> UserClient:
        """OpenAI clients acting for ``user_id``, with session tokens renewed automatically.

        Raises ValueError for a malformed user id or cap.
        """
        token = RenewingToken(
            secret_key=self._secret_key,
            user_id=_check_user_id(user_id),
            monthly_usd=self._cap(monthly_usd),
            clock=self._clock,
        )
        return UserClient(base_url=self._base_url, token=token)

    def headers_for(self, user_id: str) -> dict[str, str]:
        """Headers for a server-to-server call made for ``user_id`` with the secret key.

        ``{"Authorization": "Bearer sk_…", "Wattfare-User": user_id}``, accepted by the
        routes that take a secret key and a ``Wattfare-User`` header (chat completions,
        ``/v1/connection``). Backend only: these headers carry the secret key and must
        never reach a browser. The user id travels in an HTTP header, so it must be
        ASCII here; other ids can use session tokens.
        """
        user_id = _check_user_id(user_id)
        if not user_id.isascii():
            raise ValueError(
                "user_id must be ASCII to travel in the Wattfare-User header; "
                "use a session token for other user ids"
            )
        return {"Authorization": f"Bearer {self._secret_key}", "Wattfare-User": user_id}
