"""What a row of the stores' shared column lists means, for every backend.

The SQL differs between backends (placeholders, locking); the columns a query selects
for a record and the record built from such a row do not. Both live here once, so the
two backends cannot drift (an account's status, say, is read from its row in one place).
A row is anything indexable by position: an ``sqlite3`` tuple, an ``asyncpg.Record``.
"""

from __future__ import annotations

from typing import Any, Protocol

from gateway.store.base import (
    DELETED_PASSWORD_HASH,
    Account,
    AccountConnection,
    FundingAttempt,
    FundingSource,
)

ACCOUNT_COLUMNS = "id, email, password_hash, budget_nano, created_at, status"
CONSENT_COLUMNS = "app_id, user_id, cap_nano, origin, created_at, expires_at, used_at, outcome"
SOURCE_COLUMNS = (
    "id, account_id, provider, label, kek_id, wrapped_key, ciphertext, created_at, "
    "problem, problem_at"
)
ATTEMPT_COLUMNS = (
    "state_hash, session_hash, account_id, provider, verifier_hash, return_to, created_at, "
    "expires_at"
)


class Row(Protocol):
    def __getitem__(self, index: int, /) -> Any: ...


def prefixed(columns: str, alias: str) -> str:
    """``columns`` qualified by a table alias, for a join."""
    return ", ".join(f"{alias}.{c.strip()}" for c in columns.split(","))


def account_of(row: Row) -> Account:
    """An :class:`Account` from a row of ``ACCOUNT_COLUMNS``."""
    return Account(
        id=row[0], email=row[1], password_hash=row[2], budget_nano=row[3], created_at=row[4],
        status=(
            "deleted" if row[2] == DELETED_PASSWORD_HASH
            else "disabled" if row[5] == "disabled" else "active"
        ),
    )


def source_of(row: Row) -> FundingSource:
    """A :class:`FundingSource` from a row of ``SOURCE_COLUMNS``."""
    return FundingSource(
        id=row[0], account_id=row[1], provider=row[2], label=row[3], kek_id=row[4],
        wrapped_key=bytes(row[5]), ciphertext=bytes(row[6]), created_at=row[7],
        problem=row[8], problem_at=row[9],
    )


def attempt_of(row: Row) -> FundingAttempt:
    """A :class:`FundingAttempt` from a row of ``ATTEMPT_COLUMNS``."""
    return FundingAttempt(
        state_hash=bytes(row[0]), session_hash=bytes(row[1]), account_id=row[2],
        provider=row[3], verifier_hash=bytes(row[4]), return_to=row[5],
        created_at=row[6], expires_at=row[7],
    )


def account_connection_of(row: Row, period: str) -> AccountConnection:
    """An :class:`AccountConnection` from a row of (app id, app name, app mode, user id,
    status, cap, settled, held, updated at) in ``period``."""
    return AccountConnection(
        app_id=row[0], app_name=row[1], app_mode=row[2], user_id=row[3], status=row[4],
        cap_nano=row[5], settled_nano=row[6], held_nano=row[7], period=period,
        updated_at=row[8],
    )
