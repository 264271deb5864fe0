"""The upstream (OpenRouter): one shared HTTP client, the cached model list, and the one
place where upstream failures become gateway errors.

The client keeps httpx's API. Its transport is chosen by configuration, and by default
is aiohttp's (through ``httpx-aiohttp``, with the shorter per-request path of
:mod:`gateway.transport`): httpx's own connection pool scans every pooled connection per
request, so its throughput falls as concurrency rises (bench/ measures both).

Chat completions go straight to the client's transport with a request built here. The
client's own pipeline (cookie jar, auth flow, redirects, event hooks) is what a proxy
must not have: a cookie set by the upstream for one user's request would ride along with
everyone else's, and a redirect is an upstream answer to pass on, not to follow. Skipping
it also saves about 90 µs of CPU per request (``python -m bench.cpu`` shows the paths).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator

import aiohttp
import httpx
import orjson

from gateway import __version__
from gateway.config import UpstreamSettings
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    RateLimited,
    RequestTooLarge,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.metering import Catalog

log = logging.getLogger("wattfare.upstream")

ERROR_BODY_LIMIT = 64 * 1024
USER_AGENT = f"wattfare/{__version__}".encode()


def make_transport(settings: UpstreamSettings) -> httpx.AsyncBaseTransport:
    limits = httpx.Limits(
        max_connections=settings.max_connections,
        max_keepalive_connections=settings.max_connections,
        keepalive_expiry=30.0,
    )
    if settings.transport == "aiohttp":
        from gateway.transport import FastAiohttpTransport

        return FastAiohttpTransport(limits=limits)
    return httpx.AsyncHTTPTransport(limits=limits)


def _timeout(settings: UpstreamSettings) -> httpx.Timeout:
    # read=None: the proxy enforces first-byte and idle timeouts itself, because
    # they differ and a socket read timeout cannot tell them apart.
    return httpx.Timeout(
        connect=settings.connect_timeout_s,
        read=None,
        write=settings.connect_timeout_s,
        pool=settings.connect_timeout_s,
    )


def _operator_headers(settings: UpstreamSettings) -> list[tuple[bytes, bytes]]:
    """What every upstream request carries: the operator's key and who is asking."""
    return [
        (b"User-Agent", USER_AGENT),
        (b"Authorization", f"Bearer {settings.api_key}".encode("latin-1")),
    ]


def make_client(
    settings: UpstreamSettings, transport: httpx.AsyncBaseTransport
) -> httpx.AsyncClient:
    """The shared client (model list and other calls) over the shared transport."""
    return httpx.AsyncClient(
        base_url=settings.base_url + "/",
        timeout=_timeout(settings),
        transport=transport,
        headers=_operator_headers(settings),
        follow_redirects=False,
    )


@contextlib.contextmanager
def mapped_transport_errors(phase: str) -> Iterator[None]:
    """httpx's transport errors → gateway errors (details to the log, not the caller)."""
    try:
        yield
    except TimeoutError:
        raise UpstreamTimeout(f"The upstream did not answer in time ({phase}).") from None
    except httpx.TimeoutException as exc:
        cause = exc.__cause__
        if isinstance(cause, aiohttp.ClientConnectionError) and not isinstance(
            cause, TimeoutError
        ):
            # httpx-aiohttp reports every aiohttp connection error as ConnectTimeout; a
            # connection the upstream closed or reset is a failure, not a timeout.
            log.warning("upstream connection error during %s: %r", phase, cause)
            raise UpstreamError(f"The upstream connection failed ({phase}).") from exc
        raise UpstreamTimeout(f"The upstream did not answer in time ({phase}).") from exc
    except httpx.TransportError as exc:
        log.warning("upstream transport error during %s: %r", phase, exc)
        raise UpstreamError(f"The upstream connection failed ({phase}).") from exc


