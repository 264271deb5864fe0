"""Every backend's self-service side: a person's own budget, password, sessions,
account deletion and usage export."""

from __future__ import annotations

import time

import pytest

from gateway.store.base import DELETED_PASSWORD_HASH, CapReached, Store, deleted_email

from .backends import Backend
from .helpers import settlement, this_month
from .test_contract_accounts import connect, hold_request, setup


async def sessions(store: Store, account_id: str, count: int) -> list[bytes]:
    made = [f"s{i}-{account_id}".encode() for i in range(count)]
    for token in made:
        await store.create_web_session(token, account_id=account_id,
                                       expires_at=int(time.time()) + 600)
    return made


async def signed_in(store: Store, tokens: list[bytes]) -> list[bool]:
    now = int(time.time())
    return [await store.account_by_web_session(t, now=now) is not None for t in tokens]


async def email_of(backend: Backend, account_id: str) -> str:
    rows = await backend.rows(f"SELECT email FROM accounts WHERE id = '{account_id}'")  # noqa: S608 (test-made id)
    return str(rows[0][0])


async def test_a_lowered_budget_admits_nothing_more(store: Store, backend: Backend) -> None:
    app_id, account_id = await setup(store, budget=1000)
    await connect(store, app_id, "u1", cap=5000, account_id=account_id)
    running = await store.reserve(hold_request(app_id, "u1", want=300))
    h = await store.reserve(hold_request(app_id, "u1", want=400))
    await store.settle(settlement(h.id, 400))
    row = await store.set_account_budget(await email_of(backend, account_id), 200)
    assert row is not None and row.budget_nano == 200  # below the 400 settled: allowed
    with pytest.raises(CapReached) as refused:
        await store.reserve(hold_request(app_id, "u1", want=10))
    assert refused.value.budget
    # The request admitted before the change settles to no more than the budget allows.
    charge = await store.settle(settlement(running.id, 300))
    assert charge is not None and charge.charged_nano == 0 and charge.operator_nano == 300
    spend = await store.account_spend(account_id, this_month())
    assert (spend.settled_nano, spend.held_nano, spend.remaining_nano) == (400, 0, 0)
    conn = await store.connection(app_id, "u1", this_month())
    assert conn is not None and conn.remaining_nano == 0


async def test_password_change_and_sign_out_everywhere_end_sessions(
    store: Store, backend: Backend
) -> None:
    _, account_id = await setup(store, budget=1000)
    _, other_id = await setup(store, budget=1000)
    mine = await sessions(store, account_id, 3)
    theirs = await sessions(store, other_id, 1)
    assert await store.set_password(account_id, "new-hash") == 3
    assert await signed_in(store, mine) == [False, False, False]
    assert await signed_in(store, theirs) == [True]
    account = await store.account_by_email(await email_of(backend, account_id))
    assert account is not None and account.password_hash == "new-hash"
    again = await sessions(store, account_id, 2)
    assert await store.end_web_sessions(account_id) == 2
    assert await signed_in(store, again) == [False, False]
    assert await store.end_web_sessions(account_id) == 0
    assert await signed_in(store, theirs) == [True]


async def test_delete_account_revokes_erases_and_keeps_the_ledger(
    store: Store, backend: Backend
) -> None:
    app_id, account_id = await setup(store, budget=1000)
    other = await store.create_app(name="b-app", mode="live", origins=())
    await connect(store, app_id, "u1", cap=500, account_id=account_id)
    await connect(store, other.app.id, "u2", cap=500, account_id=account_id)
    await connect(store, other.app.id, "u3", cap=500, account_id=None)  # not theirs
    await store.revoke(other.app.id, "u2")
    h = await store.reserve(hold_request(app_id, "u1", want=100))
    await store.settle(settlement(h.id, 70))
    running = await store.reserve(hold_request(app_id, "u1", want=100))
    email = await email_of(backend, account_id)
    tokens = await sessions(store, account_id, 2)
    await store.changes()  # from here on

    revoked = await store.delete_account(account_id)

    assert revoked == [(app_id, "u1")]  # the one still connected
    events = [(c.kind, c.app_id, c.user_id) for c in await store.changes()]
    assert events == [("revoked", app_id, "u1")]  # other nodes cut its streams too
    assert await signed_in(store, tokens) == [False, False]
    assert await store.account_by_email(email) is None
    assert await email_of(backend, account_id) == deleted_email(account_id)
    hashed = await backend.rows(
        f"SELECT password_hash FROM accounts WHERE id = '{account_id}'"  # noqa: S608 (test-made id)
    )
    assert hashed == [(DELETED_PASSWORD_HASH,)]
    statuses = {}
    for app, user in ((app_id, "u1"), (other.app.id, "u2"), (other.app.id, "u3")):
        conn = await store.connection(app, user, this_month())
        assert conn is not None
        statuses[user] = conn.status
    assert statuses == {"u1": "revoked", "u2": "revoked", "u3": "connected"}
    # What was spent stays, and what was running settles against the kept budget.
    charge = await store.settle(settlement(running.id, 30))
    assert charge is not None and charge.charged_nano == 30
    assert [r.cost_nano for r in await store.account_usage(account_id)] == [70, 30]
    # The address is free again.
    fresh = await store.create_account(email=email, password_hash="h", budget_nano=5)
    assert fresh.id != account_id


async def test_account_usage_pages_filters_and_stays_private(
    store: Store, backend: Backend
) -> None:
    app_id, account_id = await setup(store, budget=10_000)
    _, other_id = await setup(store, budget=10_000)
    await connect(store, app_id, "u1", cap=10_000, account_id=account_id)
    await connect(store, app_id, "u2", cap=10_000, account_id=other_id)
    for cost in (1, 2, 3, 4, 5):
        payer = "account:" + account_id if cost == 3 else "operator"
        h = await store.reserve(hold_request(app_id, "u1", want=10, funded_by=payer))
        await store.settle(settlement(h.id, cost, funded_by=h.funded_by))
    h = await store.reserve(hold_request(app_id, "u2", want=10))
    await store.settle(settlement(h.id, 9))
    await backend.execute("UPDATE ledger SET period = '2026-10' WHERE cost_nano = 1")

    first = await store.account_usage(account_id, limit=2)
    assert [r.cost_nano for r in first] == [1, 2]
    rest = await store.account_usage(account_id, after=first[-1].seq, limit=10)
    assert [r.cost_nano for r in rest] == [3, 4, 5]
    row = rest[0]
    assert (row.app_id, row.user_id, row.prompt_tokens, row.completion_tokens) == (
        app_id, "u1", 1, 2)
    assert row.app_name.startswith("a-") and row.status == "ok"
    assert [r.funded_by for r in rest] == ["account:" + account_id, "operator", "operator"]
    assert [r.funded_by for r in await store.account_requests(account_id, limit=3)] == [
        "operator", "operator", "account:" + account_id
    ]
    october = await store.account_usage(account_id, period="2026-10")
    assert [r.cost_nano for r in october] == [1]
    assert [r.cost_nano for r in await store.account_usage(other_id)] == [9]
