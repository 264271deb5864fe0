"""The SQLite store's end-user side: accounts, browser sessions, consent links, the
dashboard's queries, and the gateway's secrets.

:class:`AccountsMixin` is part of :class:`gateway.store.sqlite.SQLiteStore`; it lives in
its own module to keep each file readable in one sitting.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
import uuid
from collections.abc import Callable
from typing import TypeVar

from gateway.store.base import (
    DELETED_PASSWORD_HASH,
    Account,
    AccountConnection,
    AccountExists,
    AccountSpend,
    Consent,
    ConsentGone,
    RequestSummary,
    UsageRow,
    deleted_email,
)
from gateway.store.rows import (
    ACCOUNT_COLUMNS,
    CONSENT_COLUMNS,
    account_connection_of,
    account_of,
)

T = TypeVar("T")

def transaction(conn: sqlite3.Connection, body: Callable[[], T]) -> T:
    """``body`` between ``BEGIN IMMEDIATE`` and ``COMMIT`` (rolled back if it or the
    commit raises; SQLite may have rolled back already)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = body()
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def record_event(
    conn: sqlite3.Connection, kind: str, app_id: str, user_id: str, now: int
) -> None:
    """A change every process must act on (see :class:`gateway.store.base.ChangeFeed`),
    in the transaction that made it."""
    conn.execute(
        "INSERT INTO events (kind, app_id, user_id, created_at) VALUES (?, ?, ?, ?)",
        (kind, app_id, user_id, now),
    )


