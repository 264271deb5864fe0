"""OpenRouter's OAuth PKCE flow ("Sign in with OpenRouter"), as its documentation gives it.

1. The app sends the person to `GET /auth?callback_url=…&code_challenge=…&
   code_challenge_method=S256` (or `plain`, or no challenge at all). The callback URL must
   be https, or http on localhost / 127.0.0.1 (any port). The page asks the person (the
   `account` field: who is signed in, a new `user_…` id unless typed; an optional credit
   limit for the key) to Authorize or Deny.
2. Authorize redirects to `callback_url?code=…`; Deny redirects to
   `callback_url?error=access_denied&error_description=…`, OAuth 2.0's answer for a refusal
   (RFC 6749 §4.1.2.1; OpenRouter does not document its own).
3. `POST /api/v1/auth/keys {"code", "code_verifier", "code_challenge_method"}` → `{"key",
   "user_id"}`: a key billed to that person's credits. A code works once and for 10
   minutes; a wrong verifier or method is 403 and uses the code up.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from html import escape
from typing import Any, Final, TypeVar
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import orjson
from starlette.types import Receive, Scope, Send

from gateway.fake_upstream.accounts import Accounts, usd_of
from gateway.fake_upstream.admin import USER_ID
from gateway.fake_upstream.asgi import BodyTooLarge, read_body, respond
from gateway.fake_upstream.encoding import dumps
from gateway.fake_upstream.wire import error_body

__all__ = ["CODE_TTL_S", "OAuth"]

CODE_TTL_S: Final = 600.0
_MAX_PENDING: Final = 10_000
_MAX_FORM: Final = 16 * 1024
_METHODS: Final = frozenset({"S256", "plain"})
_STYLE: Final = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem}"
    "label{display:block;margin-top:1rem}input{width:100%;padding:.4rem}"
    "button{margin:1.5rem .5rem 0 0;padding:.5rem 1.2rem}"
)
_STYLE_HASH: Final = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
_HTML: Final = (b"content-type", b"text/html; charset=utf-8")
_PAGE_HEADERS: Final = (
    (b"cache-control", b"no-store"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Request:
    callback_url: str
    challenge: str | None
    method: str | None
    expires: float


@dataclass(frozen=True, slots=True)
class _Code:
    user_id: str
    challenge: str | None
    method: str | None
    limit_nano: int | None
    expires: float


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _callback_ok(url: str) -> bool:
    if not url.isascii():
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if not parts.hostname:
        return False
    if parts.scheme == "https":
        return True
    return parts.scheme == "http" and parts.hostname in ("localhost", "127.0.0.1")


def _with_query(url: str, params: dict[str, str]) -> str:
    parts = urlsplit(url)
    extra = urlencode(params)
    return urlunsplit(parts._replace(query=f"{parts.query}&{extra}" if parts.query else extra))


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _put(store: OrderedDict[str, T], key: str, value: T) -> None:
    if len(store) >= _MAX_PENDING:
        store.popitem(last=False)
    store[key] = value


async def _page(send: Send, status: int, title: str, body: str, form_to: str = "") -> None:
    csp = (
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; "
        f"form-action 'self'{' ' + form_to if form_to else ''}; "
        "frame-ancestors 'none'; base-uri 'none'"
    )
    html = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)} · OpenRouter (simulated)</title>"
        f"<style>{_STYLE}</style></head><body><main>{body}</main></body></html>"
    )
    headers = ((b"content-security-policy", csp.encode()), *_PAGE_HEADERS)
    await respond(send, status, html.encode(), headers, content_type=_HTML)


class OAuth:
    """The `/auth` page, its decision, and the code exchange, over one server's accounts."""

    __slots__ = ("_accounts", "_codes", "_requests")

    def __init__(self, accounts: Accounts) -> None:
        self._accounts = accounts
        self._requests: OrderedDict[str, _Request] = OrderedDict()
        self._codes: OrderedDict[str, _Code] = OrderedDict()

    async def page(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`GET /auth`: the consent page."""
        params = parse_qs(scope["query_string"].decode("latin-1"))
        callback = (params.get("callback_url") or [""])[0]
        challenge = (params.get("code_challenge") or [None])[0]
        method = (params.get("code_challenge_method") or [None])[0]
        if not _callback_ok(callback):
            text = "callback_url must be https, or http on localhost or 127.0.0.1."
            body = f"<h1>Invalid callback URL</h1><p>{text}</p>"
            await _page(send, 400, "Invalid callback URL", body)
            return
        if method is not None and (method not in _METHODS or challenge is None):
            text = "code_challenge_method must be S256 or plain, with a code_challenge."
            await _page(send, 400, "Invalid request", f"<h1>Invalid request</h1><p>{text}</p>")
            return
        if challenge is not None and method is None:
            method = "plain"
        request_id = secrets.token_urlsafe(16)
        expires = time.monotonic() + CODE_TTL_S
        _put(self._requests, request_id, _Request(callback, challenge, method, expires))
        app = escape(_origin(callback))
        body = (
            "<h1>Authorize application</h1>"
            f"<p><strong id=\"app\">{app}</strong> is asking for an API key that is billed to "
            "your OpenRouter credits.</p>"
            '<form method="post" action="/auth/decision">'
            f'<input type="hidden" name="request" value="{request_id}">'
            '<label for="account">Signed in as</label>'
            f'<input id="account" name="account" value="{self._accounts.new_user_id()}" '
            'required maxlength="64" autocomplete="off">'
            '<label for="limit">Credit limit for this key, in USD (optional)</label>'
            '<input id="limit" name="limit" inputmode="decimal" autocomplete="off">'
            '<button id="approve" type="submit" name="decision" value="approve">Authorize</button>'
            '<button id="deny" type="submit" name="decision" value="deny">Deny</button>'
            "</form>"
        )
        await _page(send, 200, "Authorize", body, form_to=_origin(callback))

    async def decide(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`POST /auth/decision`: the person's answer, redirected to the callback."""
        try:
            raw = await read_body(receive, _MAX_FORM)
        except BodyTooLarge:
            await _page(send, 413, "Too large", "<h1>Request too large</h1>")
            return
        if raw is None:
            return
        form = {k: v[0] for k, v in parse_qs(raw.decode("utf-8", "replace")).items()}
        pending = self._requests.pop(form.get("request", ""), None)
        if pending is None or time.monotonic() > pending.expires:
            text = "This authorization request has expired or was already answered."
            await _page(send, 400, "Expired", f"<h1>Request expired</h1><p>{text}</p>")
            return
        if form.get("decision") != "approve":
            params = {"error": "access_denied", "error_description": "The user denied access."}
            await _redirect(send, _with_query(pending.callback_url, params))
            return
        account = form.get("account", "").strip()
        limit_text = form.get("limit", "").strip()
        limit: int | None = None
        valid = USER_ID.fullmatch(account) is not None
        if limit_text:
            try:
                limit = usd_of(limit_text)
            except ValueError:
                valid = False
        if not valid:
            # The person can try again: the request stays open.
            self._requests[form["request"]] = pending
            text = "Check the account (letters, digits, _.@+-) and the limit (a USD amount)."
            await _page(send, 400, "Invalid input", f"<h1>Invalid input</h1><p>{text}</p>")
            return
        code = secrets.token_urlsafe(24)
        _put(
            self._codes,
            code,
            _Code(account, pending.challenge, pending.method, limit, time.monotonic() + CODE_TTL_S),
        )
        self._accounts.person(account)
        await _redirect(send, _with_query(pending.callback_url, {"code": code}))

    async def exchange(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`POST /api/v1/auth/keys`: a code and its verifier for a key."""
        try:
            raw = await read_body(receive, _MAX_FORM)
        except BodyTooLarge:
            await respond(send, 413, error_body(413, "Request body too large"))
            return
        if raw is None:
            return
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = None
        code = body.get("code") if isinstance(body, dict) else None
        if not isinstance(code, str) or not code:
            await respond(send, 400, error_body(400, "code is required"))
            return
        verifier = body.get("code_verifier")
        method = body.get("code_challenge_method")
        if verifier is not None and not isinstance(verifier, str):
            await respond(send, 400, error_body(400, "code_verifier must be a string"))
            return
        if method is not None and method not in _METHODS:
            await respond(send, 400, error_body(400, "code_challenge_method must be S256 or plain"))
            return
        found = self._codes.pop(code, None)  # single use, whatever the outcome
        expired = found is None or time.monotonic() > found.expires
        if found is None or expired or not _verified(found, verifier, method):
            await respond(send, 403, error_body(403, "Invalid code or code_verifier"))
            return
        issued = self._accounts.issue(found.user_id, limit_nano=found.limit_nano)
        await respond(send, 200, dumps({"key": issued.key, "user_id": issued.user_id}))


def _verified(code: _Code, verifier: str | None, method: object) -> bool:
    if code.challenge is None:
        return True
    if verifier is None or (method is not None and method != code.method):
        return False
    expected = _s256(verifier) if code.method == "S256" else verifier
    return hmac.compare_digest(expected.encode(), code.challenge.encode())


async def _redirect(send: Send, location: str) -> None:
    await respond(
        send,
        303,
        b"",
        ((b"location", location.encode()), (b"cache-control", b"no-store")),
        content_type=(b"content-type", b"text/plain"),
    )

