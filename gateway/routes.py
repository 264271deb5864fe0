"""The JSON API around the proxy: sessions, models, connection, health, metrics, the
OpenAPI document, and the answer to OpenAI endpoints the gateway does not serve."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import Response

from gateway import __version__
from gateway.auth import ONE_USER_HEADER, CredentialKind, Principal
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    NotConnected,
    UnsupportedEndpoint,
)
from gateway.http import json_object, read_body
from gateway.money import nano_to_usd, usd_to_nano
from gateway.openapi import openapi_body
from gateway.state import GatewayState
from gateway.store.base import ConnectionState, period_of
from gateway.tokens import mint_session_token, valid_user_id

USER_ROUTES: frozenset[CredentialKind] = frozenset({"session", "secret"})
ANY_CREDENTIAL: frozenset[CredentialKind] = frozenset({"session", "secret", "publishable"})
SECRET_ONLY: frozenset[CredentialKind] = frozenset({"secret"})
SESSION_BODY_LIMIT = 16 * 1024


def json_response(content: Any, *, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def state_of(request: Request) -> GatewayState:
    state = request.app.state.gateway
    assert isinstance(state, GatewayState)
    return state


def user_header(request: Request) -> str | None:
    """``Wattfare-User`` as UTF-8, as the chat completion route reads it.

    Starlette decodes header values as latin-1: a UTF-8 user id read that way names a
    different user here than the one chat completions charge. More than one such header
    is refused, here and on the chat route alike: two readers picking different copies
    would charge one user and report another.
    """
    values = [value for name, value in request.scope["headers"] if name == b"wattfare-user"]
    if len(values) > 1:
        raise InvalidRequest(ONE_USER_HEADER, param="Wattfare-User")
    if not values:
        return None
    try:
        return bytes(values[0]).decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(
            "Header 'Wattfare-User' must be UTF-8.", param="Wattfare-User"
        ) from None


async def authenticate(
    request: Request, allow: frozenset[CredentialKind], *, need_user: bool
) -> Principal:
    principal = await state_of(request).auth.authenticate(
        request.headers.get("authorization"),
        user_header(request),
        allow=allow,
        fresh=True,
    )
    if need_user and principal.user_id is None:
        raise InvalidRequest(
            "A secret key must name the user in the 'Wattfare-User' header.",
            param="Wattfare-User",
        )
    request.scope["wattfare.record"].app_id = principal.app.id
    request.scope["wattfare.record"].user_id = principal.user_id
    return principal


async def json_body(request: Request, *, limit: int) -> dict[str, Any]:
    declared = request.headers.get("content-length", "")
    raw = await read_body(
        request.receive, limit=limit, declared=int(declared) if declared.isdigit() else None
    )
    return json_object(raw)


async def create_session(request: Request) -> Response:
    """``POST /v1/sessions``: mint a session token with the caller's secret key."""
    await authenticate(request, SECRET_ONLY, need_user=False)
    body = await json_body(request, limit=SESSION_BODY_LIMIT)
    user_id = body.get("user_id")
    if not valid_user_id(user_id):
        raise InvalidRequest("'user_id' must be 1-256 printable characters.", param="user_id")
    assert isinstance(user_id, str)
    monthly_usd: float | None = None
    limit = body.get("request_limit")
    if limit is not None:
        if not isinstance(limit, dict):
            raise InvalidRequest("'request_limit' must be an object.", param="request_limit")
        value = limit.get("monthly_usd")
        if value is not None:
            try:
                usd_to_nano(value)
            except ValueError as exc:
                raise InvalidRequest(
                    f"'request_limit.monthly_usd' {exc}.", param="request_limit.monthly_usd"
                ) from None
            monthly_usd = float(value)
    # The secret key signs the token in memory and is forgotten; it is never stored.
    secret = request.headers["authorization"].partition(" ")[2].strip()
    minted = mint_session_token(secret, user_id, monthly_usd=monthly_usd)
    return json_response(
        {"token": minted.token, "expires_at": minted.expires_at, "user_id": minted.user_id}
    )


def openai_model(entry: dict[str, Any]) -> dict[str, Any]:
    """One upstream model entry in OpenAI's shape: ``id``, ``object: "model"``,
    ``created`` and ``owned_by`` first, then every other field the upstream sent
    (OpenRouter's ``pricing``, ``context_length``, … stay as they came)."""
    model_id: str = entry["id"]
    created = entry.get("created")
    owned_by = entry.get("owned_by")
    if not isinstance(owned_by, str) or not owned_by:
        # OpenRouter names models "vendor/model"; OpenAI says "system" for its own.
        owned_by = model_id.split("/", 1)[0] if "/" in model_id else "system"
    shaped: dict[str, Any] = {
        "id": model_id,
        "object": "model",
        "created": created if isinstance(created, int) and not isinstance(created, bool) else 0,
        "owned_by": owned_by,
    }
    for key, value in entry.items():
        shaped.setdefault(key, value)
    return shaped


