"""Every backend's operator side: an app's status, origins and deletion, the account
list and an account's status, and usage sums that are the ledger's exactly."""

from __future__ import annotations

import time

import pytest

from gateway.store.base import (
    AppDeleted,
    AppInUse,
    StaleCredential,
    Store,
    UnknownApp,
    UsageQuery,
)

from .backends import Backend
from .helpers import hold_request, settlement, this_month


async def cut(store: Store) -> list[tuple[str, str]]:
    """The connections whose streams the changes since the last call cut."""
    return [(c.app_id, c.user_id) for c in await store.changes() if c.kind == "revoked"]


async def charge(store: Store, app_id: str, user: str, cost: int) -> None:
    hold = await store.reserve(hold_request(app_id, user, want=100, cap=10**9))
    await store.settle(settlement(hold.id, cost))


async def test_find_by_id_or_name(store: Store) -> None:
    new = await store.create_app(name="shop", mode="test", origins=())
    assert (await store.find_app("shop")) == new.app
    assert (await store.find_app(new.app.id)) == new.app
    assert await store.find_app("nope") is None


async def test_a_disabled_app_is_refused_in_the_hold_and_its_streams_are_cut(
    store: Store,
) -> None:
    app = (await store.create_app(name="shop", mode="test", origins=())).app
    open_hold = await store.reserve(hold_request(app.id, "u1", want=100))
    await store.changes()
    disabled = await store.set_app_status("shop", "disabled")
    assert disabled.status == "disabled"
    with pytest.raises(StaleCredential):
        await store.reserve(hold_request(app.id, "u2", want=100))
    # The connection with a request in flight gets a revocation event (its stream is cut);
    # the connection itself stays as it was, so enabling the app restores it.
    changes = [(c.kind, c.app_id, c.user_id) for c in await store.changes()]
    assert sorted(changes) == [("app_disabled", app.id, ""), ("revoked", app.id, "u1")]
    state = await store.connection(app.id, "u1")
    assert state is not None and state.status == "connected"
    assert (await store.set_app_status(app.id, "active")).status == "active"
    await store.reserve(hold_request(app.id, "u2", want=100))
    await store.settle(settlement(open_hold.id, 10))
    stats = await store.app_stats(app.id, this_month())
    assert (stats.connected, stats.revoked, stats.open_holds, stats.ledger_rows) == (2, 0, 1, 1)
    assert (stats.settled_nano, stats.held_nano) == (10, 100)
    with pytest.raises(UnknownApp):
        await store.set_app_status("nope", "disabled")


async def test_origins_are_added_and_removed_in_one_step(store: Store) -> None:
    await store.create_app(name="shop", mode="live", origins=("https://a.example",))
    app = await store.update_app_origins(
        "shop", add=("https://b.example", "https://a.example", "https://b.example")
    )
    assert app.origins == ("https://a.example", "https://b.example")
    app = await store.update_app_origins("shop", remove=("https://a.example", "https://x"))
    assert app.origins == ("https://b.example",)
    assert (await store.find_app("shop")) == app
    with pytest.raises(UnknownApp):
        await store.update_app_origins("nope", add=("https://a.example",))


async def test_an_unused_app_is_erased(store: Store, backend: Backend) -> None:
    app = (await store.create_app(name="shop", mode="test", origins=())).app
    await store.create_consent(b"c" * 32, app_id=app.id, user_id="u", cap_nano=1,
                               origin="https://a.example", expires_at=int(time.time()) + 600)
    deletion = await store.delete_app("shop", force=False)
    assert deletion.erased
    assert await store.find_app(app.id) is None
    assert await backend.rows("SELECT COUNT(*) FROM consents") == [(0,)]
    await store.create_app(name="shop", mode="test", origins=())  # the name is free again


