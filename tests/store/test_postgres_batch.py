"""The PostgreSQL store's group commit: money steps of one node waiting at the same time
go to the database together, in one transaction, and each comes out as it would alone."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import asyncpg
import pytest

from gateway.store.base import CapReached, Charge, Hold
from gateway.store.postgres import PostgresStore

from .backends import PostgresBackend, assert_consistent
from .helpers import hold_request, settlement


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[PostgresBackend]:
    backend = PostgresBackend(pg_url)
    try:
        yield backend
    finally:
        await backend.drop()


async def _opened(pg: PostgresBackend, count: int) -> list[PostgresStore]:
    stores = []
    for _ in range(count):
        store = pg.new_store()
        assert isinstance(store, PostgresStore)
        await store.open()
        stores.append(store)
    return stores


def _batches(store: PostgresStore) -> int:
    return store._batcher.batches


async def _warm(store: PostgresStore, app_id: str, users: list[str]) -> None:
    """One step per user first, so that the steps after it skip their read and reach the
    batcher together."""
    for user in users:
        hold = await store.reserve(hold_request(app_id, user, want=1))
        await store.settle(settlement(hold.id, 0))


async def test_two_nodes_batching_on_one_cap_never_overshoot(pg: PostgresBackend) -> None:
    a, b = await _opened(pg, 2)
    try:
        app = (await a.create_app(name="a", mode="test", origins=())).app
        await _warm(a, app.id, ["u"])
        await _warm(b, app.id, ["u"])
        before = (_batches(a), _batches(b))

        async def one(store: PostgresStore, i: int) -> int:
            try:
                hold = await store.reserve(
                    hold_request(app.id, "u" if i % 3 else "v", want=70, minimum=70, cap=1000)
                )
            except CapReached:
                return 0
            await store.note_generation(hold.id, f"gen-{i}")
            charge = await store.settle(settlement(hold.id, 70 - i % 2))
            assert charge is not None
            return charge.charged_nano

        charged = await asyncio.gather(*(one(a if i % 2 else b, i) for i in range(120)))
        assert _batches(a) > before[0] and _batches(b) > before[1]
    finally:
        await a.close()
        await b.close()
    rows = await pg.rows(
        "SELECT user_id, settled_nano, held_nano FROM spend ORDER BY user_id"
    )
    assert [(user, held) for user, _, held in rows] == [("u", 0), ("v", 0)]
    assert all(settled <= 1000 for _, settled, _ in rows)
    # Each user's cap of 1000 is filled to the last hold of 70 that fits (14), whoever
    # served it: overshoot exactly 0.
    assert sum(charged) == sum(settled for _, settled, _ in rows)
    [(generations,)] = await pg.rows("SELECT count(generation_id) FROM ledger")
    [(settled_ops,)] = await pg.rows("SELECT count(*) FROM ledger WHERE cost_nano > 0")
    assert generations == settled_ops  # the warm-up holds (charged 0) noted none
    await assert_consistent(pg)


async def test_one_failing_step_leaves_the_others_in_its_batch(pg: PostgresBackend) -> None:
    [store] = await _opened(pg, 1)
    try:
        app = (await store.create_app(name="a", mode="test", origins=())).app
        users = [f"u{i}" for i in range(8)]
        await _warm(store, app.id, users)
        holds = [await store.reserve(hold_request(app.id, u, want=100)) for u in users]
        # Settled by another node already: this node, which still counts it open, finds
        # it gone inside the batch.
        other = pg.new_store()
        await other.open()
        try:
            assert await other.settle(settlement(holds[0].id, 50)) is not None
        finally:
            await other.close()
        before = _batches(store)
        # Beside it in the batch: a refusal (the minimum is more than is left), ordinary
        # settlements and holds.
        again, refused, *rest = await asyncio.gather(
            store.settle(settlement(holds[0].id, 50)),
            store.reserve(hold_request(app.id, users[1], want=950, minimum=950)),
            *(store.settle(settlement(h.id, 10)) for h in holds[2:]),
            *(store.reserve(hold_request(app.id, u, want=100)) for u in users[2:]),
            return_exceptions=True,
        )
        assert _batches(store) > before
        assert again is None
        assert isinstance(refused, CapReached)
        charges, new_holds = rest[:len(holds) - 2], rest[len(holds) - 2:]
        assert all(isinstance(c, Charge) and c.charged_nano == 10 for c in charges)
        await store.settle(settlement(holds[1].id, 0))
        for hold in new_holds:
            assert isinstance(hold, Hold)
            await store.settle(settlement(hold.id, 0))
    finally:
        await store.close()
    [(charged,)] = await pg.rows("SELECT sum(cost_nano) FROM ledger")
    assert charged == 50 + 6 * 10
    await assert_consistent(pg)


async def test_a_batch_that_fails_as_a_whole_goes_again_step_by_step(
    pg: PostgresBackend,
) -> None:
    [store] = await _opened(pg, 1)
    try:
        app = (await store.create_app(name="a", mode="test", origins=())).app
        users = [f"u{i}" for i in range(6)]
        await _warm(store, app.id, users)
        before = _batches(store)
        # Two requests with one id: their holds collide in the database, which fails
        # their whole batch; the steps then go one by one and only the duplicate fails.
        twin = hold_request(app.id, users[0], want=10)
        requests = [twin, dataclasses.replace(twin, user_id=users[1]),
                    *(hold_request(app.id, u, want=10) for u in users[2:])]
        results = await asyncio.gather(*(store.reserve(r) for r in requests),
                                       return_exceptions=True)
        assert _batches(store) == before  # nothing of that batch was committed
        failed = [r for r in results if isinstance(r, BaseException)]
        assert len(failed) == 1 and isinstance(failed[0], asyncpg.UniqueViolationError)
        held = [r for r in results if not isinstance(r, BaseException)]
        assert len(held) == 5
        for hold in held:
            await store.settle(settlement(hold.id, 3))
    finally:
        await store.close()
    [(charged, count)] = await pg.rows("SELECT sum(cost_nano), count(*) FROM ledger")
    assert (charged, count) == (5 * 3, 5 + len(users))
    await assert_consistent(pg)


async def test_a_note_nobody_waits_for_survives_its_batch_failing(pg: PostgresBackend) -> None:
    [store] = await _opened(pg, 1)
    try:
        app = (await store.create_app(name="a", mode="test", origins=())).app
        users = [f"u{i}" for i in range(4)]
        await _warm(store, app.id, users)
        holds = [await store.reserve(hold_request(app.id, u, want=10)) for u in users[2:]]
        before = _batches(store)
        # The generation ids are queued the way a stream queues them (no task, nobody
        # waiting), in the same batch as two reserves whose holds collide: the batch
        # fails as a whole and each write goes again alone, the notes too.
        twin = hold_request(app.id, users[0], want=10)

        async def note(i: int, hold: Hold) -> None:
            noted = store.note_generation(hold.id, f"gen-{i}")  # in the reserves' turn
            await noted

        results = await asyncio.gather(
            store.reserve(twin), store.reserve(dataclasses.replace(twin, user_id=users[1])),
            *(note(i, h) for i, h in enumerate(holds)), return_exceptions=True,
        )
        assert _batches(store) == before
        assert sum(isinstance(r, asyncpg.UniqueViolationError) for r in results) == 1
        assert results[2:] == [None, None]
        rows = await pg.rows("SELECT id, generation_id FROM holds WHERE generation_id IS NOT NULL")
        assert sorted(rows) == sorted((h.id, f"gen-{i}") for i, h in enumerate(holds))
        for result in results[:2]:
            if isinstance(result, Hold):
                await store.settle(settlement(result.id, 0))
        for hold in holds:
            await store.settle(settlement(hold.id, 1))
    finally:
        await store.close()
    await assert_consistent(pg)


async def test_one_step_alone_is_the_single_step_path(pg: PostgresBackend) -> None:
    [store] = await _opened(pg, 1)
    try:
        app = (await store.create_app(name="a", mode="test", origins=())).app
        for _ in range(5):
            hold = await store.reserve(hold_request(app.id, "u", want=10))
            await store.note_generation(hold.id, "gen")
            assert await store.settle(settlement(hold.id, 2)) is not None
            assert await store.settle(settlement(hold.id, 2)) is None  # idempotent
        assert _batches(store) == 0
    finally:
        await store.close()
    await assert_consistent(pg)
