"""CORS and browser rules for the API (``/v1/…``), as plain ASGI around the whole app.

It must sit outside Starlette because the chat completion route is dispatched before
the router. Only requests that carry an ``Origin`` header (browsers) are touched:

- A preflight carries no credentials, so it cannot tell which app is calling: it is
  allowed for any origin that *some* active app registered, and refused otherwise.
- The actual request carries its token. Its app is named in the token's header (``kid``)
  or is the publishable key itself; the origin must be one of *that* app's registered
  origins, else ``403 origin_not_allowed``. Reading ``kid`` unverified is safe here: it
  only picks which origins to compare, and the route verifies the token as always.
- A secret key from a browser is refused (``401 invalid_api_key``): it must never be in
  a page, and answering it would teach a developer that it works.

Responses to registered origins get ``Access-Control-Allow-Origin: <that origin>`` (never
``*``) and ``Vary: Origin``. No cookies are involved, so no ``Allow-Credentials``.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Awaitable, Callable

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import GatewayError, InvalidApiKey, OriginNotAllowed
from gateway.http import send_error
from gateway.state import GatewayState

API_PREFIX = "/v1/"
REFRESH_S = 5.0
MISS_REFRESH_S = 1.0
ALLOW_METHODS = "GET, POST, DELETE, OPTIONS"
ALLOW_HEADERS = "authorization, content-type"
EXPOSE_HEADERS = "x-request-id, x-generation-id, retry-after"
MAX_AGE_S = "600"


def _kid(token: str) -> str | None:
    """The ``kid`` of a JWS compact token's header, unverified; None if unreadable."""
    head = token.split(".", 1)[0]
    try:
        header = orjson.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return None
    kid = header.get("kid") if isinstance(header, dict) else None
    return kid if isinstance(kid, str) else None


class _Origins:
    """Registered origins, per publishable key and all together, refreshed every few
    seconds (and sooner on a miss, so a newly created app works within a second)."""

    def __init__(self) -> None:
        self.by_key: dict[str, frozenset[str]] = {}
        self.all: frozenset[str] = frozenset()
        self._loaded = -1e9

    async def refresh(self, state: GatewayState, *, miss: bool) -> None:
        age = time.monotonic() - self._loaded
        if age < (MISS_REFRESH_S if miss else REFRESH_S):
            return
        self._loaded = time.monotonic()
        apps = [a for a in await state.store.list_apps() if a.status == "active"]
        self.by_key = {a.publishable_key: frozenset(a.origins) for a in apps}
        self.all = frozenset(o for a in apps for o in a.origins)


class BrowserGuard:
    """The middleware. ``state`` returns the gateway's state while its lifespan runs."""

    def __init__(self, app: ASGIApp, *, state: Callable[[], GatewayState | None]) -> None:
        self.app = app
        self._state = state
        self._origins = _Origins()

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # A request with no Origin (a backend, the SDKs) goes straight to the app: the
        # app's coroutine is returned, so this layer keeps no frame for a stream's life.
        if scope["type"] != "http" or not scope["path"].startswith(API_PREFIX):
            return self.app(scope, receive, send)
        origin = authorization = request_method = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value.decode("latin-1").lower()
            elif name == b"authorization":
                authorization = value.decode("latin-1")
            elif name == b"access-control-request-method":
                request_method = value
        state = self._state()
        if origin is None or state is None:
            return self.app(scope, receive, send)
        return self._browser(
            scope, receive, send, state=state, origin=origin, authorization=authorization,
            request_method=request_method,
        )

    async def _browser(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        state: GatewayState,
        origin: str,
        authorization: str | None,
        request_method: bytes | None,
    ) -> None:
        origins = self._origins
        await origins.refresh(state, miss=False)
        if origin not in origins.all:
            await origins.refresh(state, miss=True)
        known = origin in origins.all
        cors = self._headers(origin) if known else []
        if scope["method"] == "OPTIONS" and request_method is not None:
            await self._preflight(scope, send, origin=origin, known=known)
            return
        credential = (authorization or "").partition(" ")[2].strip()
        if credential.startswith("sk_"):
            await self._refuse(scope, send, cors, InvalidApiKey(
                "A secret key cannot be used from a browser: keep it on the app's backend "
                "and give the page a session token."
            ))
            return
        key = credential if credential.startswith("pk_") else _kid(credential)
        if key is not None:
            allowed = origins.by_key.get(key)
            if allowed is None:
                await origins.refresh(state, miss=True)
                allowed = origins.by_key.get(key)
            if allowed is not None and origin not in allowed:
                await self._refuse(scope, send, cors, OriginNotAllowed(
                    f"The origin {origin} is not registered for this app."
                ))
                return
        if not cors:
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *cors]}
            await send(message)

        await self.app(scope, receive, send_with_cors)

    @staticmethod
    def _headers(origin: str) -> list[tuple[bytes, bytes]]:
        return [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"access-control-expose-headers", EXPOSE_HEADERS.encode()),
            (b"vary", b"Origin"),
        ]

    @staticmethod
    async def _preflight(scope: Scope, send: Send, *, origin: str, known: bool) -> None:
        if not known:
            error = OriginNotAllowed(
                f"The origin {origin} is not registered for any app.", headers={"vary": "Origin"}
            )
            await send_error(scope, send, error)
            return
        await send({
            "type": "http.response.start",
            "status": 204,
            "headers": [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-allow-methods", ALLOW_METHODS.encode()),
                (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
                (b"access-control-max-age", MAX_AGE_S.encode()),
                (b"vary", b"Origin"),
            ],
        })
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _refuse(
        scope: Scope, send: Send, cors: list[tuple[bytes, bytes]], error: GatewayError
    ) -> None:
        error.headers.update({k.decode(): v.decode("latin-1") for k, v in cors})
        await send_error(scope, send, error)
