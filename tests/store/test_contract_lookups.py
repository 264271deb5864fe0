"""Every backend's deferred settlements and reconciliation: a hold waits for the
upstream's record, survives its process, and is never worked on by two instances."""

from __future__ import annotations

import asyncio

from gateway.store.base import Store

from .backends import Backend, assert_consistent
from .helpers import hold_request, settlement


async def test_a_deferred_hold_keeps_the_cap_safe_until_it_settles(
    store: Store, backend: Backend
) -> None:
    app = (await store.create_app(name="a", mode="test", origins=())).app
    hold = await store.reserve(hold_request(app.id, "u", want=600, cap=1000))
    await store.note_generation(hold.id, "gen-1")
    await store.defer(settlement(hold.id, 300, source="estimate"), retry_in_s=0)
    conn = await store.connection(app.id, "u")
    assert conn is not None and conn.held_nano == 600  # still held
    assert await store.reconcile_stale_holds() == 0  # deferred: not an orphan
    [pending] = await store.claim_lookups(limit=10, lease_s=30)
    assert (pending.hold_id, pending.generation_id, pending.attempts) == (hold.id, "gen-1", 0)
    assert pending.fallback.cost_nano == 300 and pending.fallback.cost_source == "estimate"
    assert pending.fallback.status == "ok" and pending.fallback.ttfb_ms == 1.0
    assert await store.claim_lookups(limit=10, lease_s=30) == []  # leased
    charge = await store.settle(settlement(hold.id, 250, source="generation"))
    assert charge is not None and charge.charged_nano == 250
    assert await store.settle(settlement(hold.id, 250)) is None
    assert await store.open_holds() == 0
    [row] = await store.ledger(app.id, "u")
    assert (row.cost_source, row.generation_id, row.cost_nano) == ("generation", "gen-1", 250)
    await assert_consistent(backend)


async def test_a_failed_lookup_is_due_again_later(store: Store) -> None:
    app = (await store.create_app(name="a", mode="test", origins=())).app
    hold = await store.reserve(hold_request(app.id, "u", want=100))
    await store.defer(settlement(hold.id, 80, generation_id="gen-9"), retry_in_s=3600)
    assert await store.claim_lookups(limit=10, lease_s=30) == []  # not due yet
    await store.retry_lookup(hold.id, retry_in_s=0)
    [first] = await store.claim_lookups(limit=10, lease_s=0)
    assert (first.attempts, first.generation_id) == (1, "gen-9")
    await store.retry_lookup(first.hold_id, retry_in_s=0)
    [second] = await store.claim_lookups(limit=10, lease_s=0)
    assert second.attempts == 2
    await store.retry_lookup(first.hold_id, retry_in_s=3600)
    assert await store.claim_lookups(limit=10, lease_s=0) == []
    await store.settle(second.fallback)
    assert await store.open_holds() == 0


async def test_two_instances_never_claim_the_same_lookup(backend: Backend) -> None:
    stores = [backend.new_store() for _ in range(2)]
    for s in stores:
        await s.open()
    try:
        app = (await stores[0].create_app(name="a", mode="test", origins=())).app
        holds = [await stores[0].reserve(hold_request(app.id, "u", want=10, cap=10**6))
                 for _ in range(20)]
        for h in holds:
            await stores[0].defer(settlement(h.id, 5, generation_id="g" + h.id), retry_in_s=0)
        claims = await asyncio.gather(
            *(s.claim_lookups(limit=7, lease_s=60) for s in stores for _ in range(3))
        )
        claimed = [p.hold_id for batch in claims for p in batch]
        assert sorted(claimed) == sorted(h.id for h in holds)
        for batch, s in zip(claims, [s for s in stores for _ in range(3)], strict=True):
            for pending in batch:
                assert await s.settle(pending.fallback) is not None
    finally:
        for s in stores:
            await s.close()
    await assert_consistent(backend)


