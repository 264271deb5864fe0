"""Minting session tokens: the 10-minute JWTs an app hands to its users' browsers.

Shared by ``POST /v1/sessions`` and the Python server SDK, so both produce the same
tokens. Verification lives in :mod:`gateway.auth`.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt

from gateway.keys import parse_secret_key, publishable_key_for

AUDIENCE = "wattfare"
MAX_LIFETIME_S = 600
USER_ID_MAX_LEN = 256


@dataclass(frozen=True, slots=True)
class MintedToken:
    token: str
    expires_at: int
    user_id: str


def valid_user_id(user_id: object) -> bool:
    """1–256 printable characters (no control characters)."""
    return (
        isinstance(user_id, str)
        and 0 < len(user_id) <= USER_ID_MAX_LEN
        and user_id.isprintable()
    )


def mint_session_token(
    secret_key: str,
    user_id: str,
    *,
    monthly_usd: float | None = None,
    ttl_s: int = MAX_LIFETIME_S,
    now: float | None = None,
) -> MintedToken:
    """Sign a session token for ``user_id`` with the app's secret key.

    Raises ValueError for a malformed key, user id, cap or lifetime.
    """
    _, private = parse_secret_key(secret_key)
    if not valid_user_id(user_id):
        raise ValueError("user_id must be 1-256 printable characters")
    if not 0 < ttl_s <= MAX_LIFETIME_S:
        raise ValueError(f"ttl_s must be between 1 and {MAX_LIFETIME_S}")
    issued = int(time.time() if now is None else now)
    publishable = publishable_key_for(secret_key)
    claims: dict[str, Any] = {
        "iss": publishable,
        "sub": user_id,
        "aud": AUDIENCE,
        "iat": issued,
        "exp": issued + ttl_s,
        "jti": secrets.token_urlsafe(12),
    }
    if monthly_usd is not None:
        if (
            isinstance(monthly_usd, bool)
            or not isinstance(monthly_usd, (int, float))
            or not math.isfinite(monthly_usd)
            or monthly_usd < 0
        ):
            raise ValueError("monthly_usd must be a non-negative number")
        claims["lim"] = {"monthly_usd": monthly_usd}
    token = jwt.encode(
        claims,
        private,
        algorithm="EdDSA",
        headers={"kid": publishable, "typ": "JWT"},
    )
    return MintedToken(token=token, expires_at=issued + ttl_s, user_id=user_id)
