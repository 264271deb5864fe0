"""Requests and settlements as the chat path makes them, for the store's tests."""

from __future__ import annotations

import time
import uuid

from gateway.store.base import HoldRequest, Settlement, period_of


def hold_request(
    app_id: str,
    user: str,
    *,
    want: int,
    minimum: int = 1,
    key_version: int = 1,
    auto: bool = True,
    cap: int | None = 1000,
    funded_by: str = "operator",
) -> HoldRequest:
    return HoldRequest(
        request_id="req_" + uuid.uuid4().hex, app_id=app_id, user_id=user,
        key_version=key_version, model="m", want_nano=want, min_nano=minimum,
        auto_connect=auto, requested_cap_nano=cap, default_cap_nano=500, funded_by=funded_by,
    )


def settlement(
    hold_id: str,
    cost: int,
    *,
    status: str = "ok",
    source: str = "upstream",
    generation_id: str | None = None,
    funded_by: str = "operator",
) -> Settlement:
    return Settlement(
        hold_id=hold_id, request_id=hold_id.removeprefix("hold_"), model="m", cost_nano=cost,
        cost_source=source, prompt_tokens=1, completion_tokens=2, status=status,
        http_status=200, error_code=None, ttfb_ms=1.0, duration_ms=2.0,
        generation_id=generation_id, funded_by=funded_by,
    )


def this_month() -> str:
    return period_of(time.time())
