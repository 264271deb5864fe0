"""The backends the store's contract suite runs over, each behind one small harness:
open a store (and another on the same database, as a second node would), read the
tables directly, and make an instance look dead."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from gateway.store.base import Store
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SQLiteStore


class Backend(Protocol):
    name: str

    def new_store(self) -> Store:
        """A store on this backend's database (not yet opened)."""
        ...

    async def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """The rows of ``sql`` (portable SQL, no parameters), read directly."""
        ...

    async def execute(self, sql: str) -> None:
        """Run ``sql`` (portable SQL, no parameters) directly."""
        ...

    async def kill(self, store: Store) -> None:
        """Make ``store``'s instance look dead to the others (it stays open)."""
        ...


class SQLiteBackend:
    name = "sqlite"

    def __init__(self, folder: Path, *, name: str = "wattfare.db") -> None:
        self.path = str(folder / name)

    def new_store(self) -> Store:
        return SQLiteStore(self.path)

    async def rows(self, sql: str) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.path) as db:
            return db.execute(sql).fetchall()

    async def execute(self, sql: str) -> None:
        with sqlite3.connect(self.path) as db:
            db.execute(sql)

    async def kill(self, store: Store) -> None:
        assert isinstance(store, SQLiteStore)
        # A pid that no process of this host has: its instance is presumed gone.
        await self.execute(
            f"UPDATE instances SET pid = {2**22 + 7} WHERE id = '{store.instance_id}'"  # noqa: S608 (test-made id)
        )


class PostgresBackend:
    """A schema of its own on the test server, dropped afterwards."""

    name = "postgres"

    def __init__(self, url: str) -> None:
        self.url = url
        self.schema = "test_" + uuid.uuid4().hex[:12]

    def new_store(self) -> Store:
        return PostgresStore(self.url, schema=self.schema, min_size=1, max_size=4)

    async def _connection(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.url, server_settings={"search_path": self.schema})

    async def rows(self, sql: str) -> list[tuple[Any, ...]]:
        con = await self._connection()
        try:
            return [tuple(r) for r in await con.fetch(sql)]
        finally:
            await con.close()

    async def execute(self, sql: str) -> None:
        con = await self._connection()
        try:
            await con.execute(sql)
        finally:
            await con.close()

    async def kill(self, store: Store) -> None:
        assert isinstance(store, PostgresStore)
        # Its lease lapsed an hour ago, by the database's clock.
        lapsed = "heartbeat_at = heartbeat_at - 3600"
        await self.execute(f"UPDATE instances SET {lapsed} WHERE id = '{store.instance_id}'")  # noqa: S608 (test-made id)

    async def drop(self) -> None:
        await self.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')


async def assert_consistent(backend: Backend) -> None:
    """Ledger and counters agree; no hold left; nothing over its cap or budget."""
    assert (await backend.rows("SELECT COUNT(*) FROM holds"))[0][0] == 0
    spend = await backend.rows(
        "SELECT s.app_id, s.user_id, s.period, s.settled_nano, s.held_nano, c.cap_nano, "
        "(SELECT COALESCE(SUM(l.cost_nano), 0) FROM ledger l WHERE l.app_id = s.app_id "
        " AND l.user_id = s.user_id AND l.period = s.period) "
        "FROM spend s JOIN connections c ON c.app_id = s.app_id AND c.user_id = s.user_id"
    )
    for app_id, user, period, settled, held, cap, ledger in spend:
        assert held == 0, (app_id, user, period)
        assert settled == ledger, (app_id, user, period)
        assert settled <= cap, (app_id, user, period)
    accounts = await backend.rows(
        "SELECT s.account_id, s.period, s.settled_nano, s.held_nano, a.budget_nano, "
        "(SELECT COALESCE(SUM(l.cost_nano), 0) FROM ledger l WHERE l.account_id = s.account_id "
        " AND l.period = s.period) "
        "FROM account_spend s JOIN accounts a ON a.id = s.account_id"
    )
    for account_id, period, settled, held, budget, ledger in accounts:
        assert held == 0, (account_id, period)
        assert settled == ledger, (account_id, period)
        assert settled <= budget, (account_id, period)
