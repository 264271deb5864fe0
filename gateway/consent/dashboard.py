"""``/dashboard``: a person's budget, their connected apps, what each spent, and the
controls that matter (change the budget or a cap, revoke after a confirmation).

Revoking goes through :meth:`GatewayState.revoke`, which records an event other processes
poll (cutting their open streams) and flags this process's streams at once.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import defaultdict
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.consent.chart import daily_chart
from gateway.consent.web import form_ok, gateway_of, read_form, redirect, render, session_of
from gateway.funding.funder import OPERATOR_PAID, OWN, paid_by
from gateway.money import NANO_PER_USD
from gateway.store.base import Account, AccountConnection, period_of

NOTICES = {
    "revoked": "Revoked. The app can no longer spend from your budget; "
               "anything it was generating was stopped.",
    "cap": "Cap updated.",
    "budget": "Budget updated.",
    "budget_below": "Budget updated. It is below what your apps spent this month, so they "
                    "cannot spend more until next month (or until you raise it).",
    "funding_connected": "OpenRouter connected: your apps now spend your own OpenRouter "
                         "credits, within the caps you set.",
    "funding_disconnected": "OpenRouter disconnected: this gateway deleted the key it held "
                            "for you, and your apps no longer spend from it. The key itself "
                            "stays valid at OpenRouter until you delete it there (a key "
                            "cannot delete itself; only you can, in your OpenRouter "
                            "settings):",
}
# Where a person deletes an OpenRouter key (the gateway cannot: OpenRouter deletes keys
# only for a management key, which the gateway does not have).
OPENROUTER_KEYS_URL = "https://openrouter.ai/settings/keys"
# A notice that ends with a link.
NOTICE_LINKS = {"funding_disconnected": OPENROUTER_KEYS_URL}
# What the upstream said of the person's key, for the dashboard's notice.
FUNDING_PROBLEMS = {
    "out_of_credit": "OpenRouter refused a request because your account is out of credit. "
                     "Add credit on OpenRouter; your apps resume on their next request.",
    "key_limit": "OpenRouter refused a request because the key reached its spending "
                 "limit. Raise the limit on OpenRouter, or reconnect to get a new key.",
    "key_revoked": "OpenRouter no longer accepts the key (it was revoked or expired). "
                   "Reconnect OpenRouter to keep your apps working.",
    "unreadable": "This gateway can no longer read the key it holds for you (its "
                  "encryption key changed). Reconnect OpenRouter to keep your apps working.",
}
# Who paid each request, in the requests table.
PAYERS = {
    OWN: "Your OpenRouter account",
    OPERATOR_PAID: "The operator",
}
OTHER_PAYER = "Another OpenRouter account"
MAX_CAP_USD = 1_000_000.0
CHART_DAYS = 30
REQUESTS_PER_APP = 5
FORGED = "That request did not come from this page, so nothing was changed."


async def _view(
    request: Request, account: Account, *, status: int = 200, error: str | None = None
) -> Response:
    store = gateway_of(request).store
    now = time.time()
    period = period_of(now)
    spend = await store.account_spend(account.id, period)
    connections = await store.account_connections(account.id, period)
    recent = await store.account_requests(account.id, limit=200)
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    since = int(now) - CHART_DAYS * 86_400
    daily: dict[str, dict[str, int]] = defaultdict(dict)
    for app_id, day, nano in await store.account_daily_spend(account.id, since=since):
        daily[app_id][day] = daily[app_id].get(day, 0) + nano
    by_app: dict[str, list[Any]] = defaultdict(list)
    for row in recent:
        if len(by_app[row.app_id]) < REQUESTS_PER_APP:
            payer = paid_by(row.funded_by, account.id)
            by_app[row.app_id].append(
                {"row": row, "payer": payer, "payer_label": PAYERS.get(payer, OTHER_PAYER)}
            )
    cards = [
        {
            "conn": conn,
            "requests": by_app.get(conn.app_id, []),
            "chart": daily_chart(daily.get(conn.app_id, {}), today=today, days=CHART_DAYS),
        }
        for conn in connections
    ]
    notice_key = request.query_params.get("notice", "")
    notice = NOTICES.get(notice_key)
    source = await store.funding_source(account.id)
    return await render(
        request, "dashboard.html", status=status, spend=spend, cards=cards, notice=notice,
        error=error, period=period, max_usd=MAX_CAP_USD, source=source,
        notice_link=NOTICE_LINKS.get(notice_key) if notice else None,
        openrouter_keys_url=OPENROUTER_KEYS_URL,
        source_problem=FUNDING_PROBLEMS.get(source.problem or "") if source else None,
        connected=sum(1 for c in connections if c.status == "connected"),
    )


async def dashboard(request: Request) -> Response:
    """``GET /dashboard``."""
    account, _ = await session_of(request)
    if account is None:
        return redirect("/signin?next=/dashboard")
    return await _view(request, account)


async def _owned(
    request: Request, account: Account, names: Any
) -> AccountConnection | None:
    """The account's connection that ``names`` (a form or the query) points at."""
    store = gateway_of(request).store
    for conn in await store.account_connections(account.id, period_of(time.time())):
        if conn.app_id == names.get("app_id") and conn.user_id == names.get("user_id"):
            return conn
    return None