def error_from_upstream(status: int, body: bytes, headers: httpx.Headers) -> GatewayError:
    """An upstream error response → the gateway's error for the caller.

    401/402/403 are the operator's problem (key, credit): the caller sees 502 and the
    details stay in the log.
    """
    message = ""
    try:
        doc = orjson.loads(body)
        if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
            message = str(doc["error"].get("message") or "")
    except orjson.JSONDecodeError:
        pass
    message = message[:500]
    if status in (401, 402, 403):
        log.error("upstream refused the operator's request: %s %s", status, message)
        return UpstreamError("The upstream refused the gateway's request (operator account).")
    if status == 404 or (status == 400 and "model" in message.lower() and "valid" in message):
        return ModelNotFound(message or "The model is not offered upstream.", param="model")
    if status == 400:
        return InvalidRequest(message or "The upstream rejected the request.")
    if status == 408:
        return UpstreamTimeout(message or "The upstream timed out.")
    if status == 413:
        return RequestTooLarge(message or "The request is too large for the upstream.")
    if status == 429:
        retry = headers.get("retry-after")
        return RateLimited(
            message or "The upstream rate-limited the request.",
            headers={"retry-after": retry} if retry else None,
        )
    log.warning("upstream error %s: %s", status, message)
    return UpstreamError(f"The upstream failed with status {status}.")


def error_in_body(raw: bytes) -> int | None:
    """The status of an OpenRouter error object answered with a 200 (``{"error":
    {"code": …}}``): its code when that is an HTTP error status, else 502; None when the
    body is not such an object."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), dict):
        return None
    code = doc["error"].get("code")
    return code if isinstance(code, int) and 400 <= code < 600 else 502


def generation_id_of(headers: httpx.Headers) -> str | None:
    """The upstream's ``X-Generation-Id``, when it is one the gateway can pass on as a
    header and keep in the ledger (printable ASCII); else None."""
    value: str | None = headers.get("x-generation-id")
    if value and len(value) <= 256 and value.isascii() and value.isprintable():
        return value
    return None


class Upstream:
    """The shared client and the model list it caches (refreshed in the background)."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        self.transport = make_transport(settings)
        self.client = make_client(settings, self.transport)
        # Absolute URLs parsed once: httpx parses a string URL on every request.
        self.chat_url = httpx.URL(settings.base_url + "/chat/completions")
        self.models_url = httpx.URL(settings.base_url + "/models")
        self._chat_timeout = _timeout(settings).as_dict()
        self._chat_headers = {
            accept: [
                *_operator_headers(settings),
                (b"Content-Type", b"application/json"),
                (b"Accept", accept.encode("latin-1")),
                (b"Accept-Encoding", b"identity"),
            ]
            for accept in ("text/event-stream", "application/json")
        }
        self._catalog: Catalog | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()
        self._refresh: asyncio.Task[None] | None = None

    async def open_chat(self, body: bytes, *, accept: str) -> httpx.Response:
        """Send a chat completion with the operator's key; the response, once its
        headers arrive (within the first-byte timeout), with its body unread."""
        request = httpx.Request(
            "POST", self.chat_url, content=body, headers=self._chat_headers[accept],
            extensions={"timeout": self._chat_timeout},
        )
        with mapped_transport_errors("waiting for the response"):
            async with asyncio.timeout(self.settings.first_byte_timeout_s):
                return await self.transport.handle_async_request(request)

    async def catalog(self) -> Catalog:
        """The model list: cached; a stale copy is served while a fresh one is fetched."""
        current = self._catalog
        if current is not None:
            if time.monotonic() - self._fetched_at > self.settings.models_ttl_s and (
                self._refresh is None or self._refresh.done()
            ):
                self._refresh = asyncio.create_task(self._fetch_quietly())
            return current
        async with self._lock:
            if self._catalog is None:
                await self._fetch()
            assert self._catalog is not None
            return self._catalog

    async def _fetch_quietly(self) -> None:
        try:
            async with self._lock:
                await self._fetch()
        except GatewayError as exc:
            log.warning("model list refresh failed, serving the cached one: %s", exc.message)

    async def _fetch(self) -> None:
        with mapped_transport_errors("model list"):
            async with asyncio.timeout(self.settings.first_byte_timeout_s):
                response = await self.client.get(
                    self.models_url, headers={"Accept": "application/json"}
                )
                body = await response.aread()
        if response.status_code != 200:
            raise error_from_upstream(
                response.status_code, body[:ERROR_BODY_LIMIT], response.headers
            )
        try:
            self._catalog = Catalog.parse(body)
        except ValueError as exc:
            log.error("upstream model list unusable: %s", exc)
            raise UpstreamError("The upstream's model list is unusable.") from exc
        self._fetched_at = time.monotonic()

    async def aclose(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
        await self.client.aclose()
