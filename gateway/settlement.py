"""The one place a chat request's money settles: the hold becomes a charge and a ledger
row, or, when the cost awaits the upstream's own record of the generation, the hold
stays and the look-up is queued in the store (:mod:`gateway.lookups` finishes it).

A settle that fails (the store busy or briefly unreachable) is retried a few times with
backoff before the caller hears of it; whatever still fails leaves the hold in place,
which reconciliation settles later (the cap stays safe meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from gateway.observability import Metrics, RequestRecord
from gateway.relay.outcome import Outcome
from gateway.store.base import Charge, Hold, MeteringStore, Settlement
from gateway.upstreams.base import Upstream

T = TypeVar("T")
log = logging.getLogger("wattfare.settlement")

# Waits between tries of a settle that failed (seconds): about 3 s in all.
SETTLE_RETRIES_S = (0.05, 0.2, 0.75, 2.0)
# The first look-up of a generation's record waits this long (OpenRouter's record
# appears a moment after the end; see gateway.lookups for the rest of the schedule).
FIRST_LOOKUP_S = 1.0


def settlement_of(
    hold: Hold, outcome: Outcome, *, record: RequestRecord, started: float
) -> Settlement:
    return Settlement(
        hold_id=hold.id,
        request_id=record.request_id,
        model=outcome.model,
        cost_nano=outcome.cost_nano,
        cost_source=outcome.cost_source,
        prompt_tokens=outcome.prompt_tokens,
        completion_tokens=outcome.completion_tokens,
        status=outcome.status,
        http_status=outcome.http_status,
        error_code=outcome.error_code,
        ttfb_ms=None if record.ttfb is None else record.ttfb * 1000,
        duration_ms=(time.perf_counter() - started) * 1000,
        generation_id=outcome.generation_id,
        funded_by=hold.funded_by,  # whoever the hold was reserved for
    )


class Settler:
    def __init__(self, store: MeteringStore, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics

    async def settle(
        self, hold: Hold, outcome: Outcome, *, record: RequestRecord, started: float,
        upstream: Upstream | None,
    ) -> int:
        """Settle one request (or queue its look-up): what it was charged, so far (the
        most it will be charged while a look-up is pending). Raises only when the store
        kept failing, with the hold left for reconciliation."""
        settlement = settlement_of(hold, outcome, record=record, started=started)
        if (
            outcome.estimate_only
            and outcome.generation_id is not None
            and upstream is not None
            and upstream.keeps_records
        ):
            await self._retrying(lambda: self.store.defer(settlement,
                                                          retry_in_s=FIRST_LOOKUP_S))
            self.metrics.lookups_queued.inc()
            # The estimate is what the hold settles to if the look-up gives up: the most
            # this request will be charged.
            return min(outcome.cost_nano, hold.amount_nano)
        charge = await self._retrying(lambda: self.store.settle(settlement))
        return self.booked(charge)

    def booked(self, charge: Charge | None) -> int:
        """Count a settled charge in the metrics; what was charged."""
        if charge is None:
            return 0
        if charge.charged_nano:
            self.metrics.spend.inc(charge.charged_nano / 1e9)
        if charge.operator_nano:
            self.metrics.operator_excess.inc(charge.operator_nano / 1e9)
        return charge.charged_nano

    @staticmethod
    async def _retrying(step: Callable[[], Awaitable[T]]) -> T:
        for wait in (*SETTLE_RETRIES_S, None):
            try:
                return await step()
            except Exception:
                if wait is None:
                    raise
                log.warning("settling failed; trying again in %ss", wait, exc_info=True)
                await asyncio.sleep(wait)
        raise AssertionError("unreachable")
