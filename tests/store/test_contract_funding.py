"""The funding side of the store, on every backend: one source per account, found
through a connection, deleted, rewrapped only from the KEK it had, its problem kept;
connect attempts used once, and only by the browser session that started them."""

from __future__ import annotations

import time
import uuid

from gateway.store.base import Account, FundingAttempt, FundingSource, Store


def source(account: Account, *, kek_id: str = "k1") -> FundingSource:
    return FundingSource(
        id="fs_" + uuid.uuid4().hex[:20], account_id=account.id, provider="openrouter",
        label="OpenRouter account user_1", kek_id=kek_id, wrapped_key=b"w" * 60,
        ciphertext=b"c" * 90, created_at=int(time.time()),
    )


async def account(store: Store, email: str = "ada@example.com") -> Account:
    return await store.create_account(email=email, password_hash="x", budget_nano=10**10)


async def connect(store: Store, app_id: str, user: str, *, account_id: str | None) -> None:
    cid = uuid.uuid4().bytes
    await store.create_consent(cid, app_id=app_id, user_id=user, cap_nano=10**9,
                               origin="http://a.test", expires_at=int(time.time()) + 600)
    await store.finish_consent(cid, approve=True, account_id=account_id, cap_nano=10**9,
                               now=int(time.time()))


def attempt(account_id: str, state: bytes, *, expires_at: int) -> FundingAttempt:
    return FundingAttempt(
        state_hash=state, session_hash=b"a" * 32, account_id=account_id,
        provider="openrouter", verifier_hash=b"v" * 32, return_to="/dashboard",
        created_at=int(time.time()), expires_at=expires_at,
    )


async def test_one_source_per_account_found_through_its_connections(store: Store) -> None:
    ada = await account(store)
    app = (await store.create_app(name="A", mode="live", origins=())).app
    await connect(store, app.id, "u1", account_id=ada.id)
    await connect(store, app.id, "u2", account_id=None)
    assert await store.connection_funding(app.id, "u1") is None
    first, second = source(ada), source(ada)
    await store.save_funding_source(first)
    await store.save_funding_source(second)  # replaces the first
    assert await store.funding_source(ada.id) == second
    assert await store.connection_funding(app.id, "u1") == second
    assert await store.connection_funding(app.id, "u2") is None
    assert await store.connection_funding(app.id, "nobody") is None
    assert [s.id for s in await store.funding_sources()] == [second.id]
    assert await store.delete_funding_source(ada.id) is True
    assert await store.delete_funding_source(ada.id) is False
    assert await store.connection_funding(app.id, "u1") is None


async def test_problems_and_rewrap(store: Store) -> None:
    ada = await account(store)
    s = source(ada)
    await store.save_funding_source(s)
    await store.set_funding_problem(s.id, problem="out_of_credit", at=123)
    found = await store.funding_source(ada.id)
    assert found is not None and (found.problem, found.problem_at) == ("out_of_credit", 123)
    await store.set_funding_problem(s.id, problem=None, at=0)
    found = await store.funding_source(ada.id)
    assert found is not None and (found.problem, found.problem_at) == (None, None)
    assert not await store.rewrap_funding_source(
        s.id, old_kek_id="k0", kek_id="k2", wrapped_key=b"n" * 60
    )
    assert await store.rewrap_funding_source(
        s.id, old_kek_id="k1", kek_id="k2", wrapped_key=b"n" * 60
    )
    found = await store.funding_source(ada.id)
    assert found is not None
    assert (found.kek_id, found.wrapped_key, found.ciphertext) == ("k2", b"n" * 60, b"c" * 90)


async def test_attempts_are_used_once_by_their_own_session(store: Store) -> None:
    ada = await account(store)
    mine = attempt(ada.id, b"s" * 32, expires_at=int(time.time()) + 600)
    await store.create_funding_attempt(mine)
    assert await store.take_funding_attempt(b"s" * 32, session_hash=b"b" * 32) is None
    assert await store.take_funding_attempt(b"x" * 32, session_hash=b"a" * 32) is None
    assert await store.take_funding_attempt(b"s" * 32, session_hash=b"a" * 32) == mine
    assert await store.take_funding_attempt(b"s" * 32, session_hash=b"a" * 32) is None


async def test_expired_attempts_are_swept(store: Store) -> None:
    ada = await account(store)
    now = int(time.time())
    await store.create_funding_attempt(attempt(ada.id, b"old", expires_at=now - 1))
    await store.create_funding_attempt(attempt(ada.id, b"new", expires_at=now + 600))
    assert await store.take_funding_attempt(b"old", session_hash=b"a" * 32) is None


async def test_deleting_the_account_deletes_its_source_and_attempts(store: Store) -> None:
    ada = await account(store)
    await store.save_funding_source(source(ada))
    await store.create_funding_attempt(attempt(ada.id, b"s", expires_at=int(time.time()) + 60))
    await store.delete_account(ada.id)
    assert await store.funding_source(ada.id) is None
    assert await store.funding_sources() == []
    assert await store.take_funding_attempt(b"s", session_hash=b"a" * 32) is None
