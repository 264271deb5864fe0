"""Consent: ``POST /v1/connect`` starts it, ``/connect/<id>`` is the hosted popup.

A consent link is bound, when it is made, to the app, the app's user id, the cap the
session token asks for (``lim.monthly_usd``, else the configured default) and the page
origin that asked (which must be one of the app's registered origins). It lives ten
minutes and works once: approving or denying uses it up, atomically in the store.

A link alone connects nothing: approval is bound to the browser window that started the
flow. ``POST /v1/connect`` also returns a ``proof`` (an HMAC of the link's id under the
gateway's secret; never in the URL). The popup asks its opener for it with
``{"wattfare": "connect-hello", "consent": <id>}`` posted to the link's origin; the SDK
that made the link answers ``{"wattfare": "connect-proof", "consent": <id>, "proof": …}``
to the popup alone, and only then is the form shown; the proof travels with the
person's answer and is checked here. A link forwarded to someone else, opened on its own
or from another site, has no such opener: the page says so and nothing can be approved.

The person may lower the cap the app asked for, never raise it; nor may it exceed their
own monthly budget. The page says which of the two bounds it.

The popup reports the outcome to its opener with ``postMessage`` to that exact origin
(never ``"*"``), as ``{"wattfare": "connect", "consent": <id>, "status": "connected" |
"denied" | "expired", "connection": {...}}``, and closes. Test-mode apps are approved
as soon as the popup opens, with the cap asked for: no person and no budget is involved
(test-mode users are connected on first use anyway), so their links need no proof.
"""

from __future__ import annotations

import hmac
import math
import time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.auth import CredentialKind
from gateway.consent.signing import new_token, token_hash
from gateway.consent.web import (
    consent_of,
    form_ok,
    gateway_of,
    read_form,
    render,
    session_of,
)
from gateway.errors import OriginNotAllowed
from gateway.money import NANO_PER_USD, nano_to_usd
from gateway.routes import authenticate, json_response
from gateway.store.base import App, Consent, ConsentGone, period_of

CONSENT_TTL_S = 600
SESSION_ONLY: frozenset[CredentialKind] = frozenset({"session"})
MAX_CAP_USD = 1_000_000.0
# How long the page waits for its opener's proof before it says the link was forwarded.
HANDSHAKE_MS = 3000


async def start(request: Request) -> Response:
    """``POST /v1/connect`` (session token): a one-time consent URL for the caller's user."""
    principal = await authenticate(request, SESSION_ONLY, need_user=True)
    assert principal.user_id is not None
    origin = (request.headers.get("origin") or "").lower()
    if origin not in principal.app.origins:
        raise OriginNotAllowed(
            f"The page's origin {origin or '(none)'} is not registered for this app; "
            "register it with 'wattfare apps create --origin'.",
        )
    state = gateway_of(request)
    cap = principal.requested_cap_nano
    if cap is None:
        cap = state.settings.metering.default_monthly_nano
    cid = new_token()
    expires_at = int(time.time()) + CONSENT_TTL_S
    await state.store.create_consent(
        token_hash(cid), app_id=principal.app.id, user_id=principal.user_id, cap_nano=cap,
        origin=origin, expires_at=expires_at,
    )
    public_url = state.settings.server.public_url
    return json_response({
        "url": f"{public_url}/connect/{cid}", "expires_at": expires_at,
        "proof": _proof(request, cid),
    })


def _proof(request: Request, cid: str) -> str:
    """What only the page that made the link holds (see the module docstring)."""
    return consent_of(request).signer.mac("consent-proof", cid)


def _proof_ok(request: Request, cid: str, proof: str | None) -> bool:
    return bool(proof) and hmac.compare_digest(str(proof), _proof(request, cid))


def cap_ceiling(asked_nano: int, budget_nano: int) -> tuple[int, str]:
    """The most a person may grant, and what sets it: ``"asked"`` (the app's request)
    or ``"budget"`` (their own monthly budget, when it is lower)."""
    if budget_nano < asked_nano:
        return budget_nano, "budget"
    return asked_nano, "asked"


async def _app(request: Request, app_id: str) -> App | None:
    for app in await gateway_of(request).store.list_apps():
        if app.id == app_id and app.status == "active":
            return app
    return None


def _message(cid: str, status: str, connection: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"wattfare": "connect", "consent": cid, "status": status, "connection": connection}


async def _connection(request: Request, consent: Consent) -> dict[str, Any]:
    """The connection as ``GET /v1/connection`` shows it."""
    period = period_of(time.time())
    conn = await gateway_of(request).store.connection(consent.app_id, consent.user_id, period)
    if conn is None:
        return {"object": "connection", "status": "not_connected", "user_id": consent.user_id,
                "monthly_cap_usd": None, "spent_usd": 0.0, "remaining_usd": None,
                "period": period}
    return {
        "object": "connection",
        "status": conn.status,
        "user_id": consent.user_id,
        "monthly_cap_usd": nano_to_usd(conn.cap_nano),
        "spent_usd": nano_to_usd(conn.settled_nano),
        "remaining_usd": nano_to_usd(conn.remaining_nano) if conn.status == "connected" else 0.0,
        "period": period,
    }


