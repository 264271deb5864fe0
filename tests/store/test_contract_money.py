"""Every backend's money: holds, extensions, settlement, refusals, months, keys."""

from __future__ import annotations

import asyncio

import pytest

from gateway.keys import secret_key_hash
from gateway.store.base import (
    CapReached,
    NoConnection,
    Revoked,
    StaleCredential,
    Store,
    UnknownApp,
)

from .backends import Backend, assert_consistent
from .helpers import hold_request, settlement, this_month


async def test_create_list_roll(store: Store) -> None:
    created = await store.create_app(name="shop", mode="test", origins=("http://a.test",))
    assert created.app.secret_hash == secret_key_hash(created.keys.secret_key)
    assert [a.name for a in await store.list_apps()] == ["shop"]
    with pytest.raises(ValueError, match="already exists"):
        await store.create_app(name="shop", mode="live", origins=())
    rolled = await store.roll_key("shop")
    assert rolled.app.key_version == 2
    assert rolled.keys.secret_key != created.keys.secret_key
    assert await store.app_by_secret_hash(created.app.secret_hash) is None
    assert await store.app_by_publishable_key(created.app.publishable_key) is None
    found = await store.app_by_publishable_key(rolled.app.publishable_key)
    assert found is not None and found.key_version == 2
    assert found.origins == ("http://a.test",)
    with pytest.raises(UnknownApp):
        await store.roll_key("nope")


async def test_reserve_settle_and_release(store: Store, backend: Backend) -> None:
    app = (await store.create_app(name="a", mode="test", origins=())).app
    hold = await store.reserve(hold_request(app.id, "u", want=300, cap=1000))
    assert hold.amount_nano == 300 and hold.period == this_month()
    assert await store.open_holds() == 1
    conn = await store.connection(app.id, "u")
    assert conn is not None and conn.held_nano == 300 and conn.remaining_nano == 700
    assert conn.period == this_month()
    charge = await store.settle(settlement(hold.id, 120))
    assert charge is not None and (charge.charged_nano, charge.operator_nano) == (120, 0)
    assert await store.settle(settlement(hold.id, 120)) is None  # idempotent
    conn = await store.connection(app.id, "u", this_month())
    assert conn is not None and (conn.settled_nano, conn.held_nano) == (120, 0)
    assert await store.open_holds() == 0
    await assert_consistent(backend)


async def test_hold_never_exceeds_what_remains(store: Store, backend: Backend) -> None:
    app = (await store.create_app(name="a", mode="test", origins=())).app
    first = await store.reserve(hold_request(app.id, "u", want=900, cap=1000))
    second = await store.reserve(hold_request(app.id, "u", want=900, cap=1000))
    assert second.amount_nano == 100
    with pytest.raises(CapReached):
        await store.reserve(hold_request(app.id, "u", want=900, cap=1000))
    # More reported than was held: the user pays up to the cap, the operator the rest.
    charge = await store.settle(settlement(first.id, 2000))
    assert charge is not None
    assert charge.charged_nano == 900 and charge.operator_nano == 1100
    await store.settle(settlement(second.id, 50))
    rows = await store.ledger(app.id, "u")
    assert sorted((r.cost_nano, r.upstream_cost_nano, r.operator_nano) for r in rows) == [
        (50, 50, 0), (900, 2000, 1100)
    ]
    await assert_consistent(backend)


async def test_minimum_refuses_up_front(store: Store, backend: Backend) -> None:
    app = (await store.create_app(name="a", mode="test", origins=())).app
    hold = await store.reserve(hold_request(app.id, "u", want=950, cap=1000))
    with pytest.raises(CapReached) as info:
        await store.reserve(hold_request(app.id, "u", want=100, minimum=60, cap=1000))
    assert info.value.remaining_nano == 50 and not info.value.budget
    await store.settle(settlement(hold.id, 0))
    await assert_consistent(backend)


async def test_concurrent_reserves_never_overcommit(store: Store, backend: Backend) -> None:
    app = (await store.create_app(name="a", mode="test", origins=())).app

    async def one() -> int:
        try:
            hold = await store.reserve(hold_request(app.id, "u", want=70, minimum=70, cap=1000))
        except CapReached:
            return 0
        await asyncio.sleep(0)
        charge = await store.settle(settlement(hold.id, 70))
        assert charge is not None
        return charge.charged_nano

    charged = await asyncio.gather(*(one() for _ in range(100)))
    assert sum(charged) == 980  # 14 of them fit
    await assert_consistent(backend)


