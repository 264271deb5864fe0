"""Access log, Prometheus metrics, and the per-request record both are made from.

The access log is one JSON line per request on the ``wattfare.access`` logger: request
id, app, user, model, status, error code, time to first byte, duration and cost. The
middleware is plain ASGI wrapping ``send``; it does no work per body chunk beyond noting
the first one.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Iterable
from logging.handlers import QueueHandler, QueueListener
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.money import nano_to_usd

access_log = logging.getLogger("wattfare.access")

RECORD_KEY = "wattfare.record"


class _Formatter(logging.Formatter):
    """Access lines are JSON already; everything else gets a time, level and name."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        if record.name == access_log.name:
            return record.getMessage()
        return super().format(record)


class _Writer:
    """The thread writing queued log lines to stderr; stopping it writes what is queued."""

    def __init__(self, listener: QueueListener) -> None:
        self.listener = listener
        self.running = False

    def start(self) -> None:
        if not self.running:
            self.listener.start()
            self.running = True

    def stop(self) -> None:
        if self.running:
            self.running = False
            self.listener.stop()


_writer: _Writer | None = None


def configure_logging(level: int = logging.INFO) -> None:
    """Send every log line through a queue to a writer thread, so the event loop never
    blocks on stderr. Idempotent (each worker process calls it).

    A process stopped by SIGTERM dies of it once uvicorn has shut down (uvicorn raises
    the signal again), which skips ``atexit``: where this process's SIGTERM is still the
    default, a handler writes out what is queued first, then dies of the signal as
    before.
    """
    global _writer
    root = logging.getLogger()
    if any(isinstance(h, QueueHandler) for h in root.handlers):
        return
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(_Formatter())
    lines: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    _writer = _Writer(QueueListener(lines, stream))
    _writer.start()
    atexit.register(_writer.stop)
    root.handlers[:] = [QueueHandler(lines)]
    root.setLevel(level)
    # One line per upstream request would double the access log.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, _flush_then_die)


def _flush_then_die(signum: int, _frame: object) -> None:
    if _writer is not None:
        _writer.stop()
    signal.signal(signum, signal.SIG_DFL)
    signal.raise_signal(signum)


class RequestRecord:
    """What the access log and metrics say of one request; handlers fill it in."""

    __slots__ = (
        "app_id", "code", "cost_nano", "method", "model", "path", "request_id", "started",
        "status", "ttfb", "user_id",
    )

    def __init__(self, *, method: str, path: str, request_id: str | None = None) -> None:
        self.request_id = request_id or "req_" + os.urandom(12).hex()
        self.method = method
        self.path = path
        self.started = time.perf_counter()
        self.status = 0
        self.ttfb: float | None = None
        self.app_id: str | None = None
        self.user_id: str | None = None
        self.model: str | None = None
        self.code: str | None = None
        self.cost_nano: int | None = None


def record_of(scope: Scope) -> RequestRecord:
    record = scope.get(RECORD_KEY)
    if record is None:  # called outside the middleware (tests): a throwaway record
        record = RequestRecord(method=scope.get("method", ""), path=scope.get("path", ""))
        scope[RECORD_KEY] = record
    assert isinstance(record, RequestRecord)
    return record


