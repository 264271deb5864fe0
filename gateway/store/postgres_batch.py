"""Group commit for the PostgreSQL store's money steps.

A money step decides what to write (:mod:`gateway.store.rules`) and hands the write to
:class:`Batcher`. With nothing else in flight, the write goes alone, as one statement on
a pooled connection: the single-step path, no extra cost at low load. Writes that arrive
while one is in flight wait, and go together as soon as a lane is free: one call of
``wattfare_batch()`` (:mod:`gateway.store.postgres_schema`), one round trip, one commit,
on a connection the lane keeps for as long as writes keep coming.

Each write's result row is what its single-step function returns, so the step goes on
exactly as on the single-step path (success; or "changed meanwhile" with the values
found, to decide again). A batch that fails as a whole committed nothing: each of its
writes is then run again alone, so one write's error is that write's alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Hashable
from typing import Any

import asyncpg
import orjson

log = logging.getLogger("wattfare.store")

# Writes in flight at once per node (each lane a connection of the pool while busy), and
# the most one batch carries (locks are held for the batch's whole transaction).
LANES = 1
MAX_BATCH = 128

RESERVE = "r"
SETTLE = "s"
EXTEND = "e"
NOTE = "n"


def _call(function: str, arity: int) -> str:
    args = ", ".join(f"${i}" for i in range(1, arity + 1))
    return f"SELECT * FROM {function}({args})"  # noqa: S608 (constant names)


# The database's half, migration 5 of :mod:`gateway.store.postgres_schema` (a released
# migration is never edited: a change is a new one). wattfare_batch() runs the writes in
# one transaction, each by its step's own function, and returns each one's result row as
# JSON, in order. Writes are JSON arrays: ["r", <wattfare_reserve's 21 arguments>],
# ["s", <wattfare_settle's 23>], ["e", <wattfare_extend's 10>], ["n", hold, generation].
# Before any runs, the rows they will lock are locked in one order whatever the node:
# holds by id, then connections, month spend and account spend by key; so batches of
# several nodes queue behind each other instead of deadlocking (what is left, such as a
# row created meanwhile, fails a batch as a deadlock would: it is retried). Integers
# arrive as JSON numbers and are cast to the functions' types explicitly.
BATCH_FUNCTION = """
CREATE FUNCTION wattfare_batch(ops jsonb) RETURNS json LANGUAGE plpgsql
-- A batch's keys are few and its tables may be large: look each key up by its index.
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off AS $$
DECLARE
    op jsonb;
    res json;
    outs json[] := '{}';
    v_period TEXT := wattfare_period();
    h_ids TEXT[]; r_app TEXT[]; r_user TEXT[];
    k_app TEXT[]; k_user TEXT[]; k_period TEXT[]; k_account TEXT[]; k_reserve BOOLEAN[];
