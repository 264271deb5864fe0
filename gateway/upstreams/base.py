"""The upstream seam: what every kind of upstream provides, behind one small class.

The way httpx puts every transport behind ``AsyncBaseTransport``, every kind of upstream
(:mod:`gateway.upstreams.openrouter`, :mod:`gateway.upstreams.openai`) is one subclass of
:class:`Upstream` and owns everything that differs between them: the rewrites of the
request body, the model list and its prices, how usage becomes a cost, the after-the-fact
cost of a generation (where the upstream keeps one), and the mapping of its error
answers. Nothing of one kind leaks into the chat handler, which only calls these methods.

All kinds send over the gateway's one shared transport (one connection pool).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx

from gateway import __version__
from gateway.config import UpstreamSettings
from gateway.errors import GatewayError, UpstreamError
from gateway.metering import Price
from gateway.upstreams.errors import (
    ERROR_BODY_LIMIT,
    error_from_status,
    mapped_transport_errors,
)

log = logging.getLogger("wattfare.upstream")
USER_AGENT = f"wattfare/{__version__}".encode()


@dataclass(frozen=True, slots=True)
class Model:
    """One model an upstream serves: its price (None: the gateway cannot price it, so it
    is refused), the most completion tokens one request may ask for (None: unknown), and
    the upstream's own entry for the model list."""

    id: str
    price: Price | None
    max_completion_tokens: int | None
    entry: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Usage:
    """What a usage object says a request cost: nano-USD, where the figure came from
    (``upstream`` or ``tokens``), and the tokens."""

    cost_nano: int
    source: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Generation:
    """The upstream's own record of one generation, read after it ended."""

    cost_nano: int
    prompt_tokens: int
    completion_tokens: int


def _tokens(usage: dict[str, Any], key: str) -> int:
    value = usage.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class Upstream:
    """One configured upstream. Subclasses set :attr:`kind` and override the hooks."""

    kind: ClassVar[str] = ""
    # Whether the upstream keeps a record of each generation the gateway can look up.
    keeps_records: ClassVar[bool] = False

    def __init__(
        self, settings: UpstreamSettings, *, transport: httpx.AsyncBaseTransport,
        client: httpx.AsyncClient,
    ) -> None:
        self.settings = settings
        self.name = settings.name
        self.transport = transport
        self.client = client
        # Absolute URLs parsed once: httpx parses a string URL on every request.
        self.chat_url = httpx.URL(settings.base_url + "/chat/completions")
        self.models_url = httpx.URL(settings.base_url + "/models")
        # read=None: the relay enforces first-byte and idle timeouts itself, because
        # they differ and a socket read timeout cannot tell them apart.
        self.timeout = httpx.Timeout(
            connect=settings.connect_timeout_s, read=None,
            write=settings.connect_timeout_s, pool=settings.connect_timeout_s,
        )
        self._chat_timeout = self.timeout.as_dict()
        self._chat_headers = {
            accept: self._headers(settings.api_key, accept)
            for accept in ("text/event-stream", "application/json")
        }
        self._models: dict[str, Model] | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()
        self._refresh: asyncio.Task[None] | None = None

    # -- requests ---------------------------------------------------------------------

    @staticmethod
    def _headers(api_key: str, accept: str) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"User-Agent", USER_AGENT),
            (b"Content-Type", b"application/json"),
            (b"Accept", accept.encode("latin-1")),
            (b"Accept-Encoding", b"identity"),
        ]
        if api_key:
            headers.append((b"Authorization", f"Bearer {api_key}".encode("latin-1")))
        return headers

    def auth_headers(self, api_key: str | None = None) -> dict[str, str]:
        key = self.settings.api_key if api_key is None else api_key
        headers = {"User-Agent": USER_AGENT.decode()}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    async def open_chat(
        self, body: bytes, *, accept: str, api_key: str | None = None
    ) -> httpx.Response:
        """Send a chat completion (with the operator's key, or ``api_key`` when someone
        else funds it); the response once its head arrives (within the first-byte
        timeout), its body unread."""
        headers = (
            self._chat_headers[accept] if api_key is None else self._headers(api_key, accept)
        )
        request = httpx.Request(
            "POST", self.chat_url, content=body, headers=headers,
            extensions={"timeout": self._chat_timeout},
        )
        with mapped_transport_errors("waiting for the response"):
            async with asyncio.timeout(self.settings.first_byte_timeout_s):
                return await self.transport.handle_async_request(request)

    async def get_json(
        self, url: httpx.URL, *, params: dict[str, str] | None = None,
        api_key: str | None = None, phase: str,
    ) -> tuple[int, bytes, httpx.Headers]:
        """A small GET (model list, generation record): status, body, headers."""
        with mapped_transport_errors(phase):
            async with asyncio.timeout(self.settings.first_byte_timeout_s):
                response = await self.client.get(
                    url, params=params, headers={"Accept": "application/json",
                                                 **self.auth_headers(api_key)},
                    timeout=self.timeout,
                )
                body = await response.aread()
        return response.status_code, body, response.headers

    # -- hooks each kind provides --------------------------------------------------------

    def parse_models(self, body: bytes) -> list[Model]:
        """The upstream's model list → models (raises ValueError if unusable)."""
        raise NotImplementedError

    def prepare(self, body: dict[str, Any], *, stream: bool, max_tokens: int) -> None:
        """Rewrite a chat request in place before it goes upstream: ask for usage, and
        bound the completion at ``max_tokens`` (what the request's hold pays for)."""
        raise NotImplementedError

    def usage(self, usage: dict[str, Any], price: Price) -> Usage:
        """A usage object → what the request cost. By default tokens × price."""
        prompt = _tokens(usage, "prompt_tokens")
        completion = _tokens(usage, "completion_tokens")
        return Usage(price.cost_nano(prompt, completion), "tokens", prompt, completion)

    async def generation(self, generation_id: str, *, api_key: str | None = None
                         ) -> Generation | None:
        """The upstream's record of a generation; None while it has none (yet)."""
        return None

    def error(self, status: int, body: bytes, headers: httpx.Headers, *,
              funded_by_user: bool = False) -> GatewayError:
        """An error answer (before the head, or a 200 whose body is an error) → the
        caller's error."""
        return error_from_status(
            status, body[:ERROR_BODY_LIMIT], headers, funded_by_user=funded_by_user
        )

    # -- the model list -----------------------------------------------------------------

    async def models(self) -> dict[str, Model]:
        """The model list: cached; a stale copy is served while a fresh one is fetched."""
        current = self._models
        if current is not None:
            if time.monotonic() - self._fetched_at > self.settings.models_ttl_s and (
                self._refresh is None or self._refresh.done()
            ):
                self._refresh = asyncio.create_task(self._fetch_quietly())
            return current
        async with self._lock:
            if self._models is None:
                await self._fetch()
            assert self._models is not None
            return self._models

    async def _fetch_quietly(self) -> None:
        try:
            async with self._lock:
                await self._fetch()
        except GatewayError as exc:
            log.warning(
                "model list refresh of upstream %r failed, serving the cached one: %s",
                self.name, exc.message,
            )

    async def _fetch(self) -> None:
        status, body, headers = await self.get_json(self.models_url, phase="model list")
        if status != 200:
            raise self.error(status, body, headers)
        try:
            models = self.parse_models(body)
        except ValueError as exc:
            raise UpstreamError(f"The upstream's model list is unusable ({exc}).") from exc
        self._models = {m.id: m for m in models}
        self._fetched_at = time.monotonic()

    async def aclose(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()
