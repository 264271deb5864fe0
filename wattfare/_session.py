"""Session tokens as the server SDK hands them out, and the cache that renews them."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.tokens import MAX_LIFETIME_S, MintedToken, mint_session_token

# A cached token is replaced once fewer than this many seconds of its life remain, so a
# request that leaves now still arrives well inside the gateway's 30 s skew allowance.
RENEW_BEFORE_S = 60


@dataclass(frozen=True, slots=True)
class Session:
    """A session token for one of the app's users, ready to hand to that user's browser.

    ``token`` is a bearer credential for ten minutes at most: it is left out of ``repr``
    so that logging a ``Session`` does not leak it.
    """

    token: str = field(repr=False)
    expires_at: int
    user_id: str

    def to_dict(self) -> dict[str, str | int]:
        """The JSON body ``POST /v1/sessions`` returns: ``{"token", "expires_at", "user_id"}``."""
        return {"token": self.token, "expires_at": self.expires_at, "user_id": self.user_id}


class RenewingToken:
    """The current session token of one user, re-minted shortly before it expires.

    Minting is a local Ed25519 signature (tens of microseconds, no I/O), so renewal is
    done inline under a plain ``threading.Lock``: threads sharing one OpenAI client never
    mint twice for the same window, and an event loop that calls in is never held up for
    longer than one signature.
    """

    def __init__(
        self,
        *,
        secret_key: str,
        user_id: str,
        monthly_usd: float | None,
        clock: Callable[[], float],
    ) -> None:
        self._secret_key = secret_key
        self._user_id = user_id
        self._monthly_usd = monthly_usd
        self._clock = clock
        self._lock = threading.Lock()
        # Minting once up front validates the user id and the cap where the caller can
        # see the mistake, not at the first request.
        self._current = self._mint()

    def __repr__(self) -> str:
        return f"RenewingToken(user_id={self._user_id!r})"

    @property
    def user_id(self) -> str:
        return self._user_id

    def _mint(self) -> MintedToken:
        return mint_session_token(
            self._secret_key,
            self._user_id,
            monthly_usd=self._monthly_usd,
            ttl_s=MAX_LIFETIME_S,
            now=self._clock(),
        )

    def bearer(self) -> str:
        """A token with at least ``RENEW_BEFORE_S`` seconds of life left."""
        with self._lock:
            if self._current.expires_at - self._clock() < RENEW_BEFORE_S:
                self._current = self._mint()
            return self._current.token

    async def async_bearer(self) -> str:
        """``bearer()`` for ``AsyncOpenAI``, whose ``api_key`` callable must be awaitable."""
        return self.bearer()