async def test_an_app_with_a_ledger_needs_force_and_keeps_its_ledger(store: Store) -> None:
    app = (await store.create_app(name="shop", mode="test", origins=())).app
    await charge(store, app.id, "u1", 40)
    with pytest.raises(AppInUse) as refused:
        await store.delete_app("shop", force=False)
    assert (refused.value.ledger_rows, refused.value.open_holds) == (1, 0)
    await store.changes()
    deletion = await store.delete_app("shop", force=True)
    assert (deletion.erased, deletion.revoked, deletion.app.status) == (False, 1, "deleted")
    assert await cut(store) == [(app.id, "u1")]
    state = await store.connection(app.id, "u1")
    assert state is not None and state.status == "revoked"
    assert len(await store.ledger(app.id, "u1")) == 1
    with pytest.raises(StaleCredential):
        await store.reserve(hold_request(app.id, "u2", want=100))
    with pytest.raises(AppDeleted):
        await store.set_app_status("shop", "active")
    with pytest.raises(AppDeleted):
        await store.update_app_origins("shop", add=("https://a.example",))


async def test_disabling_an_account_signs_it_out_and_revokes_its_connections(
    store: Store,
) -> None:
    app = (await store.create_app(name="shop", mode="live", origins=("https://a.example",))).app
    account = await store.create_account(email="ada@example.com", password_hash="h",
                                         budget_nano=10**9)
    now = int(time.time())
    await store.create_consent(b"k" * 32, app_id=app.id, user_id="u1", cap_nano=10**8,
                               origin="https://a.example", expires_at=now + 600)
    await store.finish_consent(b"k" * 32, approve=True, account_id=account.id, cap_nano=10**8,
                               now=now)
    await store.create_web_session(b"s" * 32, account_id=account.id, expires_at=now + 600)
    [summary] = await store.list_accounts(this_month())
    assert (summary.account.email, summary.account.status, summary.connections) == (
        "ada@example.com", "active", 1)
    await store.changes()
    changed = await store.set_account_status("ada@example.com", "disabled")
    assert changed is not None
    assert (changed[0].status, changed[1]) == ("disabled", 1)
    assert await store.account_by_web_session(b"s" * 32, now=now) is None
    assert await cut(store) == [(app.id, "u1")]
    found = await store.account_by_email("ada@example.com")
    assert found is not None and found.status == "disabled"
    enabled = await store.set_account_status("ada@example.com", "active")
    assert enabled is not None and (enabled[0].status, enabled[1]) == ("active", 0)
    assert await store.set_account_status("nobody@example.com", "disabled") is None

    await store.delete_account(account.id)  # by its owner: listed as deleted, not editable
    [summary] = await store.list_accounts(this_month())
    assert summary.account.status == "deleted"
    assert await store.set_account_status(summary.account.email, "disabled") is None


async def test_usage_sums_are_the_ledgers_exactly(store: Store, backend: Backend) -> None:
    shop = (await store.create_app(name="shop", mode="test", origins=())).app
    bank = (await store.create_app(name="bank", mode="test", origins=())).app
    costs = [123_456_789, 1, 999_999_999, 7, 0, 31_415_926]
    for i, cost in enumerate(costs):
        await charge(store, (shop, bank)[i % 2].id, f"u{i % 3}", cost)
    await backend.execute("UPDATE ledger SET period = '2026-10' WHERE user_id = 'u1'")
    assert await store.usage_count(UsageQuery()) == len(costs)
    after, scanned, rows = 0, 0, []
    for _ in range(10):
        page = await store.usage(UsageQuery(), after_id=after, limit=4)
        rows += page.rows
        scanned += page.scanned
        after = page.last_id
        if page.scanned < 4:
            break
    assert scanned == len(costs)
    assert sum(r.cost_nano for r in rows) == sum(costs)
    assert sum(r.requests for r in rows) == len(costs)
    where = f"period = '2026-10' AND app_id = '{bank.id}'"
    want = await backend.rows(
        f"SELECT SUM(cost_nano), SUM(prompt_tokens), COUNT(*) FROM ledger WHERE {where}"  # noqa: S608 (test-made id)
    )
    query = UsageQuery(period="2026-10", app_id=bank.id)
    assert await store.usage_count(query) == want[0][2]
    page = await store.usage(query, after_id=0, limit=100)
    assert [(sum(r.cost_nano for r in page.rows), sum(r.prompt_tokens for r in page.rows),
             page.scanned)] == want
    assert {(r.app_id, r.user_id, r.period) for r in page.rows} == {(bank.id, "u1", "2026-10")}
    empty = await store.usage(UsageQuery(model="nope"), after_id=0, limit=100)
    assert (empty.rows, empty.scanned, empty.last_id) == ([], 0, 0)
