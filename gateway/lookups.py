"""After-the-fact costs: the upstream's own record of a generation, looked up off the
request path.

A request whose cost was not reported (a stream cut, a client gone, an upstream error,
no usage chunk sent) keeps its hold, with its settlement (the estimate) stored beside it
(:meth:`MeteringStore.defer`). This loop claims the look-ups that are due, from this
node or any other (the store leases each to one node at a time, so a dead node's queue
is taken over), asks the upstream, and settles: to the record's ``total_cost``
(``cost_source = "generation"``) when it has one; after a record that stays missing for
the whole schedule, to the stored estimate. Holds a crash left behind that name a
generation come through here too (their fallback is the last checkpoint).

OpenRouter answers 404 for a few seconds after a generation ends; its own clients retry
after 2, 4 and 8 s. The schedule here is the same, and a little longer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from gateway.funding.funder import Funder
from gateway.observability import Metrics
from gateway.settlement import Settler
from gateway.store.base import MeteringStore, PendingLookup
from gateway.upstreams import Upstreams

log = logging.getLogger("wattfare.lookups")

# Waits after each miss (seconds); after the last one, the estimate stands.
SCHEDULE_S = (2.0, 4.0, 8.0, 16.0, 30.0)
POLL_S = 0.5
BATCH = 32
LEASE_S = 30.0


class Lookups:
    def __init__(self, store: MeteringStore, upstreams: Upstreams, settler: Settler,
                 metrics: Metrics, *, funder: Funder | None = None) -> None:
        self.store = store
        self.upstreams = upstreams
        self.settler = settler
        self.metrics = metrics
        # A user-funded generation is looked up with the key that paid for it.
        self.funder = funder

    async def run(self) -> None:
        """Forever: claim what is due and work it (one batch at a time, concurrently)."""
        while True:
            try:
                due = await self.store.claim_lookups(limit=BATCH, lease_s=LEASE_S)
            except Exception:
                log.exception("claiming generation look-ups failed")
                due = []
            if due:
                await asyncio.gather(*(self.work(p) for p in due))
            if len(due) < BATCH:
                await asyncio.sleep(POLL_S)

    async def work(self, pending: PendingLookup) -> None:
        fallback = pending.fallback
        upstream = self.upstreams.upstream_for(fallback.model)
        try:
            api_key = (
                await self.funder.key_for(fallback.funded_by) if self.funder is not None
                else None
            )
            record = (
                await upstream.generation(pending.generation_id, api_key=api_key)
                if upstream.keeps_records else None
            )
        except Exception as exc:
            log.warning("generation %s: look-up failed: %s", pending.generation_id, exc)
            record = None
        try:
            if record is not None:
                charge = await self.store.settle(dataclasses.replace(
                    fallback, cost_nano=record.cost_nano, cost_source="generation",
                    prompt_tokens=record.prompt_tokens or fallback.prompt_tokens,
                    completion_tokens=record.completion_tokens or fallback.completion_tokens,
                ))
                self.settler.booked(charge)
                self.metrics.lookups.labels("found").inc()
            elif pending.attempts >= len(SCHEDULE_S) or not upstream.keeps_records:
                log.warning("generation %s: no record after %d look-ups; the estimate stands",
                            pending.generation_id, pending.attempts + 1)
                self.settler.booked(await self.store.settle(fallback))
                self.metrics.lookups.labels("gave_up").inc()
            else:
                await self.store.retry_lookup(
                    pending.hold_id, retry_in_s=SCHEDULE_S[pending.attempts]
                )
                self.metrics.lookups.labels("retry").inc()
        except Exception:
            # The lease runs out and the look-up is claimed again.
            log.exception("generation %s: settling failed", pending.generation_id)
