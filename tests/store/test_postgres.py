"""What only the PostgreSQL store does: migrations under a lock, the database's clock,
leases, and change notices that survive a lost listener."""

from __future__ import annotations

import asyncio

import pytest

from gateway.store.postgres import PostgresStore
from gateway.store.postgres_schema import MIGRATIONS

from .backends import PostgresBackend
from .helpers import hold_request, settlement


@pytest.fixture
async def pg(pg_url: str) -> PostgresBackend:
    return PostgresBackend(pg_url)


async def test_nodes_starting_together_migrate_once(pg: PostgresBackend) -> None:
    stores = [pg.new_store() for _ in range(3)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        assert await pg.rows("SELECT version FROM wattfare_schema") == [(len(MIGRATIONS),)]
        app = (await stores[0].create_app(name="a", mode="test", origins=())).app
        assert [a.id for a in await stores[2].list_apps()] == [app.id]
    finally:
        for s in stores:
            await s.close()
        await pg.drop()


async def test_a_newer_schema_is_refused(pg: PostgresBackend) -> None:
    first = pg.new_store()
    await first.open()
    await first.close()
    await pg.execute("UPDATE wattfare_schema SET version = 99")
    again = pg.new_store()
    try:
        with pytest.raises(RuntimeError, match="newer than this gateway"):
            await again.open()
    finally:
        await pg.drop()


async def test_the_month_is_the_databases(pg: PostgresBackend) -> None:
    store = pg.new_store()
    await store.open()
    try:
        app = (await store.create_app(name="a", mode="test", origins=())).app
        hold = await store.reserve(hold_request(app.id, "u", want=1))
        [(month,)] = await pg.rows("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM')")
        assert hold.period == month
        await store.settle(settlement(hold.id, 1))
    finally:
        await store.close()
        await pg.drop()


async def test_a_node_whose_lease_lapsed_registers_again(pg: PostgresBackend) -> None:
    store = pg.new_store()
    await store.open()
    try:
        assert isinstance(store, PostgresStore)
        await pg.execute("DELETE FROM instances")  # the others presumed it dead
        await store.heartbeat()
        assert await pg.rows("SELECT id FROM instances") == [(store.instance_id,)]
    finally:
        await store.close()
        await pg.drop()


async def test_changes_still_arrive_when_the_listener_is_lost(pg: PostgresBackend) -> None:
    a, b = pg.new_store(), pg.new_store()
    await a.open()
    await b.open()
    try:
        assert isinstance(b, PostgresStore)
        await b.changes()
        # The server drops b's listening connection (a restart, a network cut).
        await pg.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
        )
        app = (await a.create_app(name="a", mode="test", origins=())).app
        hold = await a.reserve(hold_request(app.id, "u", want=1))
        await a.revoke(app.id, "u")
        await b.wait_for_changes(at_most_s=0.5)
        assert [c.kind for c in await b.changes()] == ["revoked"]
        await a.settle(settlement(hold.id, 1))
        # The listener is back for the next change.
        waiting = asyncio.create_task(b.wait_for_changes(at_most_s=5))
        await asyncio.sleep(0.2)
        await a.roll_key(app.id)
        await asyncio.wait_for(waiting, 2)
        assert [c.kind for c in await b.changes()] == ["key_rolled"]
    finally:
        await a.close()
        await b.close()
        await pg.drop()


async def test_a_closed_store_refuses_work(pg: PostgresBackend) -> None:
    store = pg.new_store()
    with pytest.raises(RuntimeError, match="not open"):
        await store.ping()
    await store.open()
    await store.ping()
    await store.close()
    with pytest.raises(RuntimeError, match="not open"):
        await store.ping()
    await pg.drop()