async def _checked_form(request: Request) -> tuple[Account, dict[str, str]] | Response:
    """For a dashboard form: the signed-in account and its CSRF-checked form; else the
    response that refuses."""
    account, _ = await session_of(request)
    if account is None:
        return redirect("/signin?next=/dashboard")
    form = await read_form(request)
    if not await form_ok(request, form):
        return await _view(request, account, status=403, error=FORGED)
    return account, form


async def _named_connection(
    request: Request,
) -> tuple[Account, dict[str, str], AccountConnection] | Response:
    """For a form about one connection: the account, its form, and the account's
    connection the form names; else the response that refuses."""
    checked = await _checked_form(request)
    if isinstance(checked, Response):
        return checked
    account, form = checked
    conn = await _owned(request, account, form)
    if conn is None:
        return await _view(request, account, status=404, error="No such connected app.")
    return account, form, conn


def _usd(text: str) -> float | None:
    """A USD amount a person typed (``7.5``, `` $1,000 ``), or None."""
    try:
        value = float(text.strip().lstrip("$").replace(",", ""))
    except ValueError:
        return None
    return value if 0 <= value <= MAX_CAP_USD else None  # also refuses NaN


async def confirm_revoke(request: Request) -> Response:
    """``GET /dashboard/revoke?app_id=…&user_id=…``: the confirmation step before a
    revocation (a page, so it works without script under the strict CSP)."""
    account, _ = await session_of(request)
    if account is None:
        return redirect("/signin?next=/dashboard")
    conn = await _owned(request, account, request.query_params)
    if conn is None or conn.status != "connected":
        return await _view(request, account, status=404, error="No such connected app.")
    return await render(request, "revoke.html", conn=conn)


async def revoke(request: Request) -> Response:
    """``POST /dashboard/revoke``: revoke one of the account's connections."""
    found = await _named_connection(request)
    if isinstance(found, Response):
        return found
    _, _, conn = found
    await gateway_of(request).revoke(conn.app_id, conn.user_id)
    return redirect("/dashboard?notice=revoked")


async def set_cap(request: Request) -> Response:
    """``POST /dashboard/cap``: change the monthly cap of one of the account's apps."""
    found = await _named_connection(request)
    if isinstance(found, Response):
        return found
    account, form, conn = found
    usd = _usd(form.get("cap", ""))
    if usd is None or usd < 0.01:
        return await _view(
            request, account, status=400,
            error=f"Enter a monthly cap between $0.01 and ${MAX_CAP_USD:,.0f}.",
        )
    await gateway_of(request).store.set_connection_cap(
        account.id, app_id=conn.app_id, user_id=conn.user_id, cap_nano=round(usd * NANO_PER_USD)
    )
    return redirect("/dashboard?notice=cap")


async def set_budget(request: Request) -> Response:
    """``POST /dashboard/budget``: change the account's own monthly budget.

    Lowering it below this month's spend is allowed: nothing already settled changes,
    and no request is admitted until the month ends or the budget is raised again (the
    store's room is the budget less what is settled and held, never below zero).
    """
    checked = await _checked_form(request)
    if isinstance(checked, Response):
        return checked
    account, form = checked
    usd = _usd(form.get("budget", ""))
    if usd is None:
        return await _view(
            request, account, status=400,
            error=f"Enter a monthly budget between $0 and ${MAX_CAP_USD:,.0f}.",
        )
    store = gateway_of(request).store
    budget_nano = round(usd * NANO_PER_USD)
    await store.set_account_budget(account.email, budget_nano)
    spend = await store.account_spend(account.id, period_of(time.time()))
    below = spend.settled_nano > budget_nano
    return redirect("/dashboard?notice=" + ("budget_below" if below else "budget"))