async def test_two_instances_share_one_database(backend: Backend) -> None:
    a, b = backend.new_store(), backend.new_store()
    await a.open()
    await b.open()
    try:
        app = (await a.create_app(name="a", mode="test", origins=())).app

        async def one(s: Store) -> int:
            try:
                hold = await s.reserve(hold_request(app.id, "u", want=100, minimum=100))
            except CapReached:
                return 0
            charge = await s.settle(settlement(hold.id, 100))
            return 0 if charge is None else charge.charged_nano

        results = await asyncio.gather(*(one(a if i % 2 else b) for i in range(40)))
        assert sum(results) == 1000
    finally:
        await a.close()
        await b.close()
    await assert_consistent(backend)


async def test_extend_grants_up_to_the_cap_and_sees_revocation(
    store: Store, backend: Backend
) -> None:
    app = (await store.create_app(name="a", mode="test", origins=())).app
    hold = await store.reserve(hold_request(app.id, "u", want=600, cap=1000))
    ext = await store.extend(hold.id, add_nano=300, used_nano=500)
    assert (ext.granted_nano, ext.revoked) == (300, False)
    ext = await store.extend(hold.id, add_nano=300, used_nano=800)
    assert ext.granted_nano == 100
    assert await store.revoke(app.id, "u")
    ext = await store.extend(hold.id, add_nano=300, used_nano=900)
    assert (ext.granted_nano, ext.revoked) == (0, True)
    await store.settle(settlement(hold.id, 900, status="cut_revoked"))
    with pytest.raises(Revoked):
        await store.reserve(hold_request(app.id, "u", want=1))
    assert await store.revoke(app.id, "u")  # already revoked: still there
    assert not await store.revoke(app.id, "nobody")
    await assert_consistent(backend)


async def test_extending_a_settled_hold_grants_nothing(store: Store) -> None:
    app = (await store.create_app(name="a", mode="test", origins=())).app
    hold = await store.reserve(hold_request(app.id, "u", want=10))
    await store.settle(settlement(hold.id, 10))
    ext = await store.extend(hold.id, add_nano=100, used_nano=50)
    assert (ext.granted_nano, ext.revoked) == (0, False)


async def test_live_mode_needs_a_connection(store: Store) -> None:
    app = (await store.create_app(name="a", mode="live", origins=())).app
    with pytest.raises(NoConnection):
        await store.reserve(hold_request(app.id, "u", want=1, auto=False))


async def test_a_rolled_key_is_refused_inside_the_hold_transaction(store: Store) -> None:
    app = (await store.create_app(name="a", mode="test", origins=())).app
    await store.roll_key(app.id)
    with pytest.raises(StaleCredential):
        await store.reserve(hold_request(app.id, "u", want=1, key_version=1))
    with pytest.raises(StaleCredential):
        await store.reserve(hold_request("app_gone", "u", want=1))
    hold = await store.reserve(hold_request(app.id, "u", want=1, key_version=2))
    await store.settle(settlement(hold.id, 1))


async def test_test_mode_reapproves_the_requested_cap(store: Store) -> None:
    app = (await store.create_app(name="a", mode="test", origins=())).app
    hold = await store.reserve(hold_request(app.id, "u", want=1, cap=None))
    conn = await store.connection(app.id, "u")
    assert conn is not None and conn.cap_nano == 500  # the configured default
    await store.settle(settlement(hold.id, 1))
    hold = await store.reserve(hold_request(app.id, "u", want=1, cap=2000))
    conn = await store.connection(app.id, "u")
    assert conn is not None and conn.cap_nano == 2000
    await store.settle(settlement(hold.id, 1))


async def test_another_month_is_empty(store: Store) -> None:
    app = (await store.create_app(name="a", mode="test", origins=())).app
    hold = await store.reserve(hold_request(app.id, "u", want=100))
    await store.settle(settlement(hold.id, 100))
    now = await store.connection(app.id, "u")
    later = await store.connection(app.id, "u", "2999-01")
    assert now is not None and now.settled_nano == 100
    assert later is not None and later.settled_nano == 0 and later.remaining_nano == 1000
    rows = await store.ledger(app.id, "u")
    assert [r.period for r in rows] == [this_month()]


