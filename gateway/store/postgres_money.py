"""The PostgreSQL store's metering half: connections, holds and settlement (deferred
look-ups and reconciliation: :mod:`gateway.store.postgres_reconcile`).

Each money step takes the rows it depends on as this node last saw them
(:mod:`gateway.store.postgres_cache`), or reads them (one round trip, no lock), asks
:mod:`gateway.store.rules` what to do, and hands the decision with the values it was made
on to the step's plpgsql function (:mod:`gateway.store.postgres_schema`), which locks
those rows, writes the decision if they are unchanged, and otherwise returns what it
found: the step decides again on that (no second read). A step is one transaction, and
usually one round trip; the writes of steps waiting at the same time go together, in one
transaction and one round trip (:mod:`gateway.store.postgres_batch`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, TypeVar

import asyncpg

from gateway.store import rules
from gateway.store.base import (
    Charge,
    ConnectionState,
    Extension,
    Hold,
    HoldRequest,
    LedgerRow,
    Settlement,
    StoreError,
)
from gateway.store.postgres_batch import EXTEND, NOTE, RESERVE, SETTLE, Batcher, Turns
from gateway.store.postgres_cache import Key, Snapshot, Snapshots

T = TypeVar("T")

log = logging.getLogger("wattfare.store")

# A step decided again this many times in a row (every time the rows it depends on
# changed under it) gives up; under any real contention a few suffice.
MAX_ATTEMPTS = 50
# Deadlocks and serialisation failures are retried from the start.
_RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)

_LEDGER_COLUMNS = (
    "request_id, app_id, user_id, period, model, prompt_tokens, completion_tokens, cost_nano, "
    "upstream_cost_nano, operator_nano, cost_source, status, http_status, error_code, ttfb_ms, "
    "duration_ms, generation_id, created_at, funded_by"
)

# What a reserve depends on, as wattfare_reserve() reads it (no connection: no spend).
_RESERVE_READ = """
SELECT wattfare_period(), a.key_version, a.status, c.cap_nano, c.status, c.account_id,
    CASE WHEN c.status IS NULL THEN 0 ELSE COALESCE(s.settled_nano, 0) END,
    CASE WHEN c.status IS NULL THEN 0 ELSE COALESCE(s.held_nano, 0) END,
    CASE WHEN c.account_id IS NULL THEN NULL ELSE COALESCE(b.budget_nano, 0) END,
    CASE WHEN c.account_id IS NULL THEN NULL ELSE COALESCE(bs.settled_nano, 0) END,
    CASE WHEN c.account_id IS NULL THEN NULL ELSE COALESCE(bs.held_nano, 0) END
FROM (SELECT 1) AS one
LEFT JOIN apps a ON a.id = $1
LEFT JOIN connections c ON c.app_id = $1 AND c.user_id = $2
LEFT JOIN spend s ON s.app_id = $1 AND s.user_id = $2 AND s.period = wattfare_period()
LEFT JOIN accounts b ON b.id = c.account_id
LEFT JOIN account_spend bs ON bs.account_id = c.account_id AND bs.period = wattfare_period()
"""

# What an extension or a settlement depends on.
_HOLD_READ = """
SELECT h.amount_nano, COALESCE(c.cap_nano, 0), c.status, s.settled_nano, s.held_nano,
    CASE WHEN h.account_id IS NULL THEN NULL ELSE COALESCE(b.budget_nano, 0) END,
    bs.settled_nano, bs.held_nano