async def _gone(request: Request, cid: str, reason: str, consent: Consent | None) -> Response:
    """A link that cannot be used. The opener (if the link's origin is still the app's)
    hears ``expired``, so the app's ``connect()`` settles instead of waiting."""
    post = None
    if consent is not None and reason in ("expired", "used"):
        app = await _app(request, consent.app_id)
        if app is not None and consent.origin in app.origins:
            post = {"target": consent.origin, "message": _message(cid, "expired"), "close": False}
    status = 404 if reason == "unknown" else 410
    return await render(
        request, "connect.html", status=status, keep_opener=True, state=reason, app=None,
        post=post,
    )


def _parse_cap(text: str) -> int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value) or not 0.01 <= value <= MAX_CAP_USD:
        return None
    return round(value * NANO_PER_USD)


async def page(request: Request) -> Response:
    """``GET|POST /connect/<id>``: show the request; approve or deny it."""
    cid = request.path_params["cid"]
    store = gateway_of(request).store
    id_hash = token_hash(cid)
    consent = await store.consent(id_hash)
    now = int(time.time())
    if consent is None:
        return await _gone(request, cid, "unknown", None)
    if consent.used_at is not None:
        return await _gone(request, cid, "used", consent)
    if consent.expires_at <= now:
        return await _gone(request, cid, "expired", consent)
    app = await _app(request, consent.app_id)
    if app is None:
        return await _gone(request, cid, "unknown", None)
    if consent.origin not in app.origins:
        # The origin was unregistered after the link was made: post nothing to it.
        return await render(
            request, "connect.html", status=403, keep_opener=True, state="origin", app=app,
            post=None,
        )
    if app.mode == "test":
        return await _finish(
            request, cid, consent, app, approve=True, account_id=None, cap=consent.cap_nano,
            test_mode=True,
        )
    account, _ = await session_of(request)
    common: dict[str, Any] = {
        "app": app, "consent": consent, "cid": cid, "post": None, "handshake": True,
        "handshake_ms": HANDSHAKE_MS,
    }
    if account is None:
        return await render(
            request, "connect.html", keep_opener=True, state="signin",
            next=f"/connect/{cid}", **common,
        )
    spend = await store.account_spend(account.id, period_of(time.time()))
    ceiling, bound_by = cap_ceiling(consent.cap_nano, spend.budget_nano)
    common.update(spend=spend, ceiling=ceiling, bound_by=bound_by)
    funding = gateway_of(request).settings.funding
    # Where people must pay with their own source, one is connected before approving.
    common["needs_funding"] = (
        funding.user and not funding.operator
        and await store.funding_source(account.id) is None
    )
    if request.method == "GET":
        return await render(
            request, "connect.html", keep_opener=True, state="ask", error=None,
            cap_value=f"{nano_to_usd(ceiling):.2f}", **common,
        )
    form = await read_form(request)
    if not await form_ok(request, form):
        return await render(
            request, "connect.html", status=403, keep_opener=True, state="ask",
            error="This form has expired or came from another site. Nothing was changed.",
            cap_value=f"{nano_to_usd(ceiling):.2f}", **common,
        )
    if not _proof_ok(request, cid, form.get("proof")):
        common.update(handshake=False)
        return await render(
            request, "connect.html", status=403, keep_opener=True, state="unbound", **common,
        )
    approve = form.get("decision") == "approve"
    if approve and common["needs_funding"]:
        return await render(
            request, "connect.html", status=409, keep_opener=True, state="ask",
            error="Connect your OpenRouter account first: it pays for what the app spends.",
            cap_value=f"{nano_to_usd(ceiling):.2f}", **common,
        )
    entered = _parse_cap(form.get("cap", "")) if approve else consent.cap_nano
    if entered is None:
        return await render(
            request, "connect.html", status=400, keep_opener=True, state="ask",
            error=f"Enter a monthly cap between $0.01 and ${MAX_CAP_USD:,.0f}.",
            cap_value=form.get("cap", "")[:20], **common,
        )
    cap = min(entered, ceiling) if approve else entered
    return await _finish(
        request, cid, consent, app, approve=approve, account_id=account.id, cap=cap,
        test_mode=False, lowered=bound_by if approve and entered > ceiling else None,
        entered=entered,
    )


async def _finish(
    request: Request,
    cid: str,
    consent: Consent,
    app: App,
    *,
    approve: bool,
    account_id: str | None,
    cap: int,
    test_mode: bool,
    lowered: str | None = None,
    entered: int | None = None,
) -> Response:
    try:
        done = await gateway_of(request).store.finish_consent(
            token_hash(cid), approve=approve, account_id=account_id, cap_nano=cap,
            now=int(time.time()),
        )
    except ConsentGone as gone:
        return await _gone(request, cid, gone.reason, consent)
    if approve:
        message = _message(cid, "connected", await _connection(request, done))
    else:
        message = _message(cid, "denied")
    return await render(
        request, "connect.html", keep_opener=True, state="approved" if approve else "denied",
        app=app, consent=done, test_mode=test_mode, lowered=lowered, entered=entered,
        post={"target": done.origin, "message": message, "close": True},
    )
