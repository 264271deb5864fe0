"""The OpenAPI 3.1 document of the gateway's whole HTTP API, served at ``/openapi.json``.

Written out here (the handlers are plain functions with no schema of their own), and
kept true by ``tests/test_openapi.py``, which compares its paths and methods with the
app's actual routes; the API's fuzz run (``tests/e2e/test_e2e_fuzz.py``) reads it.
Operations tagged ``api`` answer JSON, and their errors are in the OpenAI shape; those
tagged ``pages`` are the hosted HTML pages and their forms; ``ops`` are the rest.
"""

from __future__ import annotations

from typing import Any

import orjson

ERROR_CODES = (
    "invalid_request", "invalid_api_key", "invalid_session", "session_expired",
    "spend_cap_reached", "not_connected", "connection_revoked", "origin_not_allowed",
    "not_found", "unsupported_endpoint", "model_not_found", "method_not_allowed",
    "request_too_large", "request_timeout", "headers_too_large", "rate_limited",
    "internal_error", "upstream_error", "server_busy", "upstream_timeout",
    "funding_unavailable",
)
ERRORS = {
    400: "Malformed JSON, missing or ill-typed fields (`invalid_request`).",
    401: "A missing, unknown, rolled or expired credential (`invalid_api_key`, "
         "`invalid_session`, `session_expired`).",
    402: "This month's cap or budget is spent (`spend_cap_reached`).",
    403: "Not connected, revoked, or an origin the app did not register (`not_connected`, "
         "`connection_revoked`, `origin_not_allowed`).",
    404: "No such model (`model_not_found`).",
    413: "The body is over the limit (`request_too_large`).",
    429: "The upstream rate-limited the request (`rate_limited`).",
    502: "The upstream failed or sent something unusable (`upstream_error`).",
    504: "The upstream did not answer in time (`upstream_timeout`).",
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _api(
    summary: str,
    ok: dict[str, Any],
    *errors: int,
    security: list[dict[str, list[str]]] | None = None,
    body: str | None = None,
    parameters: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """A JSON operation: its 200, the error statuses it documents, and any other error
    in the OpenAI shape."""
    responses: dict[str, Any] = {"200": ok}
    for status in errors:
        responses[str(status)] = {"$ref": f"#/components/responses/E{status}"}
    responses["default"] = {"$ref": "#/components/responses/Error"}
    op: dict[str, Any] = {"tags": ["api"], "summary": summary, "responses": responses}
    if security is not None:
        op["security"] = security
    if body is not None:
        op["requestBody"] = {
            "required": True, "content": {"application/json": {"schema": _ref(body)}}
        }
    if parameters:
        op["parameters"] = parameters
    return op


def _page(
    summary: str,
    *,
    form: dict[str, Any] | None = None,
    query: tuple[str, ...] = (),
    content_type: str = "text/html",
) -> dict[str, Any]:
    """A hosted page (signed in by cookie) or one of its CSRF-checked forms."""
    op: dict[str, Any] = {
        "tags": ["pages"],
        "summary": summary,
        "responses": {
            "200": {"description": "The page.", "content": {content_type: {}}},
            "303": {"description": "On to the next page (sign-in first, or after a change)."},
            "default": {"description": "The page, saying what is wrong.",
                        "content": {"text/html": {}}},
        },
    }
    if form is not None:
        op["requestBody"] = {"required": True, "content": {
            "application/x-www-form-urlencoded": {"schema": {
                "type": "object",
                "properties": {"csrf": {"type": "string"}, **form},
                "required": ["csrf", *form],
            }},
        }}
    if query:
        op["parameters"] = [
            {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
            for name in query
        ]
    return op


def _plain(summary: str, content_type: str, *, tag: str = "ops") -> dict[str, Any]:
    return {"tags": [tag], "summary": summary, "security": [], "responses": {
        "200": {"description": summary, "content": {content_type: {}}},
    }}


_STRING: dict[str, Any] = {"type": "string"}
USER_HEADER: dict[str, Any] = {
    "name": "Wattfare-User",
    "in": "header",
    "required": False,
    "description": "The app's user id, required with a secret key (a session token "
                   "names its user itself).",
    "schema": {"type": "string", "minLength": 1, "maxLength": 256},
    "example": "user-42",
}
USER_AUTH: list[dict[str, list[str]]] = [{"sessionToken": []}, {"secretKey": []}]
ANY_AUTH: list[dict[str, list[str]]] = [*USER_AUTH, {"publishableKey": []}]

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {
            "type": "object",
            "required": ["message", "type", "code", "param"],
            "properties": {
                "message": _STRING,
                "type": _STRING,
                "code": {"type": "string", "description": "One of " + ", ".join(ERROR_CODES)},
                "param": {"type": ["string", "null"]},
            },
        }},
    },
    "SessionRequest": {
        "type": "object",
        "required": ["user_id"],
        "properties": {
            "user_id": {"type": "string", "minLength": 1, "maxLength": 256,
                        "examples": ["user-42"]},
            "request_limit": {
                "type": ["object", "null"],
                "description": "The monthly cap the app asks the user to approve; null or "
                               "absent: the gateway's default.",
                "properties": {"monthly_usd": {"type": ["number", "null"], "minimum": 0,
                                               "maximum": 1e9}},
            },
        },
    },
    "Session": {
        "type": "object",
        "required": ["token", "expires_at", "user_id"],
        "properties": {"token": _STRING, "expires_at": {"type": "integer"}, "user_id": _STRING},
    },
    "Model": {
        "type": "object",
        "required": ["id", "object", "created", "owned_by"],
        "properties": {
            "id": _STRING,
            "object": {"const": "model"},
            "created": {"type": "integer"},
            "owned_by": _STRING,
            "pricing": {
                "type": "object",
                "description": "USD per token as decimal strings, as the upstream lists them.",
            },
        },
        "additionalProperties": True,
    },
    "ModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"const": "list"},
            "data": {"type": "array", "items": _ref("Model")},
        },
    },
    "ChatCompletionRequest": {
        "type": "object",
        "required": ["model", "messages"],
        "description": "OpenAI's chat completion request; other fields pass through.",
        "examples": [{"model": "openai/gpt-4o-mini", "stream": False,
                      "messages": [{"role": "user", "content": "Say hi."}]},
                     {"model": "openai/gpt-4o-mini", "stream": True, "max_tokens": 5,
                      "messages": [{"role": "user", "content": "Count to three."}]}],
        "properties": {
            "model": _STRING,
            "messages": {"type": "array", "items": {"type": "object"}},
            "stream": {"type": "boolean"},
            "stream_options": {"type": "object"},
            "max_tokens": {"type": "integer", "minimum": 1},
            "max_completion_tokens": {"type": "integer", "minimum": 1},
        },
    },
    "ChatCompletion": {
        "type": "object",
        "description": "OpenAI's chat completion object, as the upstream sent it.",
    },
    "Connection": {
        "type": "object",
        "required": ["object", "status", "monthly_cap_usd", "spent_usd", "remaining_usd",
                     "period"],
        "properties": {
            "object": {"const": "connection"},
            "status": {"enum": ["connected", "not_connected", "revoked"]},
            "user_id": {"type": ["string", "null"]},
            "monthly_cap_usd": {"type": ["number", "null"]},
            "spent_usd": {"type": "number"},
            "remaining_usd": {"type": ["number", "null"]},
            "period": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
        },
    },
    "ConnectStart": {
        "type": "object",
        "required": ["url", "expires_at"],
        "properties": {"url": _STRING, "expires_at": {"type": "integer"}},
    },
    "Health": {
        "type": "object",
        "required": ["status", "store"],
        "properties": {"status": {"enum": ["ok", "degraded"]}, "store": _STRING},
    },
}

