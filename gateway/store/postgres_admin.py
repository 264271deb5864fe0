"""The PostgreSQL store's operator side: an app's status, origins and deletion, the
account list and an account's status, and the ledger's usage report.

:class:`AdminMixin` is part of :class:`gateway.store.postgres.PostgresStore`; each
action is one transaction, with the same outcomes as :mod:`gateway.store.sqlite_admin`.
An app disabled, enabled or deleted posts an ``app_disabled`` change, so every node
forgets its cached credentials at once.
"""

from __future__ import annotations

from typing import Any, Literal

import asyncpg
import orjson

from gateway.store.base import (
    Account,
    AccountSummary,
    App,
    AppDeleted,
    AppDeletion,
    AppInUse,
    AppStats,
    UnknownApp,
    UsagePage,
    UsageQuery,
    UsageSum,
)
from gateway.store.rows import ACCOUNT_COLUMNS, account_of, prefixed

APP_COLUMNS = (
    "id, name, mode, publishable_key, secret_hash, key_version, origins, status, created_at"
)


def app_of(row: asyncpg.Record) -> App:
    """An :class:`App` from a row of ``APP_COLUMNS``."""
    return App(
        id=row[0], name=row[1], mode=row[2], publishable_key=row[3],
        secret_hash=bytes(row[4]), key_version=row[5], origins=tuple(orjson.loads(row[6])),
        status=row[7], created_at=row[8],
    )


async def _find(con: Any, app: str, *, lock: bool = False) -> App | None:
    row = await con.fetchrow(
        f"SELECT {APP_COLUMNS} FROM apps WHERE id = $1 OR name = $1 "  # noqa: S608 (constant columns)
        "ORDER BY id = $1 DESC LIMIT 1" + (" FOR UPDATE" if lock else ""),
        app,
    )
    return None if row is None else app_of(row)


async def _editable(con: Any, app: str) -> App:
    found = await _find(con, app, lock=True)
    if found is None:
        raise UnknownApp(app)
    if found.status == "deleted":
        raise AppDeleted(found.id)
    return found


async def _event(con: Any, kind: str, app_id: str, user_id: str = "") -> None:
    await con.execute(
        "INSERT INTO events (kind, app_id, user_id, created_at) "
        "VALUES ($1, $2, $3, wattfare_now())",
        kind, app_id, user_id,
    )


async def _cut_open_streams(con: Any, app_id: str) -> None:
    """Post a revocation event for each of the app's connections with a request in
    flight: every node cuts those streams (a stream always has a hold)."""
    await con.execute(
        "INSERT INTO events (kind, app_id, user_id, created_at) "
        "SELECT DISTINCT 'revoked', app_id, user_id, wattfare_now() FROM holds "
        "WHERE app_id = $1",
        app_id,
    )


async def _revoke_where(con: Any, column: str, value: str) -> int:
    """Revoke the connected connections whose ``column`` (a constant name) is ``value``,
    posting one event each; how many."""
    keys = await con.fetch(
        "UPDATE connections SET status = 'revoked', updated_at = wattfare_now() "  # noqa: S608 (constant column)
        f"WHERE status = 'connected' AND {column} = $1 RETURNING app_id, user_id",
        value,
    )
    await con.executemany(
        "INSERT INTO events (kind, app_id, user_id, created_at) "
        "VALUES ('revoked', $1, $2, wattfare_now())",
        [(r[0], r[1]) for r in keys],
    )
    return len(keys)


def _usage_filter(query: UsageQuery, first: int) -> tuple[str, list[Any]]:
    """The query's conditions, their parameters numbered from ``$first``."""
    conditions: list[str] = []
    args: list[Any] = []
    for column, value in (
        ("period", query.period), ("app_id", query.app_id),
        ("user_id", query.user_id), ("model", query.model),
    ):
        if value is not None:
            args.append(value)
            conditions.append(f"{column} = ${first + len(args) - 1}")
    return "".join(f" AND {c}" for c in conditions), args


