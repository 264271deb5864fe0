"""``/account``: a person's own account: change the password, sign out everywhere,
export usage, delete the account.

Every change is a CSRF-checked form post from the page itself. The ones that could lock
a person out or erase them (a new password, deletion) also ask for the current password,
and those attempts are throttled per account like sign-in, so a stolen session cannot
guess it. A new password ends every browser session of the account, this one included,
and starts a fresh one here; signing out everywhere ends them all.
"""

from __future__ import annotations

import math

from starlette.requests import Request
from starlette.responses import Response

# Sign-in's own session start (a fresh id, the cookie), reused as is.
from gateway.consent.accounts import _start_session as start_session
from gateway.consent.passwords import password_problem
from gateway.consent.web import (
    consent_of,
    form_ok,
    gateway_of,
    read_form,
    redirect,
    render,
    session_of,
)
from gateway.store.base import Account

NOTICES = {
    "password": "Password changed. Every other browser signed in to this account was "
                "signed out.",
}
FORGED = "That request did not come from this page, so nothing was changed."
WRONG_PASSWORD = "That is not your current password."  # noqa: S105 (a message)


async def _page(
    request: Request, *, status: int = 200, error: str | None = None, section: str = ""
) -> Response:
    return await render(
        request, "account.html", status=status, error=error, error_section=section,
        notice=NOTICES.get(request.query_params.get("notice", "")),
    )


def _clear_cookie(request: Request, response: Response) -> Response:
    consent = consent_of(request)
    response.delete_cookie(
        consent.session_cookie, path="/", secure=consent.secure, httponly=True, samesite="lax"
    )
    return response


async def _checked(
    request: Request, section: str
) -> tuple[Account, dict[str, str]] | Response:
    account, _ = await session_of(request)
    if account is None:
        return redirect("/signin?next=/account")
    form = await read_form(request)
    if not await form_ok(request, form):
        return await _page(request, status=403, error=FORGED, section=section)
    return account, form


async def _password_ok(
    request: Request, account: Account, password: str, section: str
) -> Response | None:
    """None if ``password`` is the account's; else the page that says why not."""
    consent = consent_of(request)
    key = "password:" + account.id
    limit = consent.settings.consent.signin_attempts_per_email
    if consent.limiter.blocked(key, limit):
        minutes = max(1, math.ceil(consent.limiter.retry_after(key) / 60))
        return await _page(
            request, status=429, section=section,
            error=f"Too many attempts. Try again in {minutes} minute"
            f"{'s' if minutes != 1 else ''}.",
        )
    consent.limiter.hit(key)
    if not await consent.passwords.verify(account.password_hash, password):
        return await _page(request, status=401, error=WRONG_PASSWORD, section=section)
    consent.limiter.reset(key)
    return None


async def page(request: Request) -> Response:
    """``GET /account``."""
    account, _ = await session_of(request)
    if account is None:
        return redirect("/signin?next=/account")
    return await _page(request)


async def change_password(request: Request) -> Response:
    """``POST /account/password``: current password, new password."""
    checked = await _checked(request, "password")
    if isinstance(checked, Response):
        return checked
    account, form = checked
    new = form.get("new_password", "")
    problem = await password_problem(new, email=account.email)
    if problem is not None:
        return await _page(request, status=400, error=problem, section="password")
    refused = await _password_ok(request, account, form.get("password", ""), "password")
    if refused is not None:
        return refused
    consent = consent_of(request)
    await gateway_of(request).store.set_password(account.id, await consent.passwords.hash(new))
    return await start_session(request, account, "/account?notice=password")


async def signout_everywhere(request: Request) -> Response:
    """``POST /account/signout-everywhere``: end every browser session of the account."""
    checked = await _checked(request, "sessions")
    if isinstance(checked, Response):
        return checked
    account, _ = checked
    ended = await gateway_of(request).store.end_web_sessions(account.id)
    request.scope.pop("wattfare.account", None)  # this page renders signed out
    response = await render(
        request, "done.html", state="signed-out", heading="Signed out everywhere",
        message=f"{ended} browser session{'' if ended == 1 else 's'} of {account.email} "
                "ended, this one included.",
    )
    return _clear_cookie(request, response)


async def delete_account(request: Request) -> Response:
    """``POST /account/delete``: with the current password, delete the account (see
    :meth:`gateway.store.base.Store.delete_account` for what is erased and kept)."""
    checked = await _checked(request, "delete")
    if isinstance(checked, Response):
        return checked
    account, form = checked
    refused = await _password_ok(request, account, form.get("password", ""), "delete")
    if refused is not None:
        return refused
    revoked = await gateway_of(request).delete_account(account.id)
    request.scope.pop("wattfare.account", None)
    response = await render(
        request, "done.html", state="deleted", heading="Account deleted",
        message=f"{account.email} is deleted and signed out everywhere. "
                f"{revoked} connected app{'' if revoked == 1 else 's'} lost access at once.",
    )
    return _clear_cookie(request, response)
