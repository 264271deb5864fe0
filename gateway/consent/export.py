"""``GET /dashboard/usage.csv``: a person's own usage, one row per request, as CSV.

Amounts are exact decimal USD (nine places: the ledger's nano-USD), so a spreadsheet's
sum of ``cost_usd`` matches the dashboard to the last digit. Rows are read from the store
a page at a time and streamed, so a long history costs no more memory than a short one.
Text a spreadsheet would run as a formula (a cell starting with ``=``, ``+``, ``-``, ``@``
or a control character) is prefixed with ``'``: app names, user ids and model names come
from others, not from the person downloading.
"""

from __future__ import annotations

import csv
import io
import re
import time
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from gateway.consent.web import gateway_of, redirect, session_of
from gateway.funding.funder import paid_by
from gateway.money import NANO_PER_USD
from gateway.store.base import Store, UsageRow, period_of

PAGE = 1000
PERIOD_RE = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
COLUMNS = (
    "time_utc", "month", "app", "app_id", "user_id", "model", "prompt_tokens",
    "completion_tokens", "total_tokens", "cost_usd", "status", "request_id", "paid_by",
)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")


def exact_usd(nano: int) -> str:
    """``1_250_000_000`` as ``1.250000000``: nano-USD as an exact decimal."""
    whole, frac = divmod(nano, NANO_PER_USD)
    return f"{whole}.{frac:09d}"


def cell(text: str) -> str:
    return "'" + text if text.startswith(FORMULA_START) else text


def csv_row(row: UsageRow, account_id: str) -> list[str]:
    return [
        time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row.created_at)), row.period,
        cell(row.app_name), row.app_id, cell(row.user_id), cell(row.model),
        str(row.prompt_tokens), str(row.completion_tokens),
        str(row.prompt_tokens + row.completion_tokens), exact_usd(row.cost_nano),
        row.status, row.request_id, paid_by(row.funded_by, account_id),
    ]


async def csv_lines(store: Store, account_id: str, *, period: str | None) -> AsyncIterator[str]:
    """The CSV document, a page of rows at a time."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    after = 0
    while True:
        rows = await store.account_usage(account_id, after=after, limit=PAGE, period=period)
        writer.writerows(csv_row(r, account_id) for r in rows)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        if len(rows) < PAGE:
            return
        after = rows[-1].seq


async def usage_csv(request: Request) -> Response:
    """``GET /dashboard/usage.csv[?month=YYYY-MM]``: all of the account's usage, or
    one month's."""
    account, _ = await session_of(request)
    if account is None:
        return redirect("/signin?next=/dashboard")
    month = request.query_params.get("month") or None
    if month is not None and PERIOD_RE.match(month) is None:
        return Response(
            "month must be YYYY-MM\n", status_code=400, media_type="text/plain",
            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"},
        )
    name = f"wattfare-usage-{month or 'all-to-' + period_of(time.time())}.csv"
    return StreamingResponse(
        csv_lines(gateway_of(request).store, account.id, period=month),
        media_type="text/csv; charset=utf-8",
        headers={
            "Content-Disposition": f'attachment; filename="{name}"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        },
    )