async def test_holds_of_a_dead_instance_are_charged_their_checkpoint(backend: Backend) -> None:
    dead, alive = backend.new_store(), backend.new_store()
    await dead.open()
    await alive.open()
    try:
        app = (await dead.create_app(name="a", mode="test", origins=())).app
        lost = await dead.reserve(hold_request(app.id, "u", want=500))
        await dead.extend(lost.id, add_nano=0, used_nano=123)
        named = await dead.reserve(hold_request(app.id, "u", want=300))
        await dead.extend(named.id, add_nano=0, used_nano=77)
        await dead.note_generation(named.id, "gen-7")
        assert await alive.reconcile_stale_holds() == 0  # its owner lives
        assert await alive.claim_lookups(limit=10, lease_s=30) == []
        await backend.kill(dead)
        # Without a generation id: the checkpoint, at once.
        assert await alive.reconcile_stale_holds() == 1
        conn = await alive.connection(app.id, "u")
        assert conn is not None and (conn.settled_nano, conn.held_nano) == (123, 300)
        # With one: a look-up first, the checkpoint as its fall-back.
        [pending] = await alive.claim_lookups(limit=10, lease_s=30)
        assert (pending.hold_id, pending.generation_id) == (named.id, "gen-7")
        assert (pending.fallback.cost_nano, pending.fallback.cost_source) == (77, "reconciled")
        await alive.settle(pending.fallback)
        rows = await alive.ledger(app.id, "u")
        assert sorted((r.status, r.cost_nano, r.cost_source) for r in rows) == [
            ("reconciled", 77, "reconciled"), ("reconciled", 123, "reconciled")
        ]
        assert await alive.reconcile_stale_holds() == 0
    finally:
        await alive.close()
        await dead.close()
    await assert_consistent(backend)


async def test_a_live_instance_reconciles_its_own_orphans(
    store: Store, backend: Backend
) -> None:
    app = (await store.create_app(name="a", mode="test", origins=())).app
    running = await store.reserve(hold_request(app.id, "u", want=100))
    orphan = await store.reserve(hold_request(app.id, "u", want=100))
    named = await store.reserve(hold_request(app.id, "u", want=100))
    fresh = await store.reserve(hold_request(app.id, "u", want=100))
    await store.extend(orphan.id, add_nano=0, used_nano=40)
    await store.note_generation(named.id, "gen-3")
    aged = "created_at = created_at - 120, updated_at = updated_at - 120"
    await backend.execute(f"UPDATE holds SET {aged} WHERE id != '{fresh.id}'")  # noqa: S608 (test-made id)
    live = [running.id.removeprefix("hold_")]
    assert await store.reconcile_stale_holds(live_request_ids=live) == 2
    assert await store.open_holds() == 3  # running, fresh, and named (now deferred)
    [pending] = await store.claim_lookups(limit=10, lease_s=30)
    assert pending.hold_id == named.id and pending.fallback.cost_source == "reconciled"
    for hold_id in (running.id, fresh.id):
        await store.settle(settlement(hold_id, 1))
    await store.settle(pending.fallback)
    assert [r.cost_nano for r in await store.ledger(app.id, "u") if r.status == "reconciled"] \
        == [0, 40]
    await assert_consistent(backend)


async def test_a_deferred_hold_without_a_generation_settles_to_its_fallback(
    store: Store, backend: Backend
) -> None:
    app = (await store.create_app(name="a", mode="test", origins=())).app
    hold = await store.reserve(hold_request(app.id, "u", want=100))
    await store.defer(settlement(hold.id, 60, source="estimate"), retry_in_s=0)
    assert await store.claim_lookups(limit=10, lease_s=30) == []  # nothing to look up
    assert await store.reconcile_stale_holds() == 1
    [row] = await store.ledger(app.id, "u")
    assert (row.cost_nano, row.cost_source) == (60, "estimate")
    await assert_consistent(backend)


PERSON = "account:acct_p"


async def test_a_hold_records_who_funds_it(store: Store, backend: Backend) -> None:
    app = (await store.create_app(name="a", mode="test", origins=())).app
    hold = await store.reserve(hold_request(app.id, "u", want=100, funded_by=PERSON))
    assert hold.funded_by == PERSON
    plain = await store.reserve(hold_request(app.id, "u", want=100))
    assert plain.funded_by == "operator"
    assert sorted(await backend.rows("SELECT id, funded_by FROM holds")) == sorted(
        [(hold.id, PERSON), (plain.id, "operator")]
    )
    await store.settle(settlement(hold.id, 1, funded_by=hold.funded_by))
    await store.settle(settlement(plain.id, 1))


