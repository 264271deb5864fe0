"""The gateway's errors and the one renderer of the OpenAI error shape.

Every error the gateway returns, from any endpoint, is::

    {"error": {"message": "…", "type": "…", "code": "<code>", "param": null}}

The tree (each class fixes the HTTP status, the OpenAI ``type`` and the stable ``code``)::

    GatewayError
    ├── InvalidRequest          400 invalid_request
    ├── InvalidApiKey           401 invalid_api_key
    ├── InvalidSession          401 invalid_session
    ├── SessionExpired          401 session_expired
    ├── SpendCapReached         402 spend_cap_reached
    ├── NotConnected            403 not_connected
    ├── ConnectionRevoked       403 connection_revoked
    ├── OriginNotAllowed        403 origin_not_allowed
    ├── FundingUnavailable      403 funding_unavailable
    ├── NotFound                404 not_found
    ├── UnsupportedEndpoint     404 unsupported_endpoint
    ├── ModelNotFound           404 model_not_found
    ├── MethodNotAllowed        405 method_not_allowed
    ├── RequestTimeout          408 request_timeout
    ├── RequestTooLarge         413 request_too_large
    ├── RateLimited             429 rate_limited
    ├── HeadersTooLarge         431 headers_too_large
    ├── InternalError           500 internal_error
    ├── UpstreamError           502 upstream_error
    ├── ServerBusy              503 server_busy
    └── UpstreamTimeout         504 upstream_timeout

``unsupported_endpoint`` is any other ``/v1/…`` path (``/v1/embeddings``,
``/v1/responses``, …): its message names what the gateway serves. A 404, not a 501: the
OpenAI SDK retries 5xx answers, and no retry will help.
``not_found``, ``method_not_allowed`` and ``internal_error`` are not in API.md's table:
they cover a path that does not exist, a wrong method, and a bug in the gateway itself.
``origin_not_allowed`` is the browser-facing API's refusal of a page whose origin is not
one of the calling app's registered origins (``wattfare apps create --origin``): a
consent link is only ever posted back to a registered origin. ``request_timeout``,
``headers_too_large`` and ``server_busy`` are answered by the HTTP server itself
(``gateway/server.py``) to a client that is too slow, sends too large a request head, or
arrives when the connection limit is reached.
``funding_unavailable``: the person pays with their own connected upstream account, and it
cannot pay (none connected, disconnected, out of credit, at its key's limit, or the key
revoked upstream); the message says which, and the person's dashboard says so too.
"""

from __future__ import annotations

from typing import ClassVar

import orjson


class GatewayError(Exception):
    """Base class: an error with an HTTP status and a stable machine code."""

    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"
    code: ClassVar[str] = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.headers = headers or {}

    def body(self) -> bytes:
        """The OpenAI-shaped JSON body."""
        return error_body(
            message=self.message, type_=self.type, code=self.code, param=self.param
        )

    def sse_event(self) -> bytes:
        """The error as one SSE event, for ending a stream that has already started."""
        return b"data: " + self.body() + b"\n\n"


def error_body(*, message: str, type_: str, code: str, param: str | None = None) -> bytes:
    return orjson.dumps(
        {"error": {"message": message, "type": type_, "code": code, "param": param}}
    )


class InvalidRequest(GatewayError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class InvalidApiKey(GatewayError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class InvalidSession(GatewayError):
    status, type, code = 401, "authentication_error", "invalid_session"


class SessionExpired(GatewayError):
    status, type, code = 401, "authentication_error", "session_expired"


class SpendCapReached(GatewayError):
    status, type, code = 402, "insufficient_quota", "spend_cap_reached"


class NotConnected(GatewayError):
    status, type, code = 403, "permission_error", "not_connected"


class ConnectionRevoked(GatewayError):
    status, type, code = 403, "permission_error", "connection_revoked"


class OriginNotAllowed(GatewayError):
    status, type, code = 403, "permission_error", "origin_not_allowed"


class FundingUnavailable(GatewayError):
    status, type, code = 403, "permission_error", "funding_unavailable"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        # "none", "out_of_credit", "key_limit" or "key_revoked": what the dashboard shows.
        self.reason = reason


class NotFound(GatewayError):
    status, type, code = 404, "invalid_request_error", "not_found"


class UnsupportedEndpoint(GatewayError):
    status, type, code = 404, "invalid_request_error", "unsupported_endpoint"


class ModelNotFound(GatewayError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class MethodNotAllowed(GatewayError):
    status, type, code = 405, "invalid_request_error", "method_not_allowed"


class RequestTooLarge(GatewayError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class RequestTimeout(GatewayError):
    status, type, code = 408, "invalid_request_error", "request_timeout"


class HeadersTooLarge(GatewayError):
    status, type, code = 431, "invalid_request_error", "headers_too_large"


class RateLimited(GatewayError):
    status, type, code = 429, "rate_limit_error", "rate_limited"


class InternalError(GatewayError):
    status, type, code = 500, "api_error", "internal_error"


class UpstreamError(GatewayError):
    status, type, code = 502, "api_error", "upstream_error"


class ServerBusy(GatewayError):
    status, type, code = 503, "api_error", "server_busy"


class UpstreamTimeout(GatewayError):
    status, type, code = 504, "api_error", "upstream_timeout"