async def test_free_models_run_with_nothing_left(store: Store, backend: Backend) -> None:
    app = (await store.create_app(name="a", mode="test", origins=())).app
    spent = await store.reserve(hold_request(app.id, "u", want=1000, cap=1000))
    await store.settle(settlement(spent.id, 1000))
    with pytest.raises(CapReached):
        await store.reserve(hold_request(app.id, "u", want=10, minimum=1))
    free = await store.reserve(hold_request(app.id, "u", want=0, minimum=0))
    assert free.amount_nano == 0
    await store.settle(settlement(free.id, 0))
    await assert_consistent(backend)


async def test_a_refused_first_use_leaves_no_connection(store: Store) -> None:
    app = (await store.create_app(name="a", mode="test", origins=())).app
    with pytest.raises(CapReached):
        await store.reserve(hold_request(app.id, "u", want=100, minimum=60, cap=50))
    assert await store.connection(app.id, "u") is None


async def test_refusals_among_concurrent_holds_leave_the_others(
    store: Store, backend: Backend
) -> None:
    app = (await store.create_app(name="a", mode="test", origins=())).app
    results = await asyncio.gather(
        *(store.reserve(hold_request(app.id, f"u{i % 3}", want=400, minimum=400, cap=1000))
          for i in range(12)),
        return_exceptions=True,
    )
    holds = [r for r in results if not isinstance(r, BaseException)]
    assert len(holds) == 6  # two of 400 fit in each user's cap of 1000
    assert all(isinstance(r, CapReached) for r in results if isinstance(r, BaseException))
    for hold in holds:
        assert not isinstance(hold, BaseException)
        await store.settle(settlement(hold.id, 10))
    await assert_consistent(backend)


async def test_many_requests_all_commit(store: Store, backend: Backend) -> None:
    app = (await store.create_app(name="a", mode="test", origins=())).app

    async def one(i: int) -> int:
        hold = await store.reserve(hold_request(app.id, f"u{i % 7}", want=10, cap=10**9))
        charge = await store.settle(settlement(hold.id, 3))
        assert charge is not None
        return charge.charged_nano

    assert sum(await asyncio.gather(*(one(i) for i in range(300)))) == 900
    await assert_consistent(backend)


async def test_the_ledger_keeps_who_paid_and_the_generation(store: Store) -> None:
    app = (await store.create_app(name="a", mode="test", origins=())).app
    hold = await store.reserve(hold_request(app.id, "u", want=100))
    await store.note_generation(hold.id, "gen-1")
    await store.settle(settlement(hold.id, 40, funded_by="account:acct_x"))
    other = await store.reserve(hold_request(app.id, "u", want=100))
    await store.settle(settlement(other.id, 5, generation_id="gen-2", source="tokens"))
    rows = await store.ledger(app.id, "u")
    assert [(r.generation_id, r.funded_by, r.cost_source) for r in rows] == [
        ("gen-2", "operator", "tokens"), ("gen-1", "account:acct_x", "upstream")
    ]


async def test_another_instance_sees_what_one_changed(backend: Backend) -> None:
    """Each instance may remember what it last saw; the database decides. One instance
    fills the cap, the other raises it: the first admits again; the other spends it all:
    the first refuses."""
    a, b = backend.new_store(), backend.new_store()
    await a.open()
    await b.open()
    try:
        app = (await a.create_app(name="a", mode="test", origins=())).app
        full = await a.reserve(hold_request(app.id, "u", want=1000, cap=1000))
        await a.settle(settlement(full.id, 1000))
        with pytest.raises(CapReached):
            await a.reserve(hold_request(app.id, "u", want=10, cap=1000))
        raised = await b.reserve(hold_request(app.id, "u", want=10, cap=3000))  # re-approved
        await b.settle(settlement(raised.id, 10))
        again = await a.reserve(hold_request(app.id, "u", want=500, cap=3000))
        assert again.amount_nano == 500
        await a.settle(settlement(again.id, 500))
        rest = await b.reserve(hold_request(app.id, "u", want=5000, cap=3000))
        assert rest.amount_nano == 3000 - 1510
        await b.settle(settlement(rest.id, rest.amount_nano))
        with pytest.raises(CapReached):
            await a.reserve(hold_request(app.id, "u", want=10, cap=3000))
        conn = await a.connection(app.id, "u")
        assert conn is not None and conn.settled_nano == 3000
    finally:
        await a.close()
        await b.close()
    await assert_consistent(backend)