async def test_a_dead_instances_user_funded_holds_keep_their_funder(
    backend: Backend,
) -> None:
    """Another node (or the next start) settles or looks up a dead node's holds: booked
    to the person who funded them, and the look-up names that funder."""
    dead, alive = backend.new_store(), backend.new_store()
    await dead.open()
    await alive.open()
    try:
        app = (await dead.create_app(name="a", mode="test", origins=())).app
        lost = await dead.reserve(hold_request(app.id, "u", want=500, funded_by=PERSON))
        await dead.extend(lost.id, add_nano=0, used_nano=50)
        named = await dead.reserve(hold_request(app.id, "u", want=300, funded_by=PERSON))
        await dead.note_generation(named.id, "gen-p")
        theirs = await dead.reserve(hold_request(app.id, "u", want=300))
        await dead.note_generation(theirs.id, "gen-o")
        await backend.kill(dead)
        assert await alive.reconcile_stale_holds() == 1
        [row] = await alive.ledger(app.id, "u")
        assert (row.request_id, row.funded_by, row.cost_nano) == (
            lost.id.removeprefix("hold_"), PERSON, 50
        )
        claimed = {p.generation_id: p for p in await alive.claim_lookups(limit=10, lease_s=30)}
        assert {g: p.fallback.funded_by for g, p in claimed.items()} == {
            "gen-p": PERSON, "gen-o": "operator"
        }
        # The lease runs out unsettled (the node that took it over died too): the next
        # claim still knows the funder.
        await backend.kill(alive)
        again = backend.new_store()
        await again.open()
        try:
            await again.retry_lookup(named.id, retry_in_s=0)
            [p] = [p for p in await again.claim_lookups(limit=10, lease_s=0)
                   if p.hold_id == named.id]
            assert p.fallback.funded_by == PERSON
            for pending in claimed.values():
                await again.settle(pending.fallback)
        finally:
            await again.close()
        rows = {r.generation_id: r.funded_by for r in await alive.ledger(app.id, "u")}
        assert rows == {None: PERSON, "gen-p": PERSON, "gen-o": "operator"}
    finally:
        await alive.close()
        await dead.close()
    await assert_consistent(backend)


async def test_a_live_instances_user_funded_orphans_keep_their_funder(
    store: Store, backend: Backend
) -> None:
    app = (await store.create_app(name="a", mode="test", origins=())).app
    orphan = await store.reserve(hold_request(app.id, "u", want=100, funded_by=PERSON))
    await store.extend(orphan.id, add_nano=0, used_nano=30)
    named = await store.reserve(hold_request(app.id, "u", want=100, funded_by=PERSON))
    await store.note_generation(named.id, "gen-4")
    await backend.execute("UPDATE holds SET created_at = created_at - 120, "
                          "updated_at = updated_at - 120")
    assert await store.reconcile_stale_holds() == 2
    [pending] = await store.claim_lookups(limit=10, lease_s=30)
    assert pending.hold_id == named.id and pending.fallback.funded_by == PERSON
    await store.settle(pending.fallback)
    assert sorted((r.cost_nano, r.funded_by) for r in await store.ledger(app.id, "u")) == [
        (0, PERSON), (30, PERSON)
    ]
    await assert_consistent(backend)


async def test_a_deferred_user_funded_hold_keeps_its_funder(store: Store) -> None:
    app = (await store.create_app(name="a", mode="test", origins=())).app
    hold = await store.reserve(hold_request(app.id, "u", want=100, funded_by=PERSON))
    await store.defer(settlement(hold.id, 60, source="estimate", generation_id="gen-5",
                                 funded_by=hold.funded_by), retry_in_s=0)
    [pending] = await store.claim_lookups(limit=10, lease_s=30)
    assert pending.fallback.funded_by == PERSON
    await store.settle(pending.fallback)
    [row] = await store.ledger(app.id, "u")
    assert (row.funded_by, row.cost_source) == (PERSON, "estimate")
