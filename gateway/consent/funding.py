"""Connecting a person's own OpenRouter account as their funding source.

``POST /funding/openrouter`` (a signed-in dashboard or consent page's form) starts an
attempt: a fresh ``state``, a verifier derived from it and the browser session
(:mod:`gateway.funding.pkce`), the attempt stored bound to that session, and a redirect
to OpenRouter with the S256 challenge and a callback on the gateway's own origin.
``GET /funding/openrouter/callback/<state>?code=…`` finishes it in the same browser
session only: the attempt is used up, the code exchanged with the verifier, and the key
stored sealed (:mod:`gateway.funding.vault`). ``POST /funding/disconnect`` deletes the
stored key: the account's apps are refused (``funding_unavailable``, or paid by the
operator where the gateway offers both) from their next request on.
"""

from __future__ import annotations

import hmac
import time
import uuid

from starlette.requests import Request
from starlette.responses import Response

from gateway.consent.signing import new_token, token_hash
from gateway.consent.web import (
    consent_of,
    form_ok,
    gateway_of,
    read_form,
    redirect,
    render,
    safe_next,
    session_of,
)
from gateway.funding.funder import record_of
from gateway.funding.openrouter import (
    PROVIDER,
    ExchangeFailed,
    authorization_url,
    callback_url,
    exchange_code,
)
from gateway.funding.pkce import challenge_of, verifier_for, verifier_hash
from gateway.store.base import FundingAttempt, FundingSource

ATTEMPT_TTL_S = 600
MAX_CODE_CHARS = 1024


async def _problem(request: Request, message: str, *, status: int, back: str) -> Response:
    return await render(
        request, "funding.html", status=status, keep_opener=True, message=message, back=back
    )


async def connect(request: Request) -> Response:
    """``POST /funding/openrouter``: start connecting OpenRouter."""
    account, sid = await session_of(request)
    if account is None or sid is None:
        return redirect("/signin?next=/dashboard")
    form = await read_form(request)
    back = safe_next(form.get("next"))
    if not await form_ok(request, form):
        return await _problem(
            request, "That request did not come from this page, so nothing was started.",
            status=403, back=back,
        )
    consent = consent_of(request)
    settings = consent.settings
    if not settings.funding.user or gateway_of(request).funder.vault is None:
        return await _problem(
            request, "This gateway does not take people's own funding sources.",
            status=404, back=back,
        )
    state = new_token()
    verifier = verifier_for(consent.signer, state=state, session_id=sid)
    now = int(time.time())
    await gateway_of(request).store.create_funding_attempt(
        FundingAttempt(
            state_hash=token_hash(state), session_hash=token_hash(sid), account_id=account.id,
            provider=PROVIDER, verifier_hash=verifier_hash(verifier), return_to=back,
            created_at=now, expires_at=now + ATTEMPT_TTL_S,
        )
    )
    return redirect(
        authorization_url(
            settings.funding.openrouter_auth_url,
            callback=callback_url(settings.server.public_url, state),
            challenge=challenge_of(verifier),
        )
    )


def _returning(back: str, notice: str) -> str:
    if back == "/dashboard":
        return f"/dashboard?notice={notice}"
    return back


async def callback(request: Request) -> Response:
    """``GET /funding/openrouter/callback/<state>``: OpenRouter sends the person back."""
    state = request.path_params["state"]
    account, sid = await session_of(request)
    if account is None or sid is None:
        return await _problem(
            request, "Sign in to Wattfare in this browser, then connect OpenRouter again.",
            status=401, back="/dashboard",
        )
    gateway = gateway_of(request)
    attempt = await gateway.store.take_funding_attempt(
        token_hash(state), session_hash=token_hash(sid)
    )
    if attempt is None or attempt.account_id != account.id:
        return await _problem(
            request,
            "This sign-in is not one this browser started, or it was used already. "
            "Connect OpenRouter again from your dashboard.",
            status=400, back="/dashboard",
        )
    back = attempt.return_to
    if attempt.expires_at <= int(time.time()):
        return await _problem(
            request, "This sign-in took too long and expired. Please try again.",
            status=400, back=back,
        )
    code = request.query_params.get("code", "")
    if not code or len(code) > MAX_CODE_CHARS or not code.isprintable():
        return await _problem(
            request, "OpenRouter was not connected: the sign-in was cancelled or denied.",
            status=400, back=back,
        )
    verifier = verifier_for(consent_of(request).signer, state=state, session_id=sid)
    if not hmac.compare_digest(verifier_hash(verifier), attempt.verifier_hash):
        return await _problem(
            request, "This sign-in could not be verified. Please try again.",
            status=400, back=back,
        )
    try:
        issued = await exchange_code(gateway.upstreams, code=code, verifier=verifier)
    except ExchangeFailed as exc:
        return await _problem(request, str(exc), status=502, back=back)
    funder = gateway.funder
    assert funder.vault is not None  # the attempt was only started with one
    source_id = "fs_" + uuid.uuid4().hex[:20]
    label = f"OpenRouter account {issued.user_id[:64]}" if issued.user_id else "OpenRouter"
    draft = FundingSource(
        id=source_id, account_id=account.id, provider=PROVIDER, label=label, kek_id="",
        wrapped_key=b"", ciphertext=b"", created_at=int(time.time()),
    )
    sealed = funder.vault.seal(issued.key, record=record_of(draft))
    old = await gateway.store.funding_source(account.id)
    await gateway.store.save_funding_source(
        FundingSource(
            id=draft.id, account_id=draft.account_id, provider=draft.provider,
            label=draft.label, kek_id=sealed.kek_id, wrapped_key=sealed.wrapped_key,
            ciphertext=sealed.ciphertext, created_at=draft.created_at,
        )
    )
    if old is not None:
        funder.forget(old.id)
    return redirect(_returning(back, "funding_connected"))


async def disconnect(request: Request) -> Response:
    """``POST /funding/disconnect``: delete the account's stored key."""
    account, _ = await session_of(request)
    if account is None:
        return redirect("/signin?next=/dashboard")
    form = await read_form(request)
    if not await form_ok(request, form):
        return await _problem(
            request, "That request did not come from this page, so nothing was changed.",
            status=403, back="/dashboard",
        )
    gateway = gateway_of(request)
    source = await gateway.store.funding_source(account.id)
    if source is not None:
        await gateway.store.delete_funding_source(account.id)
        gateway.funder.forget(source.id)
    return redirect("/dashboard?notice=funding_disconnected")