class Metrics:
    """The gateway's Prometheus metrics, in a registry of its own (no global state)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "wattfare_requests_total", "HTTP requests by route and status.",
            ["route", "status"], registry=self.registry,
        )
        self.errors = Counter(
            "wattfare_errors_total", "Errors returned, by code.", ["code"], registry=self.registry
        )
        self.ttfb = Histogram(
            "wattfare_ttfb_seconds", "Time to first response byte of chat completions.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.spend = Counter(
            "wattfare_spend_usd_total", "USD charged to end users.", registry=self.registry
        )
        self.operator_excess = Counter(
            "wattfare_operator_excess_usd_total",
            "USD the upstream reported beyond what could be charged (borne by the operator).",
            registry=self.registry,
        )
        self.stream_ends = Counter(
            "wattfare_stream_ends_total", "Streams ended, by how they ended.", ["reason"],
            registry=self.registry,
        )
        self.open_streams = Gauge(
            "wattfare_open_streams", "Streams open now.", registry=self.registry
        )
        self.reconciled = Counter(
            "wattfare_reconciled_holds_total", "Holds of lost processes settled.",
            registry=self.registry,
        )
        self.lookups_queued = Counter(
            "wattfare_generation_lookups_queued_total",
            "Requests whose cost awaits the upstream's record of the generation.",
            registry=self.registry,
        )
        self.lookups = Counter(
            "wattfare_generation_lookups_total",
            "Generation look-ups by result (found, retry, gave_up).",
            ["result"], registry=self.registry,
        )


CHAT_ROUTE = "/v1/chat/completions"
UNMATCHED_ROUTE = "unmatched"


class RouteLabels:
    """The ``route`` label of a request: the template of the route that took it
    (``/connect/{cid}``, never the id itself), the chat path (dispatched before the
    router), or one shared label for every path no route matches. A label per raw path
    would let anyone grow the gateway's memory and the operator's Prometheus.

    Starlette's router leaves the matched route's endpoint in the scope (also when only
    the path matched and the method did not); the endpoint names its template here.
    """

    def __init__(self, routes: Iterable[object]) -> None:
        self._templates: dict[object, str] = {}
        for route in routes:
            endpoint, path = getattr(route, "endpoint", None), getattr(route, "path", None)
            if endpoint is not None and isinstance(path, str):
                self._templates[endpoint] = path

    def __call__(self, scope: Scope) -> str:
        if scope["path"] == CHAT_ROUTE:
            return CHAT_ROUTE
        return self._templates.get(scope.get("endpoint"), UNMATCHED_ROUTE)


class AccessLogMiddleware:
    """Times the first body byte and writes one log line and the metrics per request."""

    def __init__(
        self, app: ASGIApp, *, metrics: Metrics, enabled: bool, labels: RouteLabels
    ) -> None:
        self.app = app
        self.labels = labels
        self.metrics = metrics
        self.enabled = enabled
        # Request ids: a random prefix per process and a counter (unique without a
        # system call per request).
        self._id_prefix = "req_" + os.urandom(8).hex()
        self._ids = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        record = RequestRecord(
            method=scope["method"], path=scope["path"],
            request_id=f"{self._id_prefix}{next(self._ids):08x}",
        )
        scope[RECORD_KEY] = record

        # A plain function returning the server's awaitable: every body chunk of a stream
        # passes here, and a coroutine of its own per chunk would be pure overhead.
        def send_wrapper(message: Message) -> Awaitable[None]:
            if record.ttfb is None:
                if message["type"] == "http.response.start":
                    record.status = message["status"]
                    message.setdefault("headers", []).append(
                        (b"x-request-id", record.request_id.encode())
                    )
                elif message["type"] == "http.response.body":
                    record.ttfb = time.perf_counter() - record.started
            return send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self._emit(record, self.labels(scope))

    def _emit(self, record: RequestRecord, route: str) -> None:
        duration = time.perf_counter() - record.started
        self.metrics.requests.labels(route, str(record.status)).inc()
        if record.code is not None:
            self.metrics.errors.labels(record.code).inc()
        if route == CHAT_ROUTE and record.ttfb is not None:
            self.metrics.ttfb.observe(record.ttfb)
        if not self.enabled or not access_log.isEnabledFor(logging.INFO):
            return
        line: dict[str, Any] = {
            "ts": round(time.time(), 3),
            "request_id": record.request_id,
            "method": record.method,
            "path": record.path,
            "status": record.status,
            "app": record.app_id,
            "user": record.user_id,
            "model": record.model,
            "code": record.code,
            "ttfb_ms": None if record.ttfb is None else round(record.ttfb * 1000, 3),
            "duration_ms": round(duration * 1000, 3),
            "cost_usd": None if record.cost_nano is None else nano_to_usd(record.cost_nano),
        }
        access_log.info("%s", orjson.dumps(line).decode())