class AdminMixin:
    """The operator's queries and actions for the PostgreSQL store."""

    @property
    def pool(self) -> asyncpg.Pool:
        raise NotImplementedError  # provided by PostgresStore

    # -- apps -------------------------------------------------------------------------------

    async def find_app(self, app: str) -> App | None:
        return await _find(self.pool, app)

    async def app_stats(self, app_id: str, period: str) -> AppStats:
        row = await self.pool.fetchrow(
            "SELECT "
            "(SELECT COUNT(*) FROM connections WHERE app_id = $1 AND status = 'connected'), "
            "(SELECT COUNT(*) FROM connections WHERE app_id = $1 AND status = 'revoked'), "
            "(SELECT COUNT(*) FROM holds WHERE app_id = $1), "
            "(SELECT COUNT(*) FROM ledger WHERE app_id = $1), "
            "(SELECT COALESCE(SUM(settled_nano), 0) FROM spend "
            " WHERE app_id = $1 AND period = $2), "
            "(SELECT COALESCE(SUM(held_nano), 0) FROM spend WHERE app_id = $1 AND period = $2)",
            app_id, period,
        )
        assert row is not None
        return AppStats(
            connected=int(row[0]), revoked=int(row[1]), open_holds=int(row[2]),
            ledger_rows=int(row[3]), settled_nano=int(row[4]), held_nano=int(row[5]),
            period=period,
        )

    async def set_app_status(self, app: str, status: Literal["active", "disabled"]) -> App:
        async with self.pool.acquire() as con, con.transaction():
            found = await _editable(con, app)
            await con.execute(
                "UPDATE apps SET status = $1, updated_at = wattfare_now() WHERE id = $2",
                status, found.id,
            )
            if status != found.status:
                await _event(con, "app_disabled", found.id)
            if status == "disabled" and found.status != "disabled":
                await _cut_open_streams(con, found.id)
            refreshed = await _find(con, found.id)
        assert refreshed is not None
        return refreshed

    async def update_app_origins(
        self, app: str, *, add: tuple[str, ...] = (), remove: tuple[str, ...] = ()
    ) -> App:
        async with self.pool.acquire() as con, con.transaction():
            found = await _editable(con, app)
            origins = [o for o in found.origins if o not in remove]
            origins += [o for o in dict.fromkeys(add) if o not in origins]
            await con.execute(
                "UPDATE apps SET origins = $1, updated_at = wattfare_now() WHERE id = $2",
                orjson.dumps(origins).decode(), found.id,
            )
            refreshed = await _find(con, found.id)
        assert refreshed is not None
        return refreshed

    async def delete_app(self, app: str, *, force: bool) -> AppDeletion:
        async with self.pool.acquire() as con, con.transaction():
            found = await _find(con, app, lock=True)
            if found is None:
                raise UnknownApp(app)
            ledger = await con.fetchval("SELECT COUNT(*) FROM ledger WHERE app_id = $1",
                                        found.id)
            holds = await con.fetchval("SELECT COUNT(*) FROM holds WHERE app_id = $1",
                                       found.id)
            if not ledger and not holds:
                revoked = await con.fetchval(
                    "SELECT COUNT(*) FROM connections "
                    "WHERE app_id = $1 AND status = 'connected'",
                    found.id,
                )
                for table in ("consents", "spend", "connections"):
                    await con.execute(f"DELETE FROM {table} WHERE app_id = $1", found.id)  # noqa: S608 (constant table names)
                await con.execute("DELETE FROM apps WHERE id = $1", found.id)
                await _event(con, "app_disabled", found.id)
                return AppDeletion(app=found, erased=True, revoked=int(revoked))
            if not force:
                raise AppInUse(int(ledger), int(holds))
            await con.execute(
                "UPDATE apps SET status = 'deleted', updated_at = wattfare_now() "
                "WHERE id = $1",
                found.id,
            )
            revoked = await _revoke_where(con, "app_id", found.id)
            await _cut_open_streams(con, found.id)
            await _event(con, "app_disabled", found.id)
            await con.execute(
                "DELETE FROM consents WHERE app_id = $1 AND used_at IS NULL", found.id
            )
            deleted = await _find(con, found.id)
        assert deleted is not None
        return AppDeletion(app=deleted, erased=False, revoked=revoked)

    # -- accounts ---------------------------------------------------------------------------

    async def list_accounts(self, period: str) -> list[AccountSummary]:
        columns = prefixed(ACCOUNT_COLUMNS, "a")
        rows = await self.pool.fetch(
            f"SELECT {columns}, "  # noqa: S608 (constant columns)
            "(SELECT COUNT(*) FROM connections c WHERE c.account_id = a.id), "
            "COALESCE(s.settled_nano, 0), COALESCE(s.held_nano, 0) "
            "FROM accounts a LEFT JOIN account_spend s "
            "ON s.account_id = a.id AND s.period = $1 ORDER BY a.created_at, a.email",
            period,
        )
        return [
            AccountSummary(
                account=account_of(r), connections=int(r[6]), settled_nano=int(r[7]),
                held_nano=int(r[8]), period=period,
            )
            for r in rows
        ]

    async def set_account_status(
        self, email: str, status: Literal["active", "disabled"]
    ) -> tuple[Account, int] | None:
        async with self.pool.acquire() as con, con.transaction():
            row = await con.fetchrow(
                f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE email = $1 FOR UPDATE",  # noqa: S608 (constant columns)
                email,
            )
            if row is None or account_of(row).status == "deleted":
                return None
            account = account_of(row)
            updated = await con.fetchrow(
                "UPDATE accounts SET status = $1, updated_at = wattfare_now() "  # noqa: S608 (constant columns)
                f"WHERE id = $2 RETURNING {ACCOUNT_COLUMNS}",
                status, account.id,
            )
            revoked = 0
            if status == "disabled":
                await con.execute("DELETE FROM web_sessions WHERE account_id = $1", account.id)
                revoked = await _revoke_where(con, "account_id", account.id)
        assert updated is not None
        return account_of(updated), revoked

    # -- the usage report -------------------------------------------------------------------

    async def usage_count(self, query: UsageQuery) -> int:
        where, args = _usage_filter(query, 1)
        count = await self.pool.fetchval(
            f"SELECT COUNT(*) FROM ledger WHERE true{where}", *args  # noqa: S608 (constant conditions)
        )
        return int(count)

    async def usage(self, query: UsageQuery, *, after_id: int, limit: int) -> UsagePage:
        where, args = _usage_filter(query, 3)
        rows = await self.pool.fetch(
            "SELECT period, app_id, user_id, model, COUNT(*), SUM(prompt_tokens), "  # noqa: S608 (constant conditions)
            "SUM(completion_tokens), SUM(cost_nano), SUM(upstream_cost_nano), "
            "SUM(operator_nano), MAX(id) FROM "
            f"(SELECT * FROM ledger WHERE id > $1{where} ORDER BY id LIMIT $2) AS page "
            "GROUP BY period, app_id, user_id, model ORDER BY MAX(id)",
            after_id, limit, *args,
        )
        return UsagePage(
            rows=[UsageSum(*(r[:4]), *(int(v) for v in r[4:10])) for r in rows],
            scanned=sum(int(r[4]) for r in rows),
            last_id=max((int(r[10]) for r in rows), default=0),
        )