class AccountsMixin:
    """Accounts, sessions, consent links and dashboard queries for the SQLite store."""

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError  # provided by SQLiteStore

    # -- accounts ---------------------------------------------------------------------------

    async def create_account(
        self, *, email: str, password_hash: str, budget_nano: int
    ) -> Account:
        now = int(time.time())
        account = Account(
            id="acct_" + uuid.uuid4().hex[:20], email=email, password_hash=password_hash,
            budget_nano=budget_nano, created_at=now,
        )

        def insert(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO accounts (id, email, password_hash, budget_nano, created_at, "
                    "updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (account.id, email, password_hash, budget_nano, now, now),
                )
            except sqlite3.IntegrityError:
                raise AccountExists(email) from None

        await self._run(insert)
        return account

    async def account_by_email(self, email: str) -> Account | None:
        row = await self._run(
            lambda c: c.execute(
                f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE email = ?", (email,)  # noqa: S608 (constant columns)
            ).fetchone()
        )
        return None if row is None else account_of(row)

    async def set_account_budget(self, email: str, budget_nano: int) -> Account | None:
        def update(conn: sqlite3.Connection) -> Account | None:
            conn.execute(
                "UPDATE accounts SET budget_nano = ?, updated_at = ? WHERE email = ?",
                (budget_nano, int(time.time()), email),
            )
            row = conn.execute(
                f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE email = ?", (email,)  # noqa: S608 (constant columns)
            ).fetchone()
            return None if row is None else account_of(row)

        return await self._run(update)

    async def account_spend(self, account_id: str, period: str) -> AccountSpend:
        row = await self._run(
            lambda c: c.execute(
                "SELECT a.budget_nano, COALESCE(s.settled_nano, 0), COALESCE(s.held_nano, 0) "
                "FROM accounts a LEFT JOIN account_spend s "
                "ON s.account_id = a.id AND s.period = ? WHERE a.id = ?",
                (period, account_id),
            ).fetchone()
        )
        if row is None:
            return AccountSpend(budget_nano=0, settled_nano=0, held_nano=0, period=period)
        return AccountSpend(
            budget_nano=row[0], settled_nano=row[1], held_nano=row[2], period=period
        )

    # -- browser sessions -------------------------------------------------------------------

    async def create_web_session(
        self, token_hash: bytes, *, account_id: str, expires_at: int
    ) -> None:
        now = int(time.time())

        def insert(conn: sqlite3.Connection) -> None:
            # Expired sessions are swept here rather than by a background job.
            conn.execute("DELETE FROM web_sessions WHERE expires_at < ?", (now,))
            conn.execute(
                "INSERT INTO web_sessions (token_hash, account_id, created_at, expires_at) "
                "VALUES (?, ?, ?, ?)",
                (token_hash, account_id, now, expires_at),
            )

        await self._run(lambda c: transaction(c, lambda: insert(c)))

    async def account_by_web_session(self, token_hash: bytes, *, now: int) -> Account | None:
        row = await self._run(
            lambda c: c.execute(
                "SELECT a.id, a.email, a.password_hash, a.budget_nano, a.created_at, a.status "
                "FROM web_sessions w JOIN accounts a ON a.id = w.account_id "
                "WHERE w.token_hash = ? AND w.expires_at > ? AND a.status = 'active'",
                (token_hash, now),
            ).fetchone()
        )
        return None if row is None else account_of(row)

    async def delete_web_session(self, token_hash: bytes) -> None:
        await self._run(
            lambda c: c.execute("DELETE FROM web_sessions WHERE token_hash = ?", (token_hash,))
        )

    async def end_web_sessions(self, account_id: str) -> int:
        return await self._run(
            lambda c: c.execute(
                "DELETE FROM web_sessions WHERE account_id = ?", (account_id,)
            ).rowcount
        )

    async def set_password(self, account_id: str, password_hash: str) -> int:
        def body(conn: sqlite3.Connection) -> int:
            conn.execute(
                "UPDATE accounts SET password_hash = ?, updated_at = ? WHERE id = ?",
                (password_hash, int(time.time()), account_id),
            )
            cur = conn.execute("DELETE FROM web_sessions WHERE account_id = ?", (account_id,))
            return int(cur.rowcount)

        return await self._run(lambda c: transaction(c, lambda: body(c)))

    async def delete_account(self, account_id: str) -> list[tuple[str, str]]:
        def body(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            now = int(time.time())
            revoked = [
                (str(r[0]), str(r[1])) for r in conn.execute(
                    "SELECT app_id, user_id FROM connections "
                    "WHERE account_id = ? AND status != 'revoked'",
                    (account_id,),
                ).fetchall()
            ]
            conn.execute(
                "UPDATE connections SET status = 'revoked', updated_at = ? "
                "WHERE account_id = ? AND status != 'revoked'",
                (now, account_id),
            )
            conn.executemany(
                "INSERT INTO events (kind, app_id, user_id, created_at) "
                "VALUES ('revoked', ?, ?, ?)",
                [(app_id, user_id, now) for app_id, user_id in revoked],
            )
            conn.execute("DELETE FROM web_sessions WHERE account_id = ?", (account_id,))
            # The person's own upstream key goes with the account (sealed or not).
            conn.execute("DELETE FROM funding_sources WHERE account_id = ?", (account_id,))
            conn.execute("DELETE FROM funding_attempts WHERE account_id = ?", (account_id,))
            conn.execute(
                "UPDATE accounts SET email = ?, password_hash = ?, updated_at = ? WHERE id = ?",
                (deleted_email(account_id), DELETED_PASSWORD_HASH, now, account_id),
            )
            return revoked

        return await self._run(lambda c: transaction(c, lambda: body(c)))

    # -- consent links ----------------------------------------------------------------------

    async def create_consent(
        self,
        id_hash: bytes,
        *,
        app_id: str,
        user_id: str,
        cap_nano: int,
        origin: str,
        expires_at: int,
    ) -> None:
        now = int(time.time())

        def insert(conn: sqlite3.Connection) -> None:
            # Links a day past their expiry are of no use, even to explain themselves.
            conn.execute("DELETE FROM consents WHERE expires_at < ?", (now - 86_400,))
            conn.execute(
                "INSERT INTO consents (id_hash, app_id, user_id, cap_nano, origin, "
                "created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (id_hash, app_id, user_id, cap_nano, origin, now, expires_at),
            )

        await self._run(lambda c: transaction(c, lambda: insert(c)))

    async def consent(self, id_hash: bytes) -> Consent | None:
        row = await self._run(
            lambda c: c.execute(
                f"SELECT {CONSENT_COLUMNS} FROM consents WHERE id_hash = ?", (id_hash,)  # noqa: S608 (constant columns)
            ).fetchone()
        )
        return None if row is None else Consent(*row)

    async def finish_consent(
        self, id_hash: bytes, *, approve: bool, account_id: str | None, cap_nano: int, now: int
    ) -> Consent:
        def body(conn: sqlite3.Connection) -> Consent:
            row = conn.execute(
                f"SELECT {CONSENT_COLUMNS} FROM consents WHERE id_hash = ?", (id_hash,)  # noqa: S608 (constant columns)
            ).fetchone()
            if row is None:
                raise ConsentGone("unknown")
            consent = Consent(*row)
            if consent.used_at is not None:
                raise ConsentGone("used")
            if consent.expires_at <= now:
                raise ConsentGone("expired")
            outcome = "approved" if approve else "denied"
            conn.execute(
                "UPDATE consents SET used_at = ?, outcome = ? WHERE id_hash = ?",
                (now, outcome, id_hash),
            )
            if approve:
                record_event(conn, "connected", consent.app_id, consent.user_id, now)
                # A test-mode approval (no account) keeps whatever account the connection
                # had; a person's approval makes it theirs.
                conn.execute(
                    "INSERT INTO connections (app_id, user_id, cap_nano, status, created_at, "
                    "updated_at, account_id) VALUES (?, ?, ?, 'connected', ?, ?, ?) "
                    "ON CONFLICT (app_id, user_id) DO UPDATE SET "
                    "cap_nano = excluded.cap_nano, status = 'connected', "
                    "updated_at = excluded.updated_at, "
                    "account_id = COALESCE(excluded.account_id, connections.account_id)",
                    (consent.app_id, consent.user_id, cap_nano, now, now, account_id),
                )
            return Consent(
                app_id=consent.app_id, user_id=consent.user_id, cap_nano=cap_nano,
                origin=consent.origin, created_at=consent.created_at,
                expires_at=consent.expires_at, used_at=now, outcome=outcome,
            )

        return await self._run(lambda c: transaction(c, lambda: body(c)))

    # -- the dashboard ----------------------------------------------------------------------

    async def account_connections(self, account_id: str, period: str) -> list[AccountConnection]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT c.app_id, a.name, a.mode, c.user_id, c.status, c.cap_nano, "
                "COALESCE(s.settled_nano, 0), COALESCE(s.held_nano, 0), c.updated_at "
                "FROM connections c JOIN apps a ON a.id = c.app_id "
                "LEFT JOIN spend s ON s.app_id = c.app_id AND s.user_id = c.user_id "
                "AND s.period = ? WHERE c.account_id = ? "
                "ORDER BY c.status = 'revoked', a.name, c.user_id",
                (period, account_id),
            ).fetchall()
        )
        return [account_connection_of(r, period) for r in rows]

    async def set_connection_cap(
        self, account_id: str, *, app_id: str, user_id: str, cap_nano: int
    ) -> bool:
        def update(conn: sqlite3.Connection) -> bool:
            now = int(time.time())
            cur = conn.execute(
                "UPDATE connections SET cap_nano = ?, updated_at = ? "
                "WHERE app_id = ? AND user_id = ? AND account_id = ?",
                (cap_nano, now, app_id, user_id, account_id),
            )
            if cur.rowcount:
                record_event(conn, "cap", app_id, user_id, now)
            return cur.rowcount > 0

        return await self._run(lambda c: transaction(c, lambda: update(c)))

    async def account_requests(self, account_id: str, *, limit: int = 20) -> list[RequestSummary]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT app_id, model, prompt_tokens, completion_tokens, cost_nano, status, "
                "created_at, funded_by FROM ledger WHERE account_id = ? "
                "ORDER BY id DESC LIMIT ?",
                (account_id, limit),
            ).fetchall()
        )
        return [RequestSummary(*r) for r in rows]

    async def account_daily_spend(
        self, account_id: str, *, since: int
    ) -> list[tuple[str, str, int]]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT app_id, strftime('%Y-%m-%d', created_at, 'unixepoch') AS day, "
                "SUM(cost_nano) FROM ledger WHERE account_id = ? AND created_at >= ? "
                "GROUP BY app_id, day ORDER BY day",
                (account_id, since),
            ).fetchall()
        )
        return [(r[0], r[1], int(r[2])) for r in rows]

    async def account_usage(
        self, account_id: str, *, after: int = 0, limit: int = 1000, period: str | None = None
    ) -> list[UsageRow]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT l.id, l.request_id, l.created_at, l.app_id, COALESCE(a.name, ''), "
                "l.user_id, l.period, l.model, l.prompt_tokens, l.completion_tokens, "
                "l.cost_nano, l.status, l.funded_by FROM ledger l "
                "LEFT JOIN apps a ON a.id = l.app_id "
                "WHERE l.account_id = ? AND l.id > ? AND (? IS NULL OR l.period = ?) "
                "ORDER BY l.id LIMIT ?",
                (account_id, after, period, period, limit),
            ).fetchall()
        )
        return [UsageRow(*r) for r in rows]

    # -- secrets ----------------------------------------------------------------------------

    async def secret(self, name: str, *, size: int = 32) -> bytes:
        fresh = secrets.token_bytes(size)

        def get_or_create(conn: sqlite3.Connection) -> bytes:
            # INSERT OR IGNORE then SELECT: two processes starting together agree.
            conn.execute(
                "INSERT OR IGNORE INTO secrets (name, value, created_at) VALUES (?, ?, ?)",
                (name, fresh, int(time.time())),
            )
            row = conn.execute("SELECT value FROM secrets WHERE name = ?", (name,)).fetchone()
            return bytes(row[0])

        return await self._run(lambda c: transaction(c, lambda: get_or_create(c)))