def openai_model_list(entries: Iterable[Any]) -> list[dict[str, Any]]:
    """Upstream model entries (``Upstreams.listing()``: OpenRouter's, or any
    OpenAI-compatible server's, priced) in OpenAI's shape; an entry without a string
    ``id`` is left out."""
    return [
        openai_model(e) for e in entries if isinstance(e, dict) and isinstance(e.get("id"), str)
    ]


async def _models(request: Request) -> list[dict[str, Any]]:
    await authenticate(request, ANY_CREDENTIAL, need_user=False)
    return openai_model_list(await state_of(request).upstreams.listing())


async def list_models(request: Request) -> Response:
    """``GET /v1/models``: the models the gateway serves, in OpenAI's list shape."""
    body = orjson.dumps({"object": "list", "data": await _models(request)})
    return Response(body, media_type="application/json")


async def get_model(request: Request) -> Response:
    """``GET /v1/models/{model}``: one model (its id may hold ``/``)."""
    model_id = request.path_params["model"]
    found = next((m for m in await _models(request) if m["id"] == model_id), None)
    if found is None:
        raise ModelNotFound(
            f"The model '{model_id}' does not exist or is not offered by this gateway "
            "(GET /v1/models lists those it offers).",
            param="model",
        )
    return Response(orjson.dumps(found), media_type="application/json")


SUPPORTED = (
    "POST /v1/chat/completions, GET /v1/models and GET /v1/models/{model} of the OpenAI "
    "API, and its own POST /v1/sessions, GET|DELETE /v1/connection and POST /v1/connect "
    "(see /openapi.json)"
)


def unsupported_endpoint(method: str, path: str) -> GatewayError:
    """The error for a ``/v1/…`` path the gateway has no route for."""
    return UnsupportedEndpoint(
        f"{method} {path} is not supported by this gateway. It serves {SUPPORTED}."
    )


async def openapi(request: Request) -> Response:
    """``GET /openapi.json``: the HTTP API's OpenAPI 3.1 document."""
    body: bytes | None = getattr(request.app.state, "openapi_body", None)
    if body is None:
        body = openapi_body(
            public_url=state_of(request).settings.server.public_url, version=__version__
        )
        request.app.state.openapi_body = body
    return Response(body, media_type="application/json", headers={"Cache-Control": "no-cache"})


def _connection_json(principal: Principal, conn: ConnectionState | None) -> dict[str, Any]:
    period = period_of(time.time())
    if conn is None:
        return {
            "object": "connection", "status": "not_connected", "user_id": principal.user_id,
            "monthly_cap_usd": None, "spent_usd": 0.0, "remaining_usd": None, "period": period,
        }
    return {
        "object": "connection",
        "status": conn.status,
        "user_id": principal.user_id,
        "monthly_cap_usd": nano_to_usd(conn.cap_nano),
        "spent_usd": nano_to_usd(conn.settled_nano),
        "remaining_usd": nano_to_usd(conn.remaining_nano) if conn.status == "connected" else 0.0,
        "period": conn.period,
    }


async def get_connection(request: Request) -> Response:
    """``GET /v1/connection``: the user's connection to the calling app, this month."""
    principal = await authenticate(request, USER_ROUTES, need_user=True)
    state = state_of(request)
    assert principal.user_id is not None
    conn = await state.store.connection(principal.app.id, principal.user_id)
    return json_response(_connection_json(principal, conn))


async def delete_connection(request: Request) -> Response:
    """``DELETE /v1/connection``: the app disconnects the user; open streams are cut."""
    principal = await authenticate(request, USER_ROUTES, need_user=True)
    state = state_of(request)
    assert principal.user_id is not None
    key = (principal.app.id, principal.user_id)
    if not await state.revoke(*key):
        raise NotConnected("This user has no connection to this app.")
    conn = await state.store.connection(*key)
    return json_response(_connection_json(principal, conn))


async def healthz(request: Request) -> Response:
    """Liveness and store reachability."""
    try:
        await state_of(request).store.ping()
    except Exception:
        return json_response({"status": "degraded", "store": "unreachable"}, status=503)
    return json_response({"status": "ok", "store": "ok"})


async def metrics(request: Request) -> Response:
    return Response(
        generate_latest(state_of(request).metrics.registry), media_type=CONTENT_TYPE_LATEST
    )


async def render_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    record = request.scope.get("wattfare.record")
    if record is not None:
        record.code = exc.code
    return Response(
        exc.body(), status_code=exc.status, media_type="application/json", headers=exc.headers
    )
