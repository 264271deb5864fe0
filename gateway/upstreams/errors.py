"""The one place where upstream failures become gateway errors: transport errors (before
the response head and while a body streams), error answers, and errors inside a body.

Each upstream kind maps its error *answers* through :func:`error_from_status` (and may
refine it, see :meth:`gateway.upstreams.base.Upstream.error`); everything a transport can
raise goes through :func:`mapped_transport_errors` or, in the middle of a stream, through
:func:`stream_failure`, so the two phases cannot disagree.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import aiohttp
import httpx
import orjson

from gateway.errors import (
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    RateLimited,
    RequestTooLarge,
    UpstreamError,
    UpstreamTimeout,
)
from gateway.funding.funder import unavailable

log = logging.getLogger("wattfare.upstream")

ERROR_BODY_LIMIT = 64 * 1024


def _transport_error(exc: BaseException, phase: str) -> GatewayError:
    if isinstance(exc, TimeoutError):
        return UpstreamTimeout(f"The upstream did not answer in time ({phase}).")
    if isinstance(exc, httpx.TimeoutException):
        cause = exc.__cause__
        if isinstance(cause, aiohttp.ClientConnectionError) and not isinstance(
            cause, TimeoutError
        ):
            # httpx-aiohttp reports every aiohttp connection error as ConnectTimeout; a
            # connection the upstream closed or reset is a failure, not a timeout.
            log.warning("upstream connection error during %s: %r", phase, cause)
            return UpstreamError(f"The upstream connection failed ({phase}).")
        return UpstreamTimeout(f"The upstream did not answer in time ({phase}).")
    log.warning("upstream transport error during %s: %r", phase, exc)
    return UpstreamError(f"The upstream connection failed ({phase}).")


@contextlib.contextmanager
def mapped_transport_errors(phase: str) -> Iterator[None]:
    """httpx's transport errors → gateway errors (details to the log, not the caller)."""
    try:
        yield
    except (TimeoutError, httpx.TransportError) as exc:
        raise _transport_error(exc, phase) from exc


def stream_failure(exc: BaseException) -> GatewayError:
    """What a stream that broke in the middle tells the client (same mapping as above)."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, (TimeoutError, httpx.TransportError)):
        error = _transport_error(exc, "mid-stream")
        if isinstance(error, UpstreamError):
            return UpstreamError("The upstream connection was lost mid-stream.")
        return error
    log.warning("upstream stream broke: %r", exc)
    return UpstreamError("The upstream connection was lost mid-stream.")


def error_message(body: bytes) -> str:
    """The ``error.message`` of an OpenAI-shaped error body, at most 500 characters."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        return str(doc["error"].get("message") or "")[:500]
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return str(doc["error"])[:500]  # some OpenAI-compatible servers (Ollama) say it so
    return ""


def error_from_status(
    status: int, body: bytes, headers: httpx.Headers, *, funded_by_user: bool = False
) -> GatewayError:
    """An upstream error answer → the gateway's error for the caller.

    401/402/403 on the operator's key are the operator's problem (key, credit): the
    caller sees 502 and the details stay in the log. On a person's own key
    (``funded_by_user``) they are that person's: ``funding_unavailable``, saying which
    (a 403 that is not about the key's limit, such as moderation, stays the upstream's).
    """
    message = error_message(body)
    if funded_by_user and status in (401, 402, 403) and (
        status != 403 or "limit" in message.lower()
    ):
        log.info("upstream refused a person's key: %s %s", status, message)
        return unavailable({401: "key_revoked", 402: "out_of_credit", 403: "key_limit"}[status])
    if status in (401, 402, 403):
        log.error("upstream refused the operator's request: %s %s", status, message)
        return UpstreamError("The upstream refused the gateway's request (operator account).")
    lowered = message.lower()
    if status == 404 or (status == 400 and "model" in lowered and "valid" in lowered):
        return ModelNotFound(message or "The model is not offered upstream.", param="model")
    if status in (400, 422):
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
    """The status of an error object answered with a 200 (``{"error": {"code": …}}``, as
    OpenRouter does): its code when that is an HTTP error status, else 502; None when
    the body is not such an object."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), dict):
        return None
    code = doc["error"].get("code")
    return code if isinstance(code, int) and 400 <= code < 600 else 502