BEGIN
    SELECT array_agg(o ->> 1) FILTER (WHERE o ->> 0 IN ('s', 'e', 'n')),
           array_agg(o ->> 1) FILTER (WHERE o ->> 0 = 'r'),
           array_agg(o ->> 2) FILTER (WHERE o ->> 0 = 'r')
        INTO h_ids, r_app, r_user FROM jsonb_array_elements(ops) o;
    PERFORM 1 FROM holds h WHERE h.id = ANY(h_ids) ORDER BY h.id FOR UPDATE;
    SELECT array_agg(k.app_id), array_agg(k.user_id), array_agg(k.period),
           array_agg(k.account_id), array_agg(k.reserve)
        INTO k_app, k_user, k_period, k_account, k_reserve
        FROM (SELECT h.app_id, h.user_id, h.period, h.account_id, false AS reserve
              FROM holds h WHERE h.id = ANY(h_ids)
              UNION ALL
              SELECT c.app_id, c.user_id, v_period, c.account_id, true
              FROM unnest(r_app, r_user) AS r(app_id, user_id)
              JOIN connections c ON c.app_id = r.app_id AND c.user_id = r.user_id) k;
    IF k_app IS NOT NULL THEN
        -- A connection's first hold of a month creates its spend rows: here, in order.
        INSERT INTO spend (app_id, user_id, period)
            SELECT DISTINCT k.app_id, k.user_id, k.period
            FROM unnest(k_app, k_user, k_period, k_reserve) AS k(app_id, user_id, period, r)
            WHERE k.r AND NOT EXISTS (SELECT 1 FROM spend s WHERE s.app_id = k.app_id
                                      AND s.user_id = k.user_id AND s.period = k.period)
            ORDER BY 1, 2, 3 ON CONFLICT DO NOTHING;
        PERFORM 1 FROM unnest(k_app, k_user, k_period) AS k(app_id, user_id, period)
            JOIN spend s
            ON s.app_id = k.app_id AND s.user_id = k.user_id AND s.period = k.period
            ORDER BY s.app_id, s.user_id, s.period FOR UPDATE OF s;
        IF array_length(array_remove(k_account, NULL), 1) > 0 THEN
            INSERT INTO account_spend (account_id, period)
                SELECT DISTINCT k.account_id, k.period
                FROM unnest(k_account, k_period, k_reserve) AS k(account_id, period, r)
                WHERE k.r AND k.account_id IS NOT NULL AND NOT EXISTS (
                    SELECT 1 FROM account_spend s
                    WHERE s.account_id = k.account_id AND s.period = k.period)
                ORDER BY 1, 2 ON CONFLICT DO NOTHING;
            PERFORM 1 FROM unnest(k_account, k_period) AS k(account_id, period)
                JOIN account_spend s ON s.account_id = k.account_id AND s.period = k.period
                ORDER BY s.account_id, s.period FOR UPDATE OF s;
        END IF;
    END IF;
    FOR op IN SELECT value FROM jsonb_array_elements(ops) LOOP
        CASE op ->> 0
        WHEN 'r' THEN
            res := to_json(wattfare_reserve(
                op ->> 1, op ->> 2, op ->> 3, op ->> 4, op ->> 5, op ->> 6, op ->> 7, op ->> 8,
                (op ->> 9)::integer, op ->> 10, (op ->> 11)::bigint, op ->> 12, op ->> 13,
                (op ->> 14)::bigint, (op ->> 15)::bigint, (op ->> 16)::bigint,
                (op ->> 17)::bigint, (op ->> 18)::bigint, (op ->> 19)::bigint,
                (op ->> 20)::bigint, op ->> 21));
        WHEN 's' THEN
            res := to_json(wattfare_settle(
                op ->> 1, op ->> 2, op ->> 3, (op ->> 4)::bigint, (op ->> 5)::bigint,
                (op ->> 6)::bigint, op ->> 7, op ->> 8, (op ->> 9)::integer, op ->> 10,
                (op ->> 11)::double precision, (op ->> 12)::double precision, op ->> 13,
                op ->> 14, (op ->> 15)::bigint, (op ->> 16)::bigint, (op ->> 17)::bigint,
                (op ->> 18)::bigint, (op ->> 19)::bigint, (op ->> 20)::bigint,
                (op ->> 21)::bigint, (op ->> 22)::bigint, (op ->> 23)::bigint));
        WHEN 'e' THEN
            res := to_json(wattfare_extend(
                op ->> 1, (op ->> 2)::bigint, (op ->> 3)::bigint, op ->> 4,
                (op ->> 5)::bigint, (op ->> 6)::bigint, (op ->> 7)::bigint,
                (op ->> 8)::bigint, (op ->> 9)::bigint, (op ->> 10)::bigint));
        WHEN 'n' THEN
            UPDATE holds SET generation_id = op ->> 2 WHERE id = op ->> 1;
            res := 'null'::json;
        END CASE;
        outs := array_append(outs, res);
    END LOOP;
    RETURN array_to_json(outs);
