"""The PostgreSQL store's deferred settlements (the upstream's own record, looked up
afterwards) and its reconciliation of holds that their node left: a node that died, or
this node's own orphans."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import asyncpg

from gateway.store.base import ORPHAN_AFTER_S, Charge, PendingLookup, Settlement
from gateway.store.sqlite_money import reconciled, settlement_json, settlement_of

_HOLD_FIELDS = "id, request_id, model, used_nano, created_at, generation_id, funded_by"


class ReconcileMixin:
    """Deferred look-ups and reconciliation for the PostgreSQL store."""

    instance_id: str
    lease_s: float

    @property
    def pool(self) -> asyncpg.Pool:
        raise NotImplementedError  # provided by PostgresStore

    async def _live_instances(self, con: Any) -> list[str]:
        raise NotImplementedError  # provided by PostgresStore

    async def settle(self, settlement: Settlement) -> Charge | None:
        raise NotImplementedError  # provided by MeteringMixin

    # -- deferred settlements: the upstream's own record, looked up afterwards ------------

    async def defer(self, settlement: Settlement, *, retry_in_s: float) -> None:
        await self.pool.execute(
            "UPDATE holds SET settlement = $2, due_at = extract(epoch FROM now()) + $3, "
            "updated_at = wattfare_now(), generation_id = COALESCE($4, generation_id) "
            "WHERE id = $1",
            settlement.hold_id, settlement_json(settlement), float(retry_in_s),
            settlement.generation_id,
        )

    async def claim_lookups(self, *, limit: int, lease_s: float) -> list[PendingLookup]:
        async with self.pool.acquire() as con, con.transaction():
            now = float(await con.fetchval("SELECT extract(epoch FROM now())"))
            live = await self._live_instances(con)
            # Holds a dead node left with a generation id: deferred, due now.
            for hold in await con.fetch(
                f"SELECT {_HOLD_FIELDS} FROM holds WHERE settlement IS NULL "  # noqa: S608 (constant columns)
                "AND generation_id IS NOT NULL AND NOT (instance_id = ANY($1)) "
                "FOR UPDATE SKIP LOCKED",
                live,
            ):
                await con.execute(
                    "UPDATE holds SET settlement = $2, due_at = $3 WHERE id = $1",
                    hold[0], settlement_json(reconciled(tuple(hold), now)), now,
                )
            rows = await con.fetch(
                "UPDATE holds SET instance_id = $1, due_at = $2 + $3 WHERE id IN ("
                "  SELECT id FROM holds WHERE settlement IS NOT NULL "
                "  AND generation_id IS NOT NULL AND due_at <= $2 "
                "  ORDER BY due_at LIMIT $4 FOR UPDATE SKIP LOCKED) "
                "RETURNING id, request_id, generation_id, attempts, settlement",
                self.instance_id, now, float(lease_s), limit,
            )
        return [
            PendingLookup(hold_id=r[0], request_id=r[1], generation_id=r[2], attempts=r[3],
                          fallback=settlement_of(r[4]))
            for r in rows
        ]

    async def retry_lookup(self, hold_id: str, *, retry_in_s: float) -> None:
        await self.pool.execute(
            "UPDATE holds SET attempts = attempts + 1, "
            "due_at = extract(epoch FROM now()) + $2 WHERE id = $1",
            hold_id, float(retry_in_s),
        )

    # -- reconciliation -------------------------------------------------------------------

    async def reconcile_stale_holds(self, *, live_request_ids: Collection[str] = ()) -> int:
        live_requests = frozenset(live_request_ids)
        pool = self.pool
        now = float(await pool.fetchval("SELECT extract(epoch FROM now())"))
        live = await self._live_instances(pool)
        lost = await pool.fetch(
            f"SELECT {_HOLD_FIELDS} FROM holds WHERE settlement IS NULL "  # noqa: S608 (constant columns)
            "AND generation_id IS NULL AND NOT (instance_id = ANY($1))",
            live,
        )
        # This node's own orphans: not deferred, their request no longer running, untouched
        # for a while (a stream's checkpoints touch its hold).
        orphans = [
            hold for hold in await pool.fetch(
                f"SELECT {_HOLD_FIELDS} FROM holds WHERE settlement IS NULL "  # noqa: S608 (constant columns)
                "AND instance_id = $1 AND updated_at < $2",
                self.instance_id, int(now - ORPHAN_AFTER_S),
            )
            if hold[1] not in live_requests
        ]
        # Deferred without a generation id to look up: settle to the fall-back once due.
        stuck = await pool.fetch(
            "SELECT settlement FROM holds WHERE settlement IS NOT NULL "
            "AND generation_id IS NULL AND due_at <= $1",
            now,
        )
        count = 0
        for hold in [*lost, *(h for h in orphans if h[5] is None)]:
            count += await self.settle(reconciled(tuple(hold), now)) is not None
        for (text,) in stuck:
            count += await self.settle(settlement_of(text)) is not None
        for hold in orphans:
            if hold[5] is not None:  # the upstream keeps a record: look it up
                done = await pool.execute(
                    "UPDATE holds SET settlement = $2, due_at = $3 "
                    "WHERE id = $1 AND settlement IS NULL",
                    hold[0], settlement_json(reconciled(tuple(hold), now)), now,
                )
                count += done == "UPDATE 1"
        await pool.execute(
            "DELETE FROM instances WHERE heartbeat_at < wattfare_now() - $1 AND id <> $2",
            int(self.lease_s), self.instance_id,
        )
        return count
