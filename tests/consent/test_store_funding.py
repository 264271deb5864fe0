"""The store's funding side: one source per account, found through a connection,
deleted, rewrapped only from the KEK it had, problems kept; connect attempts used once
and only by the browser session that started them; the ledger's ``funded_by``."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.store.base import Account, FundingAttempt, FundingSource
from gateway.store.sqlite import SQLiteStore

from .test_store_accounts import PERIOD, connect, hold, settlement


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "w.db"))
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def source(account: Account, *, kek_id: str = "k1") -> FundingSource:
    return FundingSource(
        id="fs_" + uuid.uuid4().hex[:20], account_id=account.id, provider="openrouter",
        label="OpenRouter account user_1", kek_id=kek_id, wrapped_key=b"w" * 60,
        ciphertext=b"c" * 90, created_at=int(time.time()),
    )


async def account(store: SQLiteStore, email: str = "ada@example.com") -> Account:
    return await store.create_account(email=email, password_hash="x", budget_nano=10**10)


async def test_one_source_per_account_found_through_its_connections(store: SQLiteStore) -> None:
    ada = await account(store)
    app = (await store.create_app(name="A", mode="live", origins=())).app
    await connect(store, app.id, "u1", cap=10**9, account_id=ada.id)
    await connect(store, app.id, "u2", cap=10**9, account_id=None)
    assert await store.connection_funding(app.id, "u1") is None
    first = source(ada)
    await store.save_funding_source(first)
    second = source(ada)
    await store.save_funding_source(second)  # replaces the first
    assert await store.funding_source(ada.id) == second
    assert await store.connection_funding(app.id, "u1") == second
    assert await store.connection_funding(app.id, "u2") is None
    assert await store.connection_funding(app.id, "nobody") is None
    assert [s.id for s in await store.funding_sources()] == [second.id]
    assert await store.delete_funding_source(ada.id) is True
    assert await store.delete_funding_source(ada.id) is False
    assert await store.connection_funding(app.id, "u1") is None


async def test_problems_and_rewrap(store: SQLiteStore) -> None:
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


async def test_attempts_are_used_once_by_their_own_session(store: SQLiteStore) -> None:
    ada = await account(store)
    now = int(time.time())
    attempt = FundingAttempt(
        state_hash=b"s" * 32, session_hash=b"a" * 32, account_id=ada.id,
        provider="openrouter", verifier_hash=b"v" * 32, return_to="/dashboard",
        created_at=now, expires_at=now + 600,
    )
    await store.create_funding_attempt(attempt)
    assert await store.take_funding_attempt(b"s" * 32, session_hash=b"b" * 32) is None
    assert await store.take_funding_attempt(b"x" * 32, session_hash=b"a" * 32) is None
    assert await store.take_funding_attempt(b"s" * 32, session_hash=b"a" * 32) == attempt
    assert await store.take_funding_attempt(b"s" * 32, session_hash=b"a" * 32) is None


async def test_expired_attempts_are_swept(store: SQLiteStore) -> None:
    ada = await account(store)
    now = int(time.time())

    def attempt(state: bytes, expires_at: int) -> FundingAttempt:
        return FundingAttempt(
            state_hash=state, session_hash=b"a" * 32, account_id=ada.id,
            provider="openrouter", verifier_hash=b"v" * 32, return_to="/dashboard",
            created_at=now, expires_at=expires_at,
        )

    await store.create_funding_attempt(attempt(b"old", now - 1))
    await store.create_funding_attempt(attempt(b"new", now + 600))
    assert await store.take_funding_attempt(b"old", session_hash=b"a" * 32) is None


async def test_the_ledger_says_who_funded(store: SQLiteStore) -> None:
    ada = await account(store)
    app = (await store.create_app(name="A", mode="live", origins=())).app
    await connect(store, app.id, "u1", cap=10**9, account_id=ada.id)
    for funded_by in ("operator", "account:" + ada.id):
        h = await store.reserve(hold(app.id, "u1", want=1000))
        await store.settle(dataclasses.replace(settlement(h.id, 500), funded_by=funded_by))
    rows = await store.ledger(app.id, "u1")
    assert [r.funded_by for r in rows] == ["account:" + ada.id, "operator"]
    assert rows[0].period == PERIOD
