"""The PostgreSQL store's funding half: people's own funding sources (their upstream
key, kept only sealed) and the connect attempts under way.

:class:`FundingMixin` is part of :class:`gateway.store.postgres.PostgresStore`.
"""

from __future__ import annotations

import hmac

import asyncpg

from gateway.store.base import FundingAttempt, FundingSource
from gateway.store.rows import (
    ATTEMPT_COLUMNS,
    SOURCE_COLUMNS,
    attempt_of,
    prefixed,
    source_of,
)


class FundingMixin:
    """Funding sources and connect attempts for the PostgreSQL store."""

    @property
    def pool(self) -> asyncpg.Pool:
        raise NotImplementedError  # provided by PostgresStore

    async def save_funding_source(self, source: FundingSource) -> None:
        async with self.pool.acquire() as con, con.transaction():
            await con.execute("DELETE FROM funding_sources WHERE account_id = $1",
                              source.account_id)
            await con.execute(
                f"INSERT INTO funding_sources ({SOURCE_COLUMNS}) "  # noqa: S608 (constant columns)
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                source.id, source.account_id, source.provider, source.label, source.kek_id,
                source.wrapped_key, source.ciphertext, source.created_at, source.problem,
                source.problem_at,
            )

    async def funding_source(self, account_id: str) -> FundingSource | None:
        row = await self.pool.fetchrow(
            f"SELECT {SOURCE_COLUMNS} FROM funding_sources WHERE account_id = $1",  # noqa: S608 (constant columns)
            account_id,
        )
        return None if row is None else source_of(row)

    async def connection_funding(self, app_id: str, user_id: str) -> FundingSource | None:
        columns = prefixed(SOURCE_COLUMNS, "f")
        row = await self.pool.fetchrow(
            f"SELECT {columns} FROM connections c "  # noqa: S608 (constant columns)
            "JOIN funding_sources f ON f.account_id = c.account_id "
            "WHERE c.app_id = $1 AND c.user_id = $2",
            app_id, user_id,
        )
        return None if row is None else source_of(row)

    async def delete_funding_source(self, account_id: str) -> bool:
        done = await self.pool.execute(
            "DELETE FROM funding_sources WHERE account_id = $1", account_id
        )
        return done != "DELETE 0"

    async def set_funding_problem(
        self, source_id: str, *, problem: str | None, at: int
    ) -> None:
        await self.pool.execute(
            "UPDATE funding_sources SET problem = $2, problem_at = $3 WHERE id = $1",
            source_id, problem, at if problem is not None else None,
        )

    async def funding_sources(self) -> list[FundingSource]:
        rows = await self.pool.fetch(
            f"SELECT {SOURCE_COLUMNS} FROM funding_sources ORDER BY created_at"  # noqa: S608 (constant columns)
        )
        return [source_of(r) for r in rows]

    async def rewrap_funding_source(
        self, source_id: str, *, old_kek_id: str, kek_id: str, wrapped_key: bytes
    ) -> bool:
        done = await self.pool.execute(
            "UPDATE funding_sources SET kek_id = $3, wrapped_key = $4 "
            "WHERE id = $1 AND kek_id = $2",
            source_id, old_kek_id, kek_id, wrapped_key,
        )
        return done != "UPDATE 0"

    async def create_funding_attempt(self, attempt: FundingAttempt) -> None:
        async with self.pool.acquire() as con, con.transaction():
            # Attempts past their expiry are swept here rather than by a background job.
            await con.execute("DELETE FROM funding_attempts WHERE expires_at < $1",
                              attempt.created_at)
            await con.execute(
                f"INSERT INTO funding_attempts ({ATTEMPT_COLUMNS}) "  # noqa: S608 (constant columns)
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                attempt.state_hash, attempt.session_hash, attempt.account_id,
                attempt.provider, attempt.verifier_hash, attempt.return_to,
                attempt.created_at, attempt.expires_at,
            )

    async def take_funding_attempt(
        self, state_hash: bytes, *, session_hash: bytes
    ) -> FundingAttempt | None:
        async with self.pool.acquire() as con, con.transaction():
            row = await con.fetchrow(
                f"SELECT {ATTEMPT_COLUMNS} FROM funding_attempts WHERE state_hash = $1 "  # noqa: S608 (constant columns)
                "FOR UPDATE",
                state_hash,
            )
            # Another browser's replay of the callback does not use up the attempt.
            if row is None or not hmac.compare_digest(bytes(row[1]), session_hash):
                return None
            await con.execute("DELETE FROM funding_attempts WHERE state_hash = $1", state_hash)
        return attempt_of(row)
