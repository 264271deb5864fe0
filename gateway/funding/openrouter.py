"""OpenRouter's OAuth PKCE ("Sign in with OpenRouter"), as its docs describe it.

The person is sent to ``<openrouter_auth_url>?callback_url=…&code_challenge=…&
code_challenge_method=S256``; OpenRouter sends them back to the callback with ``?code=``;
the code and the verifier are exchanged at ``POST <upstream>/auth/keys`` (``{code,
code_verifier, code_challenge_method}`` → ``{key, user_id}``) for a key billed to that
person's own credits. OpenRouter has no ``state`` parameter, so the attempt's ``state``
rides in the callback URL's path, on the gateway's own origin.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from urllib.parse import urlencode

import orjson

from gateway.upstreams import Upstreams
from gateway.upstreams.base import USER_AGENT, Upstream
from gateway.upstreams.errors import mapped_transport_errors

log = logging.getLogger("wattfare.funding")

PROVIDER = "openrouter"
CALLBACK_PATH = "/funding/openrouter/callback/"
EXCHANGE_TIMEOUT_S = 15.0
MAX_KEY_CHARS = 512


class ExchangeFailed(Exception):
    """The code was not exchanged; the message is for the person (never a secret)."""


@dataclass(frozen=True, slots=True)
class IssuedKey:
    key: str
    user_id: str | None


def callback_url(public_url: str, state: str) -> str:
    return f"{public_url}{CALLBACK_PATH}{state}"


def authorization_url(auth_url: str, *, callback: str, challenge: str) -> str:
    query = urlencode(
        {"callback_url": callback, "code_challenge": challenge, "code_challenge_method": "S256"}
    )
    return f"{auth_url}{'&' if '?' in auth_url else '?'}{query}"


def _usable_key(value: object) -> str | None:
    if (
        isinstance(value, str) and 0 < len(value) <= MAX_KEY_CHARS
        and value.isascii() and value.isprintable() and " " not in value
    ):
        return value
    return None


def openrouter_of(upstreams: Upstreams) -> Upstream | None:
    """The OpenRouter upstream people's keys are for (the first one configured)."""
    return next((u for u in upstreams.all if u.kind == PROVIDER), None)


async def exchange_code(upstreams: Upstreams, *, code: str, verifier: str) -> IssuedKey:
    """The key the code stands for. The request carries no key of the operator's."""
    upstream = openrouter_of(upstreams)
    if upstream is None:
        raise ExchangeFailed("This gateway has no OpenRouter upstream to connect.")
    client = upstreams.client
    request = client.build_request(
        "POST", upstream.settings.base_url + "/auth/keys",
        content=orjson.dumps(
            {"code": code, "code_verifier": verifier, "code_challenge_method": "S256"}
        ),
        headers={"Content-Type": "application/json", "Accept": "application/json",
                 "User-Agent": USER_AGENT.decode()},
        timeout=EXCHANGE_TIMEOUT_S,
    )
    request.headers.pop("Authorization", None)
    try:
        with mapped_transport_errors("funding code exchange"):
            response = await client.send(request)
            body = await response.aread()
    except Exception as exc:  # a gateway error from the mapper, or anything else
        log.warning("OpenRouter code exchange failed: %s", type(exc).__name__)
        raise ExchangeFailed("OpenRouter could not be reached. Please try again.") from None
    if response.status_code != 200:
        log.warning("OpenRouter refused the code exchange with status %s", response.status_code)
        raise ExchangeFailed(
            "OpenRouter did not accept this sign-in (it may have expired). Please try again."
        )
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        doc = None
    key = _usable_key(doc.get("key")) if isinstance(doc, dict) else None
    if key is None or not isinstance(doc, dict):
        log.warning("OpenRouter's code exchange answered without a usable key")
        raise ExchangeFailed("OpenRouter answered unexpectedly. Please try again.")
    user_id = doc.get("user_id")
    return IssuedKey(
        key=key, user_id=user_id if isinstance(user_id, str) and user_id.isprintable() else None
    )
