"""The SQLite store's operator side: an app's status, origins and deletion, the account
list and an account's status, and the ledger's usage report.

:class:`AdminMixin` is part of :class:`gateway.store.sqlite.SQLiteStore`, in its own
module to keep each file readable in one sitting.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any, Literal, TypeVar

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
from gateway.store.sqlite_accounts import record_event, transaction

T = TypeVar("T")

APP_COLUMNS = (
    "id, name, mode, publishable_key, secret_hash, key_version, origins, status, created_at"
)


def app_of(row: sqlite3.Row | tuple[Any, ...]) -> App:
    """An :class:`App` from a row of ``APP_COLUMNS``."""
    return App(
        id=row[0],
        name=row[1],
        mode=row[2],
        publishable_key=row[3],
        secret_hash=bytes(row[4]),
        key_version=row[5],
        origins=tuple(orjson.loads(row[6])),
        status=row[7],
        created_at=row[8],
    )


def _find(conn: sqlite3.Connection, app: str) -> App | None:
    row = conn.execute(
        f"SELECT {APP_COLUMNS} FROM apps WHERE id = ? OR name = ? "  # noqa: S608 (constant columns)
        "ORDER BY id = ? DESC LIMIT 1",
        (app, app, app),
    ).fetchone()
    return None if row is None else app_of(row)


def _editable(conn: sqlite3.Connection, app: str) -> App:
    found = _find(conn, app)
    if found is None:
        raise UnknownApp(app)
    if found.status == "deleted":
        raise AppDeleted(found.id)
    return found


def _cut_open_streams(conn: sqlite3.Connection, *, app_id: str, now: int) -> None:
    """Post a revocation event for each of the app's connections with a request in
    flight: every process cuts those streams (a stream always has a hold)."""
    conn.execute(
        "INSERT INTO events (kind, app_id, user_id, created_at) "
        "SELECT DISTINCT 'revoked', app_id, user_id, ? FROM holds WHERE app_id = ?",
        (now, app_id),
    )


def _revoke_where(conn: sqlite3.Connection, where: str, args: tuple[Any, ...], now: int) -> int:
    """Revoke the connected connections matching ``where`` (a constant SQL condition),
    posting one event each; how many."""
    keys = conn.execute(
        f"SELECT app_id, user_id FROM connections WHERE status = 'connected' AND {where}",  # noqa: S608 (constant condition)
        args,
    ).fetchall()
    conn.execute(
        "UPDATE connections SET status = 'revoked', updated_at = ? "  # noqa: S608 (constant condition)
        f"WHERE status = 'connected' AND {where}",
        (now, *args),
    )
    conn.executemany(
        "INSERT INTO events (kind, app_id, user_id, created_at) VALUES ('revoked', ?, ?, ?)",
        [(app_id, user_id, now) for app_id, user_id in keys],
    )
    return len(keys)


def _usage_filter(query: UsageQuery) -> tuple[str, list[Any]]:
    conditions: list[str] = []
    args: list[Any] = []
    for column, value in (
        ("period", query.period), ("app_id", query.app_id),
        ("user_id", query.user_id), ("model", query.model),
    ):
        if value is not None:
            conditions.append(f"{column} = ?")
            args.append(value)
    return "".join(f" AND {c}" for c in conditions), args


class AdminMixin:
    """The operator's queries and actions for the SQLite store."""

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError  # provided by SQLiteStore

    # -- apps -------------------------------------------------------------------------------

    async def find_app(self, app: str) -> App | None:
        return await self._run(lambda c: _find(c, app))

    async def app_stats(self, app_id: str, period: str) -> AppStats:
        def read(conn: sqlite3.Connection) -> AppStats:
            connected, revoked = conn.execute(
                "SELECT COALESCE(SUM(status = 'connected'), 0), "
                "COALESCE(SUM(status = 'revoked'), 0) FROM connections WHERE app_id = ?",
                (app_id,),
            ).fetchone()
            holds = conn.execute(
                "SELECT COUNT(*) FROM holds WHERE app_id = ?", (app_id,)
            ).fetchone()[0]
            ledger = conn.execute(
                "SELECT COUNT(*) FROM ledger WHERE app_id = ?", (app_id,)
            ).fetchone()[0]
            settled, held = conn.execute(
                "SELECT COALESCE(SUM(settled_nano), 0), COALESCE(SUM(held_nano), 0) "
                "FROM spend WHERE app_id = ? AND period = ?",
                (app_id, period),
            ).fetchone()
            return AppStats(
                connected=connected, revoked=revoked, open_holds=holds, ledger_rows=ledger,
                settled_nano=settled, held_nano=held, period=period,
            )

        return await self._run(read)

    async def set_app_status(self, app: str, status: Literal["active", "disabled"]) -> App:
        def body(conn: sqlite3.Connection) -> App:
            found = _editable(conn, app)
            now = int(time.time())
            conn.execute(
                "UPDATE apps SET status = ?, updated_at = ? WHERE id = ?",
                (status, now, found.id),
            )
            if status != found.status:
                record_event(conn, "app_disabled", found.id, "", now)
            if status == "disabled" and found.status != "disabled":
                _cut_open_streams(conn, app_id=found.id, now=now)
            refreshed = _find(conn, found.id)
            assert refreshed is not None
            return refreshed

        return await self._run(lambda c: transaction(c, lambda: body(c)))

    async def update_app_origins(
        self, app: str, *, add: tuple[str, ...] = (), remove: tuple[str, ...] = ()
    ) -> App:
        def body(conn: sqlite3.Connection) -> App:
            found = _editable(conn, app)
            origins = [o for o in found.origins if o not in remove]
            origins += [o for o in dict.fromkeys(add) if o not in origins]
            conn.execute(
                "UPDATE apps SET origins = ?, updated_at = ? WHERE id = ?",
                (orjson.dumps(origins).decode(), int(time.time()), found.id),
            )
            refreshed = _find(conn, found.id)
            assert refreshed is not None
            return refreshed

        return await self._run(lambda c: transaction(c, lambda: body(c)))

    async def delete_app(self, app: str, *, force: bool) -> AppDeletion:
        def body(conn: sqlite3.Connection) -> AppDeletion:
            found = _find(conn, app)
            if found is None:
                raise UnknownApp(app)
            ledger = conn.execute(
                "SELECT COUNT(*) FROM ledger WHERE app_id = ?", (found.id,)
            ).fetchone()[0]
            holds = conn.execute(
                "SELECT COUNT(*) FROM holds WHERE app_id = ?", (found.id,)
            ).fetchone()[0]
            now = int(time.time())
            if not ledger and not holds:
                revoked = conn.execute(
                    "SELECT COUNT(*) FROM connections WHERE app_id = ? AND status = 'connected'",
                    (found.id,),
                ).fetchone()[0]
                for table in ("consents", "spend", "connections"):
                    conn.execute(f"DELETE FROM {table} WHERE app_id = ?", (found.id,))  # noqa: S608 (constant table names)
                conn.execute("DELETE FROM apps WHERE id = ?", (found.id,))
                record_event(conn, "app_disabled", found.id, "", now)
                return AppDeletion(app=found, erased=True, revoked=revoked)
            if not force:
                raise AppInUse(ledger, holds)
            conn.execute(
                "UPDATE apps SET status = 'deleted', updated_at = ? WHERE id = ?",
                (now, found.id),
            )
            revoked = _revoke_where(conn, "app_id = ?", (found.id,), now)
            _cut_open_streams(conn, app_id=found.id, now=now)
            record_event(conn, "app_disabled", found.id, "", now)
            conn.execute(
                "DELETE FROM consents WHERE app_id = ? AND used_at IS NULL", (found.id,)
            )
            deleted = _find(conn, found.id)
            assert deleted is not None
            return AppDeletion(app=deleted, erased=False, revoked=revoked)

        return await self._run(lambda c: transaction(c, lambda: body(c)))

    # -- accounts ---------------------------------------------------------------------------

    async def list_accounts(self, period: str) -> list[AccountSummary]:
        columns = prefixed(ACCOUNT_COLUMNS, "a")
        rows = await self._run(
            lambda c: c.execute(
                f"SELECT {columns}, "  # noqa: S608 (constant columns)
                "(SELECT COUNT(*) FROM connections c WHERE c.account_id = a.id), "
                "COALESCE(s.settled_nano, 0), COALESCE(s.held_nano, 0) "
                "FROM accounts a LEFT JOIN account_spend s "
                "ON s.account_id = a.id AND s.period = ? ORDER BY a.created_at, a.email",
                (period,),
            ).fetchall()
        )
        return [
            AccountSummary(
                account=account_of(r[:6]), connections=r[6], settled_nano=r[7],
                held_nano=r[8], period=period,
            )
            for r in rows
        ]

    async def set_account_status(
        self, email: str, status: Literal["active", "disabled"]
    ) -> tuple[Account, int] | None:
        def body(conn: sqlite3.Connection) -> tuple[Account, int] | None:
            now = int(time.time())
            row = conn.execute(
                f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE email = ?", (email,)  # noqa: S608 (constant columns)
            ).fetchone()
            if row is None or account_of(row).status == "deleted":
                return None
            account = account_of(row)
            conn.execute(
                "UPDATE accounts SET status = ?, updated_at = ? WHERE id = ?",
                (status, now, account.id),
            )
            revoked = 0
            if status == "disabled":
                conn.execute("DELETE FROM web_sessions WHERE account_id = ?", (account.id,))
                revoked = _revoke_where(conn, "account_id = ?", (account.id,), now)
            updated = account_of(
                conn.execute(
                    f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = ?",  # noqa: S608 (constant columns)
                    (account.id,),
                ).fetchone()
            )
            return updated, revoked

        return await self._run(lambda c: transaction(c, lambda: body(c)))

    # -- the usage report -------------------------------------------------------------------

    async def usage_count(self, query: UsageQuery) -> int:
        where, args = _usage_filter(query)
        row = await self._run(
            lambda c: c.execute(
                f"SELECT COUNT(*) FROM ledger WHERE 1 = 1{where}", args  # noqa: S608 (constant conditions)
            ).fetchone()
        )
        return int(row[0])

    async def usage(self, query: UsageQuery, *, after_id: int, limit: int) -> UsagePage:
        where, args = _usage_filter(query)
        rows = await self._run(
            lambda c: c.execute(
                "SELECT period, app_id, user_id, model, COUNT(*), SUM(prompt_tokens), "  # noqa: S608 (constant conditions)
                "SUM(completion_tokens), SUM(cost_nano), SUM(upstream_cost_nano), "
                "SUM(operator_nano), MAX(id) FROM "
                f"(SELECT * FROM ledger WHERE id > ?{where} ORDER BY id LIMIT ?) "
                "GROUP BY period, app_id, user_id, model",
                (after_id, *args, limit),
            ).fetchall()
        )
        return UsagePage(
            rows=[UsageSum(*(r[:4]), *(int(v) for v in r[4:10])) for r in rows],
            scanned=sum(int(r[4]) for r in rows),
            last_id=max((int(r[10]) for r in rows), default=0),
        )
