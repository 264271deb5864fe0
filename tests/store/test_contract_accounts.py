"""Every backend's end-user side: an account's budget charged with each connection's
cap, one-time consent links, browser sessions, and the generated secret."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from gateway.store.base import AccountExists, CapReached, ConsentGone, HoldRequest, Store

from .backends import Backend, assert_consistent
from .helpers import hold_request as _hold_request
from .helpers import settlement, this_month


def hold_request(
    app_id: str, user: str, *, want: int, auto: bool = False, cap: int | None = None,
    funded_by: str = "operator",
) -> HoldRequest:
    """A live-mode request by default (no auto-connection)."""
    return _hold_request(app_id, user, want=want, auto=auto, cap=cap, funded_by=funded_by)


async def connect(
    store: Store, app_id: str, user: str, *, cap: int, account_id: str | None
) -> None:
    cid = uuid.uuid4().bytes
    await store.create_consent(cid, app_id=app_id, user_id=user, cap_nano=cap,
                               origin="http://a.test", expires_at=int(time.time()) + 600)
    await store.finish_consent(cid, approve=True, account_id=account_id, cap_nano=cap,
                               now=int(time.time()))


async def setup(store: Store, *, budget: int, mode: str = "live") -> tuple[str, str]:
    app = await store.create_app(name="a-" + uuid.uuid4().hex[:6], mode="live"
                                 if mode == "live" else "test", origins=("http://a.test",))
    account = await store.create_account(email=f"{uuid.uuid4().hex[:6]}@x.test",
                                         password_hash="h", budget_nano=budget)
    return app.app.id, account.id


async def test_hold_is_the_least_of_want_cap_and_budget(store: Store) -> None:
    app_id, account_id = await setup(store, budget=300)
    await connect(store, app_id, "u1", cap=1000, account_id=account_id)
    first = await store.reserve(hold_request(app_id, "u1", want=200))
    assert first.amount_nano == 200
    second = await store.reserve(hold_request(app_id, "u1", want=200))
    assert second.amount_nano == 100  # the budget's rest, though the cap has 800 more
    with pytest.raises(CapReached):
        await store.reserve(hold_request(app_id, "u1", want=10))
    spend = await store.account_spend(account_id, this_month())
    assert (spend.held_nano, spend.settled_nano, spend.remaining_nano) == (300, 0, 0)


async def test_budget_covers_all_connections_under_concurrency(
    store: Store, backend: Backend
) -> None:
    app_id, account_id = await setup(store, budget=1000)
    other = await store.create_app(name="b", mode="live", origins=())
    for app, user in ((app_id, "u1"), (other.app.id, "u2")):
        await connect(store, app, user, cap=800, account_id=account_id)

    async def one(app: str, user: str) -> int:
        try:
            h = await store.reserve(hold_request(app, user, want=70))
        except CapReached:
            return 0
        charge = await store.settle(settlement(h.id, 90))  # reports more than held
        assert charge is not None
        return charge.charged_nano

    charged = await asyncio.gather(*(
        one(*pair) for _ in range(20) for pair in ((app_id, "u1"), (other.app.id, "u2"))
    ))
    spend = await store.account_spend(account_id, this_month())
    assert spend.settled_nano == sum(charged) <= 1000
    assert spend.held_nano == 0
    for app, user in ((app_id, "u1"), (other.app.id, "u2")):
        conn = await store.connection(app, user, this_month())
        assert conn is not None and conn.settled_nano <= 800
    await assert_consistent(backend)


async def test_settle_clamps_to_budget_and_ledger_names_the_account(
    store: Store, backend: Backend
) -> None:
    app_id, account_id = await setup(store, budget=100)
    await connect(store, app_id, "u1", cap=1000, account_id=account_id)
    h = await store.reserve(hold_request(app_id, "u1", want=100))
    charge = await store.settle(settlement(h.id, 150))
    assert charge is not None and (charge.charged_nano, charge.operator_nano) == (100, 50)
    rows = await backend.rows("SELECT cost_nano, operator_nano, account_id FROM ledger")
    assert rows == [(100, 50, account_id)]
    requests = await store.account_requests(account_id)
    assert [r.cost_nano for r in requests] == [100]
    daily = await store.account_daily_spend(account_id, since=0)
    assert [(a, n) for a, _, n in daily] == [(app_id, 100)]


async def test_extension_is_bounded_by_the_budget(store: Store) -> None:
    app_id, account_id = await setup(store, budget=150)
    await connect(store, app_id, "u1", cap=1000, account_id=account_id)
    h = await store.reserve(hold_request(app_id, "u1", want=100))
    extension = await store.extend(h.id, add_nano=500, used_nano=90)
    assert extension.granted_nano == 50
    assert (await store.account_spend(account_id, this_month())).held_nano == 150


async def test_reconciliation_releases_the_account_hold(store: Store, backend: Backend) -> None:
    app_id, account_id = await setup(store, budget=1000)
    await connect(store, app_id, "u1", cap=1000, account_id=account_id)
    h = await store.reserve(hold_request(app_id, "u1", want=400))
    await store.extend(h.id, add_nano=0, used_nano=120)
    await backend.execute("UPDATE holds SET instance_id = 'gone'")  # its process is gone
    assert await store.reconcile_stale_holds() == 1
    spend = await store.account_spend(account_id, this_month())
    assert (spend.settled_nano, spend.held_nano) == (120, 0)


async def test_test_mode_keeps_a_cap_a_person_chose(store: Store) -> None:
    app_id, account_id = await setup(store, budget=10_000, mode="test")
    await connect(store, app_id, "u1", cap=300, account_id=account_id)
    h = await store.reserve(hold_request(app_id, "u1", want=100, auto=True, cap=5000))
    await store.settle(settlement(h.id, 0))
    conn = await store.connection(app_id, "u1", this_month())
    assert conn is not None and conn.cap_nano == 300
    # Without an account, test mode still approves whatever the session asks for.
    h = await store.reserve(hold_request(app_id, "u2", want=100, auto=True, cap=5000))
    await store.settle(settlement(h.id, 0))
    conn = await store.connection(app_id, "u2", this_month())
    assert conn is not None and conn.cap_nano == 5000


@pytest.mark.parametrize(
    ("expires_in", "uses", "reason"),
    [
        pytest.param(600, 2, "used", id="reused"),
        pytest.param(-1, 1, "expired", id="expired"),
    ],
)
async def test_consent_links_work_once_and_expire(
    store: Store, expires_in: int, uses: int, reason: str
) -> None:
    app_id, account_id = await setup(store, budget=1000)
    cid = b"x" * 32
    now = int(time.time())
    await store.create_consent(cid, app_id=app_id, user_id="u1", cap_nano=700,
                               origin="http://a.test", expires_at=now + expires_in)
    for _ in range(uses - 1):
        done = await store.finish_consent(cid, approve=True, account_id=account_id,
                                          cap_nano=500, now=now)
        assert done.outcome == "approved"
    with pytest.raises(ConsentGone) as gone:
        await store.finish_consent(cid, approve=True, account_id=account_id, cap_nano=500,
                                   now=now)
    assert gone.value.reason == reason
    with pytest.raises(ConsentGone) as unknown:
        await store.finish_consent(b"y" * 32, approve=True, account_id=None, cap_nano=1, now=now)
    assert unknown.value.reason == "unknown"


async def test_denial_creates_no_connection(store: Store) -> None:
    app_id, account_id = await setup(store, budget=1000)
    cid = b"d" * 32
    await store.create_consent(cid, app_id=app_id, user_id="u1", cap_nano=700,
                               origin="http://a.test", expires_at=int(time.time()) + 600)
    done = await store.finish_consent(cid, approve=False, account_id=account_id, cap_nano=700,
                                      now=int(time.time()))
    assert done.outcome == "denied"
    assert await store.connection(app_id, "u1", this_month()) is None


async def test_accounts_sessions_budget_and_secret(store: Store) -> None:
    account = await store.create_account(email="ada@x.test", password_hash="h", budget_nano=5)
    with pytest.raises(AccountExists):
        await store.create_account(email="ada@x.test", password_hash="h", budget_nano=5)
    updated = await store.set_account_budget("ada@x.test", 42)
    assert updated is not None and updated.budget_nano == 42
    assert await store.set_account_budget("nobody@x.test", 1) is None
    now = int(time.time())
    await store.create_web_session(b"s" * 32, account_id=account.id, expires_at=now + 60)
    found = await store.account_by_web_session(b"s" * 32, now=now)
    assert found is not None and found.id == account.id
    assert await store.account_by_web_session(b"s" * 32, now=now + 61) is None
    await store.delete_web_session(b"s" * 32)
    assert await store.account_by_web_session(b"s" * 32, now=now) is None
    first = await store.secret("cookie_signing")
    assert len(first) == 32 and await store.secret("cookie_signing") == first


async def test_connection_reports_the_budget_when_it_binds(store: Store) -> None:
    app_id, account_id = await setup(store, budget=300)
    await connect(store, app_id, "u1", cap=1000, account_id=account_id)
    state = await store.connection(app_id, "u1", this_month())
    assert state is not None
    assert (state.account_room_nano, state.remaining_nano) == (300, 300)
    held = await store.reserve(hold_request(app_id, "u1", want=300))
    with pytest.raises(CapReached) as info:
        await store.reserve(hold_request(app_id, "u1", want=10))
    assert info.value.budget  # the account ran out, not the app's cap
    await store.settle(settlement(held.id, 100))
    state = await store.connection(app_id, "u1", this_month())
    assert state is not None
    assert (state.settled_nano, state.remaining_nano) == (100, 200)
