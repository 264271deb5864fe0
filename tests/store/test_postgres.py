"""What only the PostgreSQL store does: migrations under a lock, the database's clock
(a node's own may be wrong), leases, and change notices that survive a lost listener."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator

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


# A node's clock 40 days off: another month, and any lease by it lapsed (or not) for weeks.
SKEWS = [pytest.param(40 * 86400, id="ahead"), pytest.param(-40 * 86400, id="behind")]


@contextlib.contextmanager
def clock_off_by(monkeypatch: pytest.MonkeyPatch, skew_s: float) -> Iterator[None]:
    """This process's wall clock (``time.time``) off by ``skew_s`` meanwhile: what the
    node whose steps run inside sees."""
    real = time.time
    with monkeypatch.context() as patched:
        patched.setattr(time, "time", lambda: real() + skew_s)
        yield


async def _database_now(pg: PostgresBackend) -> tuple[str, int]:
    [(month, now)] = await pg.rows(
        "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM'), "
        "floor(extract(epoch FROM now()))::bigint"
    )
    return month, now


@pytest.mark.parametrize("skew_s", SKEWS)
async def test_a_node_with_a_skewed_clock_charges_the_databases_month(
    pg: PostgresBackend, monkeypatch: pytest.MonkeyPatch, skew_s: int
) -> None:
    skewed, other = pg.new_store(), pg.new_store()
    await other.open()
    try:
        with clock_off_by(monkeypatch, skew_s):
            await skewed.open()
            app = (await skewed.create_app(name="a", mode="test", origins=())).app
            hold = await skewed.reserve(hold_request(app.id, "u", want=10))
            await skewed.settle(settlement(hold.id, 7))
        month, now = await _database_now(pg)
        assert hold.period == month
        [(period, created_at)] = await pg.rows("SELECT period, created_at FROM ledger")
        assert period == month and abs(created_at - now) < 60
        assert await pg.rows("SELECT period, settled_nano FROM spend") == [(month, 7)]
        # Another node, by the right clock, sees it in this month's total.
        state = await other.connection(app.id, "u")
        assert state is not None and (state.period, state.settled_nano) == (month, 7)
    finally:
        await skewed.close()
        await other.close()
        await pg.drop()


@pytest.mark.parametrize("skew_s", SKEWS)
async def test_a_node_with_a_skewed_clock_keeps_leases_by_the_databases_clock(
    pg: PostgresBackend, monkeypatch: pytest.MonkeyPatch, skew_s: int
) -> None:
    skewed, other = pg.new_store(), pg.new_store()
    await other.open()
    try:
        assert isinstance(skewed, PostgresStore)
        app = (await other.create_app(name="a", mode="test", origins=())).app
        with clock_off_by(monkeypatch, skew_s):
            await skewed.open()
            await skewed.heartbeat()
            mine = await skewed.reserve(hold_request(app.id, "u", want=10))
        theirs = await other.reserve(hold_request(app.id, "v", want=10))
        _, now = await _database_now(pg)
        [(beat,)] = await pg.rows(
            f"SELECT heartbeat_at FROM instances WHERE id = '{skewed.instance_id}'"  # noqa: S608 (test-made id)
        )
        assert abs(beat - now) < 60
        # Each takes the other for alive: neither settles the other's hold.
        assert await other.reconcile_stale_holds() == 0
        with clock_off_by(monkeypatch, skew_s):
            assert await skewed.reconcile_stale_holds() == 0
        assert await pg.rows("SELECT count(*) FROM holds") == [(2,)]
        # The skewed node dies (its lease lapses by the database's clock): the other
        # settles its hold, to this month.
        await pg.kill(skewed)
        assert await other.reconcile_stale_holds() == 1
        month, _ = await _database_now(pg)
        assert await pg.rows("SELECT user_id, period, status FROM ledger") == [
            ("u", month, "reconciled")
        ]
        assert mine.period == theirs.period == month
        await other.settle(settlement(theirs.id, 1))
    finally:
        with clock_off_by(monkeypatch, skew_s):
            await skewed.close()
        await other.close()
        await pg.drop()


@pytest.mark.parametrize("skew_s", SKEWS)
async def test_a_node_with_a_skewed_clock_reports_each_change_once(
    pg: PostgresBackend, monkeypatch: pytest.MonkeyPatch, skew_s: int
) -> None:
    skewed, other = pg.new_store(), pg.new_store()
    await other.open()
    try:
        with clock_off_by(monkeypatch, skew_s):
            await skewed.open()
            assert await skewed.changes() == []
        app = (await other.create_app(name="a", mode="test", origins=())).app
        hold = await other.reserve(hold_request(app.id, "u", want=1))
        await other.revoke(app.id, "u")
        with clock_off_by(monkeypatch, skew_s):
            assert [c.kind for c in await skewed.changes()] == ["revoked"]
            # Read again while it is recent, it is not news (a second report would cut
            # the streams of a connection approved again meanwhile).
            assert await skewed.changes() == []
        await other.settle(settlement(hold.id, 1))
    finally:
        with clock_off_by(monkeypatch, skew_s):
            await skewed.close()
        await other.close()
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