END $$;
"""

# Each kind's single-step statement.
_SINGLE = {
    RESERVE: _call("wattfare_reserve", 21),
    SETTLE: _call("wattfare_settle", 23),
    EXTEND: _call("wattfare_extend", 10),
    NOTE: "UPDATE holds SET generation_id = $2 WHERE id = $1",
}
_BATCH = "SELECT wattfare_batch($1::jsonb)::text"

Row = Any  # an asyncpg Record, or a tuple of a batch's JSON row: both index alike
Op = tuple[str, tuple[Any, ...]]


class Turns:
    """One step at a time per key (a connection, or the account its spend counts
    against) on this node. Steps on one key that went in one batch would all have decided
    on the same values, and all but the first would find them changed; taking turns, each
    decides on what the one before it wrote, and steps on other keys still share the
    batch."""

    def __init__(self) -> None:
        self._waiting: dict[Hashable, deque[asyncio.Future[None]]] = {}

    async def take(self, key: Hashable) -> None:
        waiting = self._waiting.get(key)
        if waiting is None:
            self._waiting[key] = deque()
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiting.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.give(key)  # handed over just as the step was cancelled: pass it on
            raise

    def give(self, key: Hashable) -> None:
        waiting = self._waiting[key]
        while waiting:
            future = waiting.popleft()
            if not future.done():
                future.set_result(None)
                return
        del self._waiting[key]


class _Alone(Exception):
    """The batch failed as a whole: run this write alone."""


class Batcher:
    """The node's money writes, sent by ``lanes`` long-lived tasks, each with a pooled
    connection of its own: a lane takes whatever writes are waiting when it is free (woken
    through the event loop, so writes handed over in one turn of it go together), sends
    them (one alone as its single-step statement, several as one batch) and goes back for
    more."""

    def __init__(self, pool: asyncpg.Pool, *, lanes: int = LANES,
                 max_batch: int = MAX_BATCH) -> None:
        self._pool = pool
        self._max_batch = max_batch
        self._queue: deque[tuple[Op, asyncio.Future[Row]]] = deque()
        self._idle: list[asyncio.Future[None]] = []  # lanes waiting for writes
        self._closing = False
        self._alone_tasks: set[asyncio.Future[Row]] = set()
        self._lanes = [asyncio.ensure_future(self._lane()) for _ in range(lanes)]
        self.batches = 0  # batches of more than one write sent (for tests and tuning)

    async def run(self, kind: str, args: tuple[Any, ...]) -> Row:
        """The write's result row, as its single-step statement returns it (None for a
        note)."""
        try:
            return await self._queued(kind, args)
        except _Alone:
            return await self._alone(self._pool, kind, args)

    def submit(self, kind: str, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        """:meth:`run` without waiting and without a task: the write is queued, and the
        future is done with its row once it is committed (a write its batch's failure
        sends alone gets a task then, a rare case)."""
        queued = self._queued(kind, args)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def landed(future: asyncio.Future[Row]) -> None:
            if done.done():
                return
            if future.cancelled():
                done.cancel()
                return
            error = future.exception()
            if isinstance(error, _Alone):
                alone = asyncio.ensure_future(self._alone(self._pool, kind, args))
                self._alone_tasks.add(alone)
                alone.add_done_callback(lambda task: self._alone_done(task, done))
            elif error is not None:
                done.set_exception(error)
            else:
                done.set_result(future.result())

        queued.add_done_callback(landed)
        return done

    def _alone_done(self, task: asyncio.Future[Row], done: asyncio.Future[Any]) -> None:
        self._alone_tasks.discard(task)
        if done.done():
            return
        if task.cancelled():
            done.cancel()
        elif task.exception() is not None:
            done.set_exception(task.exception())  # type: ignore[arg-type]
        else:
            done.set_result(task.result())

    def _queued(self, kind: str, args: tuple[Any, ...]) -> asyncio.Future[Row]:
        if self._closing:
            raise RuntimeError("store is not open")
        future: asyncio.Future[Row] = asyncio.get_running_loop().create_future()
        self._queue.append(((kind, args), future))
        if self._idle:
            wake = self._idle.pop()
            if not wake.done():
                wake.set_result(None)
        return future

    async def close(self) -> None:
        """Send the writes already handed over, then give the lanes' connections back."""
        self._closing = True
        for wake in self._idle:
            if not wake.done():
                wake.set_result(None)
        self._idle.clear()
        await asyncio.gather(*self._lanes, return_exceptions=True)

    @staticmethod
    async def _alone(con: Any, kind: str, args: tuple[Any, ...]) -> Row:
        sql = _SINGLE[kind]
        if kind == NOTE:
            await con.execute(sql, *args)
            return None
        return await con.fetchrow(sql, *args)

    def _take(self) -> list[tuple[Op, asyncio.Future[Row]]]:
        taken: list[tuple[Op, asyncio.Future[Row]]] = []
        queue = self._queue
        while queue and len(taken) < self._max_batch:
            item = queue.popleft()
            if not item[1].done():  # its step was cancelled meanwhile: not sent
                taken.append(item)
        return taken

    async def _lane(self) -> None:
        loop = asyncio.get_running_loop()
        con: Any = None
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    wake: asyncio.Future[None] = loop.create_future()
                    self._idle.append(wake)
                    await wake
                    continue
                taken = self._take()
                if not taken:
                    continue
                try:
                    if con is None:
                        con = await self._pool.acquire()
                    await self._send(con, taken)
                except Exception as exc:  # the connection failed: these go alone
                    log.warning("money writes' connection failed: %r", exc)
                    for _, future in taken:
                        if not future.done():
                            future.set_exception(_Alone())
                    if con is not None:
                        con, lost = None, con
                        await self._pool.release(lost)
        finally:
            if con is not None:
                await self._pool.release(con)

    async def _send(self, con: Any, taken: list[tuple[Op, asyncio.Future[Row]]]) -> None:
        if len(taken) == 1:
            (kind, args), future = taken[0]
            try:
                row = await self._alone(con, kind, args)
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
                if con.is_closed():
                    raise
                return
            if not future.done():
                future.set_result(row)
            return
        ops = [[kind, *args] for (kind, args), _ in taken]
        try:
            text = await con.fetchval(_BATCH, orjson.dumps(ops).decode())
            rows = orjson.loads(text)
            if len(rows) != len(taken):
                raise RuntimeError("wattfare_batch() answered for a different batch")
        except Exception as exc:
            # Nothing of the batch was committed: each write goes again, alone.
            for _, future in taken:
                if not future.done():
                    future.set_exception(_Alone())
            if con.is_closed():
                raise
            log.debug("money writes' batch failed, each goes again alone: %r", exc)
            return
        self.batches += 1
        for (_, future), row in zip(taken, rows, strict=True):
            if not future.done():
                future.set_result(None if row is None else tuple(row.values()))
