"""The SQLite store's funding half: people's own funding sources (their upstream key,
kept only sealed) and the connect attempts under way.

:class:`FundingMixin` is part of :class:`gateway.store.sqlite.SQLiteStore`.
"""

from __future__ import annotations

import hmac
import sqlite3
from collections.abc import Callable
from typing import TypeVar

from gateway.store.base import FundingAttempt, FundingSource
from gateway.store.rows import (
    ATTEMPT_COLUMNS,
    SOURCE_COLUMNS,
    attempt_of,
    prefixed,
    source_of,
)
from gateway.store.sqlite_accounts import transaction

T = TypeVar("T")

class FundingMixin:
    """Funding sources and connect attempts for the SQLite store."""

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError  # provided by SQLiteStore

    async def save_funding_source(self, source: FundingSource) -> None:
        def body(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM funding_sources WHERE account_id = ?", (source.account_id,))
            conn.execute(
                f"INSERT INTO funding_sources ({SOURCE_COLUMNS}) "  # noqa: S608 (constant columns)
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (source.id, source.account_id, source.provider, source.label, source.kek_id,
                 source.wrapped_key, source.ciphertext, source.created_at, source.problem,
                 source.problem_at),
            )

        await self._run(lambda c: transaction(c, lambda: body(c)))

    async def funding_source(self, account_id: str) -> FundingSource | None:
        row = await self._run(
            lambda c: c.execute(
                f"SELECT {SOURCE_COLUMNS} FROM funding_sources WHERE account_id = ?",  # noqa: S608 (constant columns)
                (account_id,),
            ).fetchone()
        )
        return None if row is None else source_of(row)

    async def connection_funding(self, app_id: str, user_id: str) -> FundingSource | None:
        columns = prefixed(SOURCE_COLUMNS, "f")
        row = await self._run(
            lambda c: c.execute(
                f"SELECT {columns} FROM connections c "  # noqa: S608 (constant columns)
                "JOIN funding_sources f ON f.account_id = c.account_id "
                "WHERE c.app_id = ? AND c.user_id = ?",
                (app_id, user_id),
            ).fetchone()
        )
        return None if row is None else source_of(row)

    async def delete_funding_source(self, account_id: str) -> bool:
        def delete(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("DELETE FROM funding_sources WHERE account_id = ?", (account_id,))
            return cur.rowcount > 0

        return await self._run(delete)

    async def set_funding_problem(
        self, source_id: str, *, problem: str | None, at: int
    ) -> None:
        await self._run(
            lambda c: c.execute(
                "UPDATE funding_sources SET problem = ?, problem_at = ? WHERE id = ?",
                (problem, at if problem is not None else None, source_id),
            )
        )

    async def funding_sources(self) -> list[FundingSource]:
        rows = await self._run(
            lambda c: c.execute(
                f"SELECT {SOURCE_COLUMNS} FROM funding_sources ORDER BY created_at"  # noqa: S608 (constant columns)
            ).fetchall()
        )
        return [source_of(r) for r in rows]

    async def rewrap_funding_source(
        self, source_id: str, *, old_kek_id: str, kek_id: str, wrapped_key: bytes
    ) -> bool:
        def update(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE funding_sources SET kek_id = ?, wrapped_key = ? "
                "WHERE id = ? AND kek_id = ?",
                (kek_id, wrapped_key, source_id, old_kek_id),
            )
            return cur.rowcount > 0

        return await self._run(update)

    async def create_funding_attempt(self, attempt: FundingAttempt) -> None:
        def insert(conn: sqlite3.Connection) -> None:
            # Attempts past their expiry are swept here rather than by a background job.
            conn.execute(
                "DELETE FROM funding_attempts WHERE expires_at < ?", (attempt.created_at,)
            )
            conn.execute(
                f"INSERT INTO funding_attempts ({ATTEMPT_COLUMNS}) "  # noqa: S608 (constant columns)
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (attempt.state_hash, attempt.session_hash, attempt.account_id,
                 attempt.provider, attempt.verifier_hash, attempt.return_to,
                 attempt.created_at, attempt.expires_at),
            )

        await self._run(lambda c: transaction(c, lambda: insert(c)))

    async def take_funding_attempt(
        self, state_hash: bytes, *, session_hash: bytes
    ) -> FundingAttempt | None:
        def take(conn: sqlite3.Connection) -> FundingAttempt | None:
            row = conn.execute(
                f"SELECT {ATTEMPT_COLUMNS} FROM funding_attempts WHERE state_hash = ?",  # noqa: S608 (constant columns)
                (state_hash,),
            ).fetchone()
            # Another browser's replay of the callback does not use up the attempt.
            if row is None or not hmac.compare_digest(bytes(row[1]), session_hash):
                return None
            conn.execute("DELETE FROM funding_attempts WHERE state_hash = ?", (state_hash,))
            return attempt_of(row)

        return await self._run(lambda c: transaction(c, lambda: take(c)))