FROM holds h
LEFT JOIN connections c ON c.app_id = h.app_id AND c.user_id = h.user_id
JOIN spend s ON s.app_id = h.app_id AND s.user_id = h.user_id AND s.period = h.period
LEFT JOIN accounts b ON b.id = h.account_id
LEFT JOIN account_spend bs ON bs.account_id = h.account_id AND bs.period = h.period
WHERE h.id = $1
"""

def _account(budget: int | None, settled: int | None, held: int | None) -> rules.Pool | None:
    return None if budget is None else rules.Pool(budget, settled or 0, held or 0)


class MeteringMixin:
    """Connections, holds, the ledger and reconciliation for the PostgreSQL store."""

    instance_id: str
    lease_s: float
    _snapshots: Snapshots
    _turns: Turns

    @property
    def pool(self) -> asyncpg.Pool:
        raise NotImplementedError  # provided by PostgresStore

    @property
    def _batcher(self) -> Batcher:
        raise NotImplementedError  # provided by PostgresStore

    async def _live_instances(self, con: Any) -> list[str]:
        raise NotImplementedError  # provided by PostgresStore

    @staticmethod
    async def _retrying(step: Callable[[], Awaitable[T]]) -> T:
        for _ in range(MAX_ATTEMPTS):
            try:
                return await step()
            except _RETRYABLE:
                continue
        return await step()

    # -- connections ----------------------------------------------------------------------

    async def connection(
        self, app_id: str, user_id: str, period: str | None = None
    ) -> ConnectionState | None:
        row = await self.pool.fetchrow(
            "SELECT c.status, c.cap_nano, COALESCE(s.settled_nano, 0), "
            "COALESCE(s.held_nano, 0), c.account_id, p.period, COALESCE(b.budget_nano, 0), "
            "COALESCE(bs.settled_nano, 0), COALESCE(bs.held_nano, 0) "
            "FROM (SELECT COALESCE($3, wattfare_period()) AS period) p "
            "JOIN connections c ON c.app_id = $1 AND c.user_id = $2 "
            "LEFT JOIN spend s ON s.app_id = c.app_id AND s.user_id = c.user_id "
            "AND s.period = p.period "
            "LEFT JOIN accounts b ON b.id = c.account_id "
            "LEFT JOIN account_spend bs ON bs.account_id = c.account_id "
            "AND bs.period = p.period",
            app_id, user_id, period,
        )
        if row is None:
            return None
        room = None if row[4] is None else rules.Pool(row[6], row[7], row[8]).room()
        return ConnectionState(
            app_id=app_id, user_id=user_id, status=row[0], cap_nano=row[1],
            settled_nano=row[2], held_nano=row[3], period=row[5], account_room_nano=room,
        )

    async def revoke(self, app_id: str, user_id: str) -> bool:
        row = await self.pool.fetchrow(
            "WITH r AS (UPDATE connections SET status = 'revoked', updated_at = wattfare_now() "
            "  WHERE app_id = $1 AND user_id = $2 AND status <> 'revoked' "
            "  RETURNING app_id, user_id), "
            "e AS (INSERT INTO events (kind, app_id, user_id, created_at) "
            "  SELECT 'revoked', app_id, user_id, wattfare_now() FROM r RETURNING 1) "
            "SELECT (SELECT count(*) FROM e), "
            "EXISTS (SELECT 1 FROM connections WHERE app_id = $1 AND user_id = $2)",
            app_id, user_id,
        )
        assert row is not None
        return bool(row[0] or row[1])

    # -- money ----------------------------------------------------------------------------

    def _turn(self, key: Key) -> Hashable:
        """What steps on ``key`` take turns on: its account when known, else itself."""
        row = self._snapshots.get(key)
        account = None if row is None else row[4]
        return key[:2] if account is None else ("account", account)

    async def _in_turn(self, key: Key | None, step: Callable[[], Awaitable[T]]) -> T:
        if key is None:
            return await self._retrying(step)
        turn = self._turn(key)
        await self._turns.take(turn)
        try:
            return await self._retrying(step)
        finally:
            self._turns.give(turn)

    async def reserve(self, req: HoldRequest) -> Hold:
        key = (req.app_id, req.user_id, self._snapshots.period or "")
        return await self._in_turn(key, lambda: self._reserve(req))

    async def _read_reserve(self, req: HoldRequest) -> tuple[str, Snapshot]:
        seen = await self.pool.fetchrow(_RESERVE_READ, req.app_id, req.user_id)
        assert seen is not None
        self._snapshots.period = seen[0]
        return seen[0], tuple(seen[1:])

    async def _reserve(self, req: HoldRequest) -> Hold:
        snapshots = self._snapshots
        period = snapshots.period
        cached = None if period is None else snapshots.get((req.app_id, req.user_id, period))
        if period is None or cached is None:
            period, snapshot = await self._read_reserve(req)
            fresh = True
        else:
            snapshot, fresh = cached, False
        hold_id = "hold_" + req.request_id  # request ids are unique
        for _ in range(MAX_ATTEMPTS):
            key = (req.app_id, req.user_id, period)
            version, app_status, cap, status, account_id, settled, held, *account = snapshot
            try:
                admitted = rules.admit(  # a refusal comes before anything is written
                    req, app_key_version=version, app_status=app_status,
                    conn=None if status is None else rules.ConnectionRow(cap, status,
                                                                         account_id),
                    settled_nano=settled, held_nano=held, account=_account(*account),
                )
            except StoreError:
                if fresh:
                    raise
                # Refuse only on what the database says now, not on what this node saw.
                period, snapshot = await self._read_reserve(req)
                fresh = True
                continue
            row = await self._batcher.run(RESERVE, (
                req.app_id, req.user_id, period, hold_id, req.request_id, req.model,
                self.instance_id, req.funded_by, *snapshot,
                admitted.amount_nano, admitted.cap_nano, admitted.write,
            ))
            assert row is not None
            if row[0]:
                after = list(snapshot)
                if admitted.write is not None:
                    after[2], after[3] = admitted.cap_nano, "connected"
                snapshots.put(key, tuple(after))
                snapshots.held(key, admitted.amount_nano)
                snapshots.keep_hold(hold_id, key, admitted.amount_nano)
                return Hold(id=hold_id, amount_nano=admitted.amount_nano, period=period,
                            funded_by=req.funded_by)
            # Something changed meanwhile (or the month did): decide again on what the
            # function found.
            period, snapshot, fresh = row[1], tuple(row[2:]), True
            snapshots.period = period
        raise StoreError(f"reserve for {req.user_id!r} kept changing under it")

    async def extend(self, hold_id: str, *, add_nano: int, used_nano: int) -> Extension:
        if add_nano <= 0:  # a checkpoint only: nothing to decide but whether it is revoked
            status = await self.pool.fetchval(
                "UPDATE holds h SET used_nano = GREATEST(h.used_nano, $2), "
                "updated_at = wattfare_now() WHERE h.id = $1 RETURNING "
                "(SELECT c.status FROM connections c "
                " WHERE c.app_id = h.app_id AND c.user_id = h.user_id)",
                hold_id, max(0, used_nano),
            )
            if status is None:
                return Extension(granted_nano=0, revoked=False)
            return rules.grant(0, status=status, cap=rules.Pool(0, 0, 0), account=None)
        mine = self._snapshots.hold(hold_id)
        return await self._in_turn(None if mine is None else mine[0],
                                   lambda: self._extend(hold_id, add_nano, used_nano))

    async def _extend(self, hold_id: str, add_nano: int, used_nano: int) -> Extension:
        snapshots = self._snapshots
        mine = snapshots.hold(hold_id)
        cached = None if mine is None else snapshots.get(mine[0])
        if mine is None or cached is None:
            seen = await self.pool.fetchrow(_HOLD_READ, hold_id)
            if seen is None or seen[2] is None:
                return Extension(granted_nano=0, revoked=False)
            snapshot: tuple[Any, ...] = tuple(seen[1:])
        else:
            snapshot = snapshots.for_extend(cached)
        for _ in range(MAX_ATTEMPTS):
            cap, status, settled, held, *account = snapshot
            if status is None:  # settled meanwhile
                return Extension(granted_nano=0, revoked=False)
            extension = rules.grant(add_nano, status=status,
                                    cap=rules.Pool(cap, settled, held), account=_account(*account))
            row = await self._batcher.run(EXTEND, (
                hold_id, max(0, used_nano), *snapshot, extension.granted_nano,
            ))
            assert row is not None
            if row[0]:
                if mine is not None:
                    snapshots.merge(mine[0], (cap, settled, held, *account), status=status)
                    snapshots.held(mine[0], extension.granted_nano)
                    snapshots.keep_hold(hold_id, mine[0], mine[1] + extension.granted_nano)
                return extension
            snapshot = tuple(row[1:])
        raise StoreError(f"extension of {hold_id!r} kept changing under it")

    def note_generation(self, hold_id: str, generation_id: str) -> asyncio.Future[None]:
        return self._batcher.submit(NOTE, (hold_id, generation_id))

    async def settle(self, settlement: Settlement) -> Charge | None:
        mine = self._snapshots.hold(settlement.hold_id)
        return await self._in_turn(None if mine is None else mine[0],
                                   lambda: self._settle(settlement))

    async def _settle(self, s: Settlement) -> Charge | None:
        snapshots = self._snapshots
        mine = snapshots.hold(s.hold_id)
        cached = None if mine is None else snapshots.get(mine[0])
        snapshot: tuple[Any, ...]
        if mine is None or cached is None:
            seen = await self.pool.fetchrow(_HOLD_READ, s.hold_id)
            if seen is None:
                snapshots.drop_hold(s.hold_id)
                return None  # settled already: settling is idempotent
            amount, cap, _, settled, held, *account = seen
            snapshot = (amount, cap, settled, held, *account)
        else:
            snapshot = snapshots.for_settle(cached, mine[1])
        for _ in range(MAX_ATTEMPTS):
            amount, cap, settled, held, *account = snapshot
            charge = rules.charge(s.cost_nano, hold_nano=amount,
                                  cap=rules.Pool(cap, settled, held), account=_account(*account))
            row = await self._batcher.run(SETTLE, (
                s.hold_id, s.request_id, s.model, s.prompt_tokens, s.completion_tokens,
                s.cost_nano, s.cost_source, s.status, s.http_status, s.error_code, s.ttfb_ms,
                s.duration_ms, s.generation_id, s.funded_by, *snapshot,
                charge.charged_nano, charge.operator_nano,
            ))
            assert row is not None
            if row[0]:
                if mine is not None:
                    snapshots.merge(mine[0], (cap, settled, held, *account))
                    snapshots.held(mine[0], -amount, settled=charge.charged_nano)
                snapshots.drop_hold(s.hold_id)
                return charge
            if row[1]:
                snapshots.drop_hold(s.hold_id)
                return None  # another node settled it first
            snapshot = tuple(row[2:])
        raise StoreError(f"settlement of {s.hold_id!r} kept changing under it")

    async def open_holds(self) -> int:
        return int(await self.pool.fetchval("SELECT count(*) FROM holds"))

    async def ledger(self, app_id: str, user_id: str, *, limit: int = 100) -> list[LedgerRow]:
        rows = await self.pool.fetch(
            f"SELECT {_LEDGER_COLUMNS} FROM ledger "  # noqa: S608 (constant columns)
            "WHERE app_id = $1 AND user_id = $2 ORDER BY id DESC LIMIT $3",
            app_id, user_id, limit,
        )
        return [LedgerRow(*r) for r in rows]
