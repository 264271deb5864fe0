"""Sign-up, sign-in and sign-out on the gateway's own origin.

A successful sign-in starts a fresh server-side session (the store keeps a hash of its
id) and sets it in a signed ``HttpOnly``, ``SameSite=Lax`` cookie, ``Secure`` (and
``__Host-``-prefixed) when the public URL is https.

Sign-in attempts are counted per client address (a window), and wrong passwords per
account *and* client address (a doubling wait, cleared by a success): a stranger's
guesses slow down the stranger, never lock out the owner (see ``limits.py``).

Sign-up answers the same whether or not the email has an account: the same redirect to
sign-in, the same cookies, the password hashed either way. It never signs anyone in, so
it cannot tell a free email from a taken one; the person signs in next.
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import Response

from gateway.consent.passwords import password_problem
from gateway.consent.signing import new_token, token_hash
from gateway.consent.web import (
    client_ip,
    consent_of,
    form_ok,
    gateway_of,
    read_form,
    redirect,
    render,
    safe_next,
    session_of,
)
from gateway.store.base import Account, AccountExists

EMAIL_RE = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
EXPIRED_FORM = "This form has expired or came from another site. Please try again."


def normalize_email(value: str) -> str | None:
    email = value.strip().lower()
    if len(email) > 254 or EMAIL_RE.match(email) is None:
        return None
    return email


async def _start_session(request: Request, account: Account, next_url: str) -> Response:
    consent = consent_of(request)
    store = gateway_of(request).store
    _, old = await session_of(request)
    if old is not None:
        await store.delete_web_session(token_hash(old))
    sid = new_token()
    max_age = consent.settings.consent.session_days * 86_400
    await store.create_web_session(
        token_hash(sid), account_id=account.id, expires_at=int(time.time()) + max_age
    )
    response = redirect(next_url)
    response.set_cookie(
        consent.session_cookie, consent.signer.sign("session", sid), max_age=max_age,
        httponly=True, samesite="lax", secure=consent.secure, path="/",
    )
    return response


async def _too_many(request: Request, wait_s: float) -> Response:
    minutes = math.ceil(wait_s / 60)
    after = (
        f"{math.ceil(wait_s)} second{'s' if math.ceil(wait_s) != 1 else ''}" if wait_s < 60
        else f"{minutes} minute{'s' if minutes != 1 else ''}"
    )
    return await render(
        request, "signin.html", status=429, keep_opener=True,
        next=safe_next(request.query_params.get("next")), email="",
        error=f"Too many attempts. Try again in {after}.",
    )


async def _throttled(request: Request, *keys_and_limits: tuple[str, int]) -> Response | None:
    limiter = consent_of(request).limiter
    for key, limit in keys_and_limits:
        if limiter.blocked(key, limit):
            return await _too_many(request, max(1.0, limiter.retry_after(key)))
    for key, _ in keys_and_limits:
        limiter.hit(key)
    return None


async def signin(request: Request) -> Response:
    """``GET|POST /signin``."""
    next_url = safe_next(request.query_params.get("next"))
    if request.method == "GET":
        account, _ = await session_of(request)
        if account is not None:
            return redirect(next_url)
        return await render(
            request, "signin.html", keep_opener=True, next=next_url, email="", error=None,
            signed_up=request.query_params.get("signed_up") == "1",
        )
    form = await read_form(request)
    if not await form_ok(request, form):
        return await render(
            request, "signin.html", status=403, keep_opener=True, next=next_url,
            email="", error=EXPIRED_FORM,
        )
    consent = consent_of(request)
    settings = consent.settings.consent
    email = normalize_email(form.get("email", "")) or form.get("email", "").strip().lower()
    ip = client_ip(request)
    limited = await _throttled(request, ("signin-ip:" + ip, settings.signin_attempts_per_ip))
    if limited is not None:
        return limited
    pair = f"{email}\x00{ip}"
    wait = consent.backoff.wait_s(pair)
    if wait > 0:
        return await _too_many(request, wait)
    account = await gateway_of(request).store.account_by_email(email)
    ok = await consent.passwords.verify(
        account.password_hash if account is not None else None, form.get("password", "")
    )
    if not ok or account is None:
        consent.backoff.fail(pair)
        return await render(
            request, "signin.html", status=401, keep_opener=True, next=next_url,
            email=email[:254], error="Wrong email or password.",
        )
    if account.status != "active":
        return await render(
            request, "signin.html", status=403, keep_opener=True, next=next_url,
            email=email[:254], error="This account is disabled. Ask the gateway's operator.",
        )
    consent.backoff.reset(pair)
    return await _start_session(request, account, next_url)


async def signup(request: Request) -> Response:
    """``GET|POST /signup`` (refused when ``consent.signup`` is closed)."""
    consent = consent_of(request)
    next_url = safe_next(request.query_params.get("next"))
    settings = consent.settings.consent
    if not settings.signup_open:
        return await render(
            request, "signup.html", status=403, keep_opener=True, next=next_url, email="",
            error="This gateway does not take new accounts. Ask its operator for one.",
        )
    if request.method == "GET":
        return await render(
            request, "signup.html", keep_opener=True, next=next_url, email="", error=None
        )
    form = await read_form(request)
    if not await form_ok(request, form):
        return await render(
            request, "signup.html", status=403, keep_opener=True, next=next_url, email="",
            error=EXPIRED_FORM,
        )
    limited = await _throttled(
        request, ("signup-ip:" + client_ip(request), settings.signup_attempts_per_ip)
    )
    if limited is not None:
        return limited
    raw_email = form.get("email", "")
    email = normalize_email(raw_email)
    password = form.get("password", "")
    problem = (
        "Enter a valid email address." if email is None
        else await password_problem(password, email=email)
    )
    if problem is not None or email is None:
        return await render(
            request, "signup.html", status=400, keep_opener=True, next=next_url,
            email=raw_email.strip()[:254], error=problem,
        )
    password_hash = await consent.passwords.hash(password)
    with contextlib.suppress(AccountExists):
        await gateway_of(request).store.create_account(
            email=email, password_hash=password_hash, budget_nano=settings.default_budget_nano
        )
    # The same answer for a taken email as for a free one (see the module docstring).
    return redirect(f"/signin?{urlencode({'next': next_url, 'signed_up': '1'})}")


async def signout(request: Request) -> Response:
    """``POST /signout``: ends the session in the store and clears the cookie."""
    consent = consent_of(request)
    form = await read_form(request)
    if not await form_ok(request, form):
        return redirect("/dashboard")
    _, sid = await session_of(request)
    if sid is not None:
        await gateway_of(request).store.delete_web_session(token_hash(sid))
    response = redirect("/signin")
    response.delete_cookie(
        consent.session_cookie, path="/", secure=consent.secure, httponly=True, samesite="lax"
    )
    return response
