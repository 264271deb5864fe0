"""``create_app(settings)``: the ASGI application and the lifespan that owns its state.

The chat completion route is dispatched to the plain ASGI handler before Starlette's
router sees it (the hot path pays for no routing, no request object); everything else
is an ordinary Starlette app. The lifespan opens the store, reconciles holds left by
dead processes, creates the one shared upstream client, and runs three small background
loops: the instance heartbeat, periodic reconciliation, and the change follower that
acts on what other processes or nodes changed (revocations, rolled keys).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from gateway import routes
from gateway.auth import Authenticator
from gateway.config import Settings, load_settings
from gateway.consent import BrowserGuard, consent_routes, open_consent
from gateway.errors import GatewayError, InternalError, MethodNotAllowed, NotFound
from gateway.funding.funder import Funder
from gateway.live import LiveStreams
from gateway.lookups import Lookups
from gateway.observability import AccessLogMiddleware, Metrics, RouteLabels, configure_logging
from gateway.proxy import ChatCompletions
from gateway.state import GatewayState
from gateway.store import make_store
from gateway.upstreams import Upstreams

log = logging.getLogger("wattfare")

HEARTBEAT_S = 5.0
RECONCILE_S = 30.0
CHANGES_POLL_S = 0.25

CHAT_PATH = "/v1/chat/completions"
# The cyclic garbage collector's thresholds while serving (see ``serving_gc``).
SERVING_GC_THRESHOLDS = (10_000, 10, 10)


async def _every(seconds: float, job: Callable[[], Awaitable[None]], name: str) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await job()
        except Exception:
            log.exception("background job %s failed; retrying in %ss", name, seconds)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    error: GatewayError
    if exc.status_code == 404 and request.url.path.startswith("/v1/"):
        error = routes.unsupported_endpoint(request.method, request.url.path)
    elif exc.status_code == 404:
        error = NotFound(f"No route for {request.method} {request.url.path}.")
    elif exc.status_code == 405:
        error = MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}.")
    else:
        error = InternalError(str(exc.detail))
    return await routes.render_gateway_error(request, error)


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return await routes.render_gateway_error(request, InternalError("The gateway failed."))


class Gateway:
    """The ASGI application. ``state`` exists while the lifespan runs."""

    def __init__(self, settings: Settings, *, tune_gc: bool = False) -> None:
        self.settings = settings
        self._tune_gc = tune_gc
        self.state: GatewayState | None = None
        self._chat: ChatCompletions | None = None
        self.metrics = Metrics()
        self.router = Starlette(
            routes=[
                Route("/v1/sessions", routes.create_session, methods=["POST"]),
                Route("/v1/models", routes.list_models, methods=["GET"]),
                Route("/v1/models/{model:path}", routes.get_model, methods=["GET"]),
                Route(
                    "/v1/connection", routes.get_connection, methods=["GET"]
                ),
                Route("/v1/connection", routes.delete_connection, methods=["DELETE"]),
                Route("/healthz", routes.healthz, methods=["GET"]),
                Route("/metrics", routes.metrics, methods=["GET"]),
                Route("/openapi.json", routes.openapi, methods=["GET"]),
                *consent_routes(),
            ],
            exception_handlers={
                GatewayError: routes.render_gateway_error,
                HTTPException: _http_error,
                Exception: _unexpected,
            },
            lifespan=self._lifespan,
        )
        # CORS for the browser-facing API wraps the chat route too, which is dispatched
        # before the router.
        self._http = AccessLogMiddleware(
            BrowserGuard(self._dispatch, state=lambda: self.state),
            metrics=self.metrics,
            enabled=settings.server.access_log,
            labels=RouteLabels(self.router.routes),
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        else:
            await self.router(scope, receive, send)

    def _dispatch(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Returns the handler's coroutine rather than awaiting it: no frame of its own
        # stays on the stack for the life of every stream.
        if scope["path"] == CHAT_PATH and self._chat is not None:
            return self._chat(scope, receive, send)
        return self.router(scope, receive, send)

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        settings = self.settings
        for up in settings.upstreams:
            # Where people pay for OpenRouter themselves, its operator key may be unset.
            if up.api_key_env and not up.api_key and (
                settings.funding.operator or up.kind != "openrouter"
            ):
                log.warning(
                    "environment variable %s is not set: upstream %r will refuse requests",
                    up.api_key_env, up.name,
                )
        store = make_store(settings.store)
        await store.open()
        reconciled = await store.reconcile_stale_holds()
        if reconciled:
            log.warning("settled %d hold(s) left by a lost process", reconciled)
            self.metrics.reconciled.inc(reconciled)
        upstreams = Upstreams(settings.upstreams)
        state = GatewayState(
            settings=settings,
            store=store,
            auth=Authenticator(store),
            upstreams=upstreams,
            metrics=self.metrics,
            live=LiveStreams(),
            funder=Funder(settings.funding, store),
        )
        self.router.state.consent = await open_consent(settings, store)
        self.state = state
        self.router.state.gateway = state
        self._chat = ChatCompletions(state)
        await store.changes()  # the feed starts here

        async def follow_changes() -> None:
            """Act on what any node changed: cut revoked connections' streams, forget a
            rolled or disabled app's cached credentials. Wakes on the store's notice (at
            once with PostgreSQL) or every ``CHANGES_POLL_S``."""
            while True:
                try:
                    await store.wait_for_changes(at_most_s=CHANGES_POLL_S)
                    for change in await store.changes():
                        if change.kind == "revoked":
                            state.live.revoke((change.app_id, change.user_id))
                        elif change.kind in ("key_rolled", "app_disabled"):
                            state.auth.forget_app(change.app_id)
                except Exception:
                    log.exception("reading the store's changes failed; retrying")
                    await asyncio.sleep(CHANGES_POLL_S)

        async def reconcile() -> None:
            count = await store.reconcile_stale_holds(live_request_ids=chat.in_flight)
            if count:
                log.warning("settled %d hold(s) left by a lost process", count)
                self.metrics.reconciled.inc(count)

        chat = self._chat
        lookups = Lookups(store, upstreams, chat.settler, self.metrics, funder=state.funder)
        # A node's lease is renewed several times within it, and a dead node's holds are
        # looked at within half a lease of its lapse.
        lease = settings.store.lease_s
        tasks = [
            asyncio.create_task(lookups.run()),
            asyncio.create_task(_every(min(HEARTBEAT_S, lease / 4), store.heartbeat,
                                       "heartbeat")),
            asyncio.create_task(_every(min(RECONCILE_S, lease / 2), reconcile, "reconcile")),
            asyncio.create_task(follow_changes()),
        ]
        gc_tuned = serving_gc() if self._tune_gc else contextlib.nullcontext()
        try:
            with gc_tuned:
                yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._chat = None
            await upstreams.aclose()
            await store.close()
            self.state = None


@contextlib.contextmanager
def serving_gc() -> Iterator[None]:
    """CPython's cyclic garbage collector, set for a serving process; undone on exit.

    A request's objects die by reference count, not by the collector. Yet with the
    default first threshold (700 net allocations) the objects of a few hundred open
    streams keep starting collections, and every so often a full one that walks all the
    process's objects. Under ``python -m bench.cpu --concurrency 128`` the collector took
    10% of the gateway's CPU (1,500 collections in 14 s of CPU), and a full collection
    up to 48 ms, every stream stalled meanwhile. So, once started: what exists now
    (modules, the app, its caches) lives as long as the process and is frozen out of
    every collection, and the first threshold is 10,000. The same load then spent 1.4%
    of the CPU in the collector. Cyclic garbage still goes, a little later.
    """
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVING_GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


def create_app(settings: Settings, *, tune_gc: bool = False) -> Gateway:
    """The gateway as an ASGI application. ``tune_gc``: set the garbage collector for a
    process that does nothing but serve it (see ``serving_gc``)."""
    return Gateway(settings, tune_gc=tune_gc)


def create_app_from_env() -> Gateway:
    """Factory for ``uvicorn --factory`` and multi-worker serving: reads
    ``$WATTFARE_CONFIG`` (or the defaults). The process serves only the gateway."""
    configure_logging()
    return Gateway(load_settings(), tune_gc=True)
