"""``wattfare serve``: uvicorn (httptools, uvloop when installed) with the bounds a server
facing the public needs, from ``[server]``.

uvicorn alone waits forever for a request head that dribbles in, reads a head of any size
with httptools, and keeps a connection that never sends a byte. :class:`BoundedProtocol`
adds, per connection:

- ``header_timeout_s``: the request head must be complete this long after the
  connection opened (or, on a kept-alive connection, after its first bytes arrived).
  A head begun and not finished is answered ``408 request_timeout``; a connection that
  sent nothing is closed without an answer (browsers open spare connections).
- ``body_timeout_s``: the request body must be complete this long after its head.
  If the gateway has not answered yet, ``408 request_timeout``; the handler waiting for
  the body sees the client gone, so no hold is left behind.
- ``max_header_bytes``: a larger head is answered ``431 headers_too_large``; no more than
  this plus one socket read is ever buffered for it.
- ``max_connections``: a connection beyond this many is answered ``503 server_busy``
  (with ``Retry-After``) at once, before it sends anything.

Each answer is in the OpenAI error shape with ``Connection: close``. After it the
connection is half-closed and what the client still sends is read and dropped for a
moment (a lingering close, as nginx does), so the client reads the answer instead of a
reset. A head the parser cannot read at all (a NUL in a header, an unknown method) keeps
uvicorn's own plain-text ``400 Invalid HTTP request received.``.

The common case costs nothing extra: a request whose head and body arrive in one read
arms no timer (the connection's first deadline is armed when it opens).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from itertools import chain
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from gateway.config import ServerSettings, Settings
from gateway.errors import GatewayError, HeadersTooLarge, RequestTimeout, ServerBusy
from gateway.observability import configure_logging

LINGER_S = 1.0
BUSY_RETRY_AFTER_S = 1


class _Refused(Exception):
    """Raised from a parser callback to stop parsing a request that was answered."""


def server_settings_of(app: object) -> ServerSettings:
    """The ``[server]`` settings of the gateway app under uvicorn's wrappers (its proxy
    headers middleware keeps the wrapped app in ``.app``)."""
    for _ in range(8):
        settings = getattr(app, "settings", None)
        if isinstance(settings, Settings):
            return settings.server
        app = getattr(app, "app", None)
        if app is None:
            break
    return ServerSettings()


class BoundedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head and body deadlines, a head size limit and
    a connection limit (see the module docstring)."""

    # Slots, not the instance dict: uvicorn's protocol keeps 28 attributes there, and
    # CPython shares a dict's keys between instances only up to 30; past that every
    # connection carries a dict of its own (bench/NOTES.md has what that costs).
    __slots__ = ("_body_timeout", "_deadline", "_head_bytes", "_header_timeout", "_in_head",
                 "_max_connections", "_max_head", "_refused")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limits = server_settings_of(self.app)
        self._header_timeout = limits.header_timeout_s
        self._body_timeout = limits.body_timeout_s
        self._max_head = limits.max_header_bytes
        self._max_connections = limits.max_connections
        self._deadline: asyncio.TimerHandle | None = None
        self._in_head = True  # between requests, and while a head is being read
        self._head_bytes = 0
        self._refused = False

    # -- connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._max_connections:
            self._refuse(ServerBusy(
                "The gateway has as many connections as it takes; retry in a moment.",
                headers={"retry-after": str(BUSY_RETRY_AFTER_S)},
            ))
            return
        self._arm(self._header_timeout, self._head_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering: read and drop
        if self._in_head:
            self._head_bytes += len(data)
        self._feed(data)
        if self._refused or self.transport.is_closing():
            return
        if self._in_head:
            if self._head_bytes > self._max_head:
                self._refuse(HeadersTooLarge(
                    f"The request head is larger than {self._max_head} bytes.",
                ))
            elif self._deadline is None and self._head_bytes and self._idle():
                self._arm(self._header_timeout, self._head_late)
        elif self._deadline is None and self.cycle is not None and self.cycle.more_body:
            self._arm(self._body_timeout, self._body_late)

    def _feed(self, data: bytes) -> None:
        """uvicorn's own ``data_received``, except that a request this class refused from
        a parser callback is not also logged and answered as an invalid one."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _Refused):
                return
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    # -- parser callbacks ----------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._disarm()
        headers = self.headers
        size = len(self.url) + sum(map(len, chain.from_iterable(headers))) + 4 * len(headers)
        if size > self._max_head:
            self._refuse(HeadersTooLarge(
                f"The request head is larger than {self._max_head} bytes.",
            ))
            raise _Refused
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()
        self._in_head = True
        self._head_bytes = 0

    # -- deadlines -----------------------------------------------------------------------

    def _idle(self) -> bool:
        """No response is in progress (a pipelined head waits for it, unbounded here)."""
        return self.cycle is None or self.cycle.response_complete

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_late(self) -> None:
        self._deadline = None
        if self.transport.is_closing() or not self._in_head or not self._idle():
            return
        if self._head_bytes == 0:
            self.transport.close()
            return
        self._refuse(RequestTimeout(
            f"The request head did not arrive within {self._header_timeout:g} s.",
        ))

    def _body_late(self) -> None:
        self._deadline = None
        cycle = self.cycle
        if self.transport.is_closing() or cycle is None or not cycle.more_body:
            return
        if cycle.response_started:
            cycle.disconnected = True
            cycle.message_event.set()
            self.transport.close()
            return
        self._refuse(RequestTimeout(
            f"The request body did not arrive within {self._body_timeout:g} s.",
        ))

    # -- answering -----------------------------------------------------------------------

    def _refuse(self, error: GatewayError) -> None:
        """Answer ``error`` and close: the request in progress (if any) is abandoned, and
        its handler hears the client gone."""
        self._refused = True
        self._disarm()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        if self.transport.is_closing():
            return
        body = error.body()
        head = [STATUS_LINE[error.status]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        for extra, text in error.headers.items():
            head += [extra.encode("latin-1"), b": ", text.encode("latin-1"), b"\r\n"]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: ", str(len(body)).encode(), b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self._deadline = self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """What ``uvicorn.run`` is given besides the app."""
    server = settings.server
    trusted = list(server.forwarded_allow_ips)
    return {
        "host": server.host, "port": server.port,
        "loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        "http": BoundedProtocol, "access_log": False, "server_header": False,
        "timeout_graceful_shutdown": 10, "log_config": None,
        # uvicorn trusts X-Forwarded-For from loopback unless told otherwise: a client on
        # the same host could then claim any address. Only the configured peers count.
        "proxy_headers": bool(trusted), "forwarded_allow_ips": trusted or None,
    }


def serve(settings: Settings, *, workers: int) -> None:
    """Run the gateway until it is stopped."""
    import uvicorn

    configure_logging()
    options = uvicorn_options(settings)
    if workers > 1:
        # Worker processes import the app by name and read the same config file.
        if settings.source != "<defaults>":
            os.environ["WATTFARE_CONFIG"] = settings.source
        uvicorn.run(
            "gateway.app:create_app_from_env", factory=True, workers=workers, **options
        )
    else:
        from gateway.app import create_app

        uvicorn.run(create_app(settings, tune_gc=True), **options)
