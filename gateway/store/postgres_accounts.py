"""The PostgreSQL store's end-user side: accounts, browser sessions, consent links, the
dashboard's queries, and the gateway's secrets.

:class:`AccountsMixin` is part of :class:`gateway.store.postgres.PostgresStore`.
"""

from __future__ import annotations

import secrets
import uuid

import asyncpg

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


class AccountsMixin:
    """Accounts, sessions, consent links and dashboard queries for the PostgreSQL store."""

    @property
    def pool(self) -> asyncpg.Pool:
        raise NotImplementedError  # provided by PostgresStore

    # -- accounts ---------------------------------------------------------------------------

    async def create_account(
        self, *, email: str, password_hash: str, budget_nano: int
    ) -> Account:
        try:
            row = await self.pool.fetchrow(
                "INSERT INTO accounts (id, email, password_hash, budget_nano, created_at, "  # noqa: S608 (constant columns)
                "updated_at) VALUES ($1, $2, $3, $4, wattfare_now(), wattfare_now()) "
                f"RETURNING {ACCOUNT_COLUMNS}",
                "acct_" + uuid.uuid4().hex[:20], email, password_hash, budget_nano,
            )
        except asyncpg.UniqueViolationError:
            raise AccountExists(email) from None
        assert row is not None
        return account_of(row)

    async def account_by_email(self, email: str) -> Account | None:
        row = await self.pool.fetchrow(
            f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE email = $1", email  # noqa: S608 (constant columns)
        )
        return None if row is None else account_of(row)

    async def set_account_budget(self, email: str, budget_nano: int) -> Account | None:
        row = await self.pool.fetchrow(
            "UPDATE accounts SET budget_nano = $2, updated_at = wattfare_now() "  # noqa: S608 (constant columns)
            f"WHERE email = $1 RETURNING {ACCOUNT_COLUMNS}",
            email, budget_nano,
        )
        return None if row is None else account_of(row)

    async def account_spend(self, account_id: str, period: str) -> AccountSpend:
        row = await self.pool.fetchrow(
            "SELECT a.budget_nano, COALESCE(s.settled_nano, 0), COALESCE(s.held_nano, 0) "
            "FROM accounts a LEFT JOIN account_spend s "
            "ON s.account_id = a.id AND s.period = $2 WHERE a.id = $1",
            account_id, period,
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
        async with self.pool.acquire() as con, con.transaction():
            # Expired sessions are swept here rather than by a background job.
            await con.execute("DELETE FROM web_sessions WHERE expires_at < wattfare_now()")
            await con.execute(
                "INSERT INTO web_sessions (token_hash, account_id, created_at, expires_at) "
                "VALUES ($1, $2, wattfare_now(), $3)",
                token_hash, account_id, expires_at,
            )

    async def account_by_web_session(self, token_hash: bytes, *, now: int) -> Account | None:
        row = await self.pool.fetchrow(
            "SELECT a.id, a.email, a.password_hash, a.budget_nano, a.created_at, a.status "
            "FROM web_sessions w JOIN accounts a ON a.id = w.account_id "
            "WHERE w.token_hash = $1 AND w.expires_at > $2 AND a.status = 'active'",
            token_hash, now,
        )
        return None if row is None else account_of(row)

    async def delete_web_session(self, token_hash: bytes) -> None:
        await self.pool.execute("DELETE FROM web_sessions WHERE token_hash = $1", token_hash)

    async def end_web_sessions(self, account_id: str) -> int:
        done = await self.pool.execute(
            "DELETE FROM web_sessions WHERE account_id = $1", account_id
        )
        return int(done.split()[-1])

    async def set_password(self, account_id: str, password_hash: str) -> int:
        async with self.pool.acquire() as con, con.transaction():
            await con.execute(
                "UPDATE accounts SET password_hash = $2, updated_at = wattfare_now() "
                "WHERE id = $1",
                account_id, password_hash,
            )
            done = await con.execute("DELETE FROM web_sessions WHERE account_id = $1",
                                     account_id)
        return int(done.split()[-1])

    async def delete_account(self, account_id: str) -> list[tuple[str, str]]:
        async with self.pool.acquire() as con, con.transaction():
            revoked = await con.fetch(
                "UPDATE connections SET status = 'revoked', updated_at = wattfare_now() "
                "WHERE account_id = $1 AND status <> 'revoked' RETURNING app_id, user_id",
                account_id,
            )
            await con.executemany(
                "INSERT INTO events (kind, app_id, user_id, created_at) "
                "VALUES ('revoked', $1, $2, wattfare_now())",
                [(r[0], r[1]) for r in revoked],
            )
            await con.execute("DELETE FROM web_sessions WHERE account_id = $1", account_id)
            # The person's own upstream key goes with the account (sealed or not).
            await con.execute("DELETE FROM funding_sources WHERE account_id = $1", account_id)
            await con.execute("DELETE FROM funding_attempts WHERE account_id = $1", account_id)
            await con.execute(
                "UPDATE accounts SET email = $2, password_hash = $3, "
                "updated_at = wattfare_now() WHERE id = $1",
                account_id, deleted_email(account_id), DELETED_PASSWORD_HASH,
            )
        return sorted((str(r[0]), str(r[1])) for r in revoked)

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
        async with self.pool.acquire() as con, con.transaction():
            # Links a day past their expiry are of no use, even to explain themselves.
            await con.execute("DELETE FROM consents WHERE expires_at < wattfare_now() - 86400")
            await con.execute(
                "INSERT INTO consents (id_hash, app_id, user_id, cap_nano, origin, "
                "created_at, expires_at) VALUES ($1, $2, $3, $4, $5, wattfare_now(), $6)",
                id_hash, app_id, user_id, cap_nano, origin, expires_at,
            )

    async def consent(self, id_hash: bytes) -> Consent | None:
        row = await self.pool.fetchrow(
            f"SELECT {CONSENT_COLUMNS} FROM consents WHERE id_hash = $1", id_hash  # noqa: S608 (constant columns)
        )
        return None if row is None else Consent(*row)

    async def finish_consent(
        self, id_hash: bytes, *, approve: bool, account_id: str | None, cap_nano: int, now: int
    ) -> Consent:
        async with self.pool.acquire() as con, con.transaction():
            row = await con.fetchrow(
                f"SELECT {CONSENT_COLUMNS} FROM consents WHERE id_hash = $1 FOR UPDATE",  # noqa: S608 (constant columns)
                id_hash,
            )
            if row is None:
                raise ConsentGone("unknown")
            consent = Consent(*row)
            if consent.used_at is not None:
                raise ConsentGone("used")
            if consent.expires_at <= now:
                raise ConsentGone("expired")
            outcome = "approved" if approve else "denied"
            await con.execute(
                "UPDATE consents SET used_at = $2, outcome = $3 WHERE id_hash = $1",
                id_hash, now, outcome,
            )
            if approve:
                # A test-mode approval (no account) keeps whatever account the connection
                # had; a person's approval makes it theirs.
                await con.execute(
                    "INSERT INTO connections (app_id, user_id, cap_nano, status, created_at, "
                    "updated_at, account_id) VALUES ($1, $2, $3, 'connected', $4, $4, $5) "
                    "ON CONFLICT (app_id, user_id) DO UPDATE SET "
                    "cap_nano = excluded.cap_nano, status = 'connected', "
                    "updated_at = excluded.updated_at, "
                    "account_id = COALESCE(excluded.account_id, connections.account_id)",
                    consent.app_id, consent.user_id, cap_nano, now, account_id,
                )
                await con.execute(
                    "INSERT INTO events (kind, app_id, user_id, created_at) "
                    "VALUES ('connected', $1, $2, wattfare_now())",
                    consent.app_id, consent.user_id,
                )
        return Consent(
            app_id=consent.app_id, user_id=consent.user_id, cap_nano=cap_nano,
            origin=consent.origin, created_at=consent.created_at,
            expires_at=consent.expires_at, used_at=now, outcome=outcome,
        )

    # -- the dashboard ----------------------------------------------------------------------

    async def account_connections(self, account_id: str, period: str) -> list[AccountConnection]:
        rows = await self.pool.fetch(
            "SELECT c.app_id, a.name, a.mode, c.user_id, c.status, c.cap_nano, "
            "COALESCE(s.settled_nano, 0), COALESCE(s.held_nano, 0), c.updated_at "
            "FROM connections c JOIN apps a ON a.id = c.app_id "
            "LEFT JOIN spend s ON s.app_id = c.app_id AND s.user_id = c.user_id "
            "AND s.period = $2 WHERE c.account_id = $1 "
            "ORDER BY c.status = 'revoked', a.name, c.user_id",
            account_id, period,
        )
        return [account_connection_of(r, period) for r in rows]

    async def set_connection_cap(
        self, account_id: str, *, app_id: str, user_id: str, cap_nano: int
    ) -> bool:
        count = await self.pool.fetchval(
            "WITH u AS (UPDATE connections SET cap_nano = $4, updated_at = wattfare_now() "
            "  WHERE app_id = $2 AND user_id = $3 AND account_id = $1 RETURNING app_id), "
            "e AS (INSERT INTO events (kind, app_id, user_id, created_at) "
            "  SELECT 'cap', $2, $3, wattfare_now() FROM u RETURNING 1) "
            "SELECT count(*) FROM e",
            account_id, app_id, user_id, cap_nano,
        )
        return bool(count)

    async def account_requests(self, account_id: str, *, limit: int = 20) -> list[RequestSummary]:
        rows = await self.pool.fetch(
            "SELECT app_id, model, prompt_tokens, completion_tokens, cost_nano, status, "
            "created_at, funded_by FROM ledger WHERE account_id = $1 "
            "ORDER BY id DESC LIMIT $2",
            account_id, limit,
        )
        return [RequestSummary(*r) for r in rows]

    async def account_daily_spend(
        self, account_id: str, *, since: int
    ) -> list[tuple[str, str, int]]:
        rows = await self.pool.fetch(
            "SELECT app_id, to_char(to_timestamp(created_at) AT TIME ZONE 'UTC', "
            "'YYYY-MM-DD') AS day, sum(cost_nano) FROM ledger "
            "WHERE account_id = $1 AND created_at >= $2 GROUP BY app_id, day ORDER BY day",
            account_id, since,
        )
        return [(r[0], r[1], int(r[2])) for r in rows]

    async def account_usage(
        self, account_id: str, *, after: int = 0, limit: int = 1000, period: str | None = None
    ) -> list[UsageRow]:
        rows = await self.pool.fetch(
            "SELECT l.id, l.request_id, l.created_at, l.app_id, COALESCE(a.name, ''), "
            "l.user_id, l.period, l.model, l.prompt_tokens, l.completion_tokens, "
            "l.cost_nano, l.status, l.funded_by FROM ledger l "
            "LEFT JOIN apps a ON a.id = l.app_id "
            "WHERE l.account_id = $1 AND l.id > $2 AND ($3::text IS NULL OR l.period = $3) "
            "ORDER BY l.id LIMIT $4",
            account_id, after, period, limit,
        )
        return [UsageRow(*r) for r in rows]

    # -- secrets ----------------------------------------------------------------------------

    async def secret(self, name: str, *, size: int = 32) -> bytes:
        # Insert if missing, then read: nodes starting together agree on one value.
        await self.pool.execute(
            "INSERT INTO secrets (name, value, created_at) VALUES ($1, $2, wattfare_now()) "
            "ON CONFLICT (name) DO NOTHING",
            name, secrets.token_bytes(size),
        )
        value = await self.pool.fetchval("SELECT value FROM secrets WHERE name = $1", name)
        return bytes(value)