RESPONSES: dict[str, Any] = {
    **{f"E{status}": _json(_ref("Error"), text) for status, text in ERRORS.items()},
    "Error": _json(_ref("Error"), "Any other error, in the OpenAI shape."),
}

SECURITY_SCHEMES: dict[str, Any] = {
    "secretKey": {"type": "http", "scheme": "bearer",
                  "description": "The app's secret key (`sk_test_…`/`sk_live_…`), backend only."},
    "sessionToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
                     "description": "A 10-minute EdDSA session token for one user."},
    "publishableKey": {"type": "http", "scheme": "bearer",
                       "description": "The app's publishable key (`pk_…`)."},
    "browserSession": {"type": "apiKey", "in": "cookie", "name": "wattfare_session",
                       "description": "An end user signed in on the gateway's own pages "
                                      "(`__Host-wattfare_session` over https)."},
}

CONNECTION_OK = _json(_ref("Connection"), "The user's connection to the calling app.")

PATHS: dict[str, Any] = {
    "/v1/chat/completions": {"post": _api(
        "A chat completion, streamed (SSE) or not, metered against the user's cap.",
        {"description": "The completion (JSON), or its SSE stream with `stream: true`.",
         "content": {"application/json": {"schema": _ref("ChatCompletion")},
                     # Server-sent events: chat.completion.chunk objects, then
                     # `data: [DONE]` (OpenAPI 3.1 has no schema for an event stream).
                     "text/event-stream": {}}},
        400, 401, 402, 403, 404, 413, 429, 502, 504,
        security=USER_AUTH, body="ChatCompletionRequest", parameters=[USER_HEADER],
    )},
    "/v1/models": {"get": _api(
        "The models offered, in OpenAI's list shape, with the upstream's pricing fields.",
        _json(_ref("ModelList"), "The model list."), 401, 502, 504, security=ANY_AUTH,
    )},
    "/v1/models/{model}": {"get": _api(
        "One model, in OpenAI's shape.",
        _json(_ref("Model"), "The model."), 401, 404, 502, 504, security=ANY_AUTH,
        parameters=[{"name": "model", "in": "path", "required": True,
                     "description": "A model id; it may contain `/` (`openai/gpt-4o-mini`).",
                     "schema": _STRING, "example": "openai/gpt-4o-mini"}],
    )},
    "/v1/sessions": {"post": _api(
        "Mint a 10-minute session token for one of the app's users.",
        _json(_ref("Session"), "The session token."), 400, 401, 413,
        security=[{"secretKey": []}], body="SessionRequest",
    )},
    "/v1/connection": {
        "get": _api("The user's connection to the calling app, this month.", CONNECTION_OK,
                    400, 401, security=USER_AUTH, parameters=[USER_HEADER]),
        "delete": _api("The app disconnects the user; open streams are cut.", CONNECTION_OK,
                       400, 401, 403, security=USER_AUTH, parameters=[USER_HEADER]),
    },
    "/v1/connect": {"post": _api(
        "Start consent: a one-time link to the hosted consent page.",
        _json(_ref("ConnectStart"), "The consent link."), 401, 403,
        security=[{"sessionToken": []}],
    )},
    "/connect/{cid}": {
        "parameters": [{"name": "cid", "in": "path", "required": True, "schema": _STRING,
                        "description": "The one-time consent id from POST /v1/connect."}],
        "get": _page("The hosted consent page (the popup)."),
        "post": _page("Approve or deny the app's request.",
                      form={"decision": {"enum": ["approve", "deny"]}, "cap": _STRING,
                            "proof": {"type": "string", "description": "What only the "
                                      "window that started the flow holds."}}),
    },
    "/signin": {"get": _page("Sign in.", query=("next",)),
                "post": _page("Sign in.", form={"email": _STRING, "password": _STRING},
                              query=("next",))},
    "/signup": {"get": _page("Create an account.", query=("next",)),
                "post": _page("Create an account.", form={"email": _STRING, "password": _STRING},
                              query=("next",))},
    "/signout": {"post": _page("Sign out of this browser.", form={})},
    "/dashboard": {"get": _page("Budget, connected apps, their spend and controls.",
                                query=("notice",))},
    "/dashboard/budget": {"post": _page("Change the account's monthly budget.",
                                        form={"budget": _STRING})},
    "/dashboard/cap": {"post": _page("Change one app's monthly cap.",
                                     form={"app_id": _STRING, "user_id": _STRING,
                                           "cap": _STRING})},
    "/dashboard/revoke": {
        "get": _page("Confirm revoking one app.", query=("app_id", "user_id")),
        "post": _page("Revoke one app.", form={"app_id": _STRING, "user_id": _STRING}),
    },
    "/dashboard/usage.csv": {"get": _page("The account's usage as CSV.", query=("month",),
                                          content_type="text/csv")},
    "/account": {"get": _page("The account's own settings.", query=("notice",))},
    "/account/password": {"post": _page("Change the password; other sessions end.",
                                        form={"password": _STRING, "new_password": _STRING})},
    "/account/signout-everywhere": {"post": _page("End every session of the account.",
                                                  form={})},
    "/account/delete": {"post": _page("Delete the account.", form={"password": _STRING})},
    "/funding/openrouter": {"post": _page(
        "Start connecting the person's OpenRouter account (OAuth PKCE) to pay for their "
        "requests.", form={"next": _STRING})},
    "/funding/openrouter/callback/{state}": {
        "parameters": [{"name": "state", "in": "path", "required": True, "schema": _STRING,
                        "description": "The attempt this browser started."}],
        "get": _page("Where OpenRouter sends the person back with a code.", query=("code",)),
    },
    "/funding/disconnect": {"post": _page("Delete the account's stored OpenRouter key.",
                                          form={})},
    "/sdk/wattfare.js": {"get": _plain("The browser SDK (an ES module).", "text/javascript")},
    "/sdk/origin": {"get": _api(
        "Is the calling page's origin registered for the app of this publishable key? "
        "(What the browser SDK asks, since a refused CORS preflight looks like a network "
        "error.)",
        _json({"type": "object", "required": ["origin", "registered"],
               "properties": {"origin": _STRING, "registered": {"type": "boolean"}}},
              "The Origin header the browser sent, and whether the app registered it."),
        400, 401, security=[],
        parameters=[
            {"name": "key", "in": "query", "required": True, "schema": _STRING,
             "description": "The app's publishable key (`pk_…`)."},
            {"name": "Origin", "in": "header", "required": True, "schema": _STRING,
             "example": "http://127.0.0.1:5173"},
        ],
    )},
    "/static/wattfare.css": {"get": _plain("The pages' stylesheet.", "text/css")},
    "/healthz": {"get": {
        "tags": ["api"], "summary": "Liveness and store reachability.", "security": [],
        "responses": {"200": _json(_ref("Health"), "Up."),
                      "503": _json(_ref("Health"), "The store is unreachable.")},
    }},
    "/metrics": {"get": _plain("Prometheus metrics (bind privately).", "text/plain")},
    "/openapi.json": {"get": _plain("This document.", "application/json")},
}
# Pages are signed in by cookie; the API by a bearer credential.
for _path, _ops in PATHS.items():
    for _method, _op in _ops.items():
        if _method != "parameters" and _op["tags"] == ["pages"]:
            _op["security"] = [{"browserSession": []}, {}]


def openapi_document(*, public_url: str, version: str) -> dict[str, Any]:
    """The document, with this gateway's public URL as its server."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Wattfare gateway",
            "version": version,
            "description": "An OpenAI-compatible, metered, streaming gateway with hosted "
                           "consent. Every error from an `api` operation is "
                           '`{"error": {"message", "type", "code", "param"}}`.',
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "servers": [{"url": public_url}],
        "security": USER_AUTH,
        "tags": [
            {"name": "api", "description": "JSON; errors in the OpenAI shape."},
            {"name": "pages", "description": "The hosted HTML pages and their forms."},
            {"name": "ops", "description": "Static files, metrics, this document."},
        ],
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS, "responses": RESPONSES, "securitySchemes": SECURITY_SCHEMES,
        },
    }


def openapi_body(*, public_url: str, version: str) -> bytes:
    return orjson.dumps(openapi_document(public_url=public_url, version=version))
