"""Moving up: a SQLite deployment's data into an empty PostgreSQL database
(``wattfare store copy --to postgres``).

What moves: apps and their keys' hashes, accounts, connections, each month's spend of
connections and accounts, the whole ledger, browser sessions, consent links and the
gateway's own secrets (so cookies stay valid). What does not: holds (none may be open:
the copy settles those a dead process left, and refuses while a gateway still runs on the
file), the instance registry and the change feed (both start afresh).

Everything is written in one PostgreSQL transaction, and the totals (row counts, every
money column's sum) are read back from the target and compared with the source's before
it commits: a copy either matches to the nano-USD or leaves the target as it was.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SQLiteStore

# Table -> columns, in an order that satisfies the foreign keys.
TABLES: dict[str, tuple[str, ...]] = {
    "apps": ("id", "name", "mode", "publishable_key", "secret_hash", "key_version", "origins",
             "status", "created_at", "updated_at"),
    "accounts": ("id", "email", "password_hash", "budget_nano", "created_at", "updated_at",
                 "status"),
    "connections": ("app_id", "user_id", "cap_nano", "status", "created_at", "updated_at",
                    "account_id"),
    "spend": ("app_id", "user_id", "period", "settled_nano", "held_nano"),
    "account_spend": ("account_id", "period", "settled_nano", "held_nano"),
    "ledger": ("id", "request_id", "app_id", "user_id", "period", "model", "prompt_tokens",
               "completion_tokens", "cost_nano", "upstream_cost_nano", "operator_nano",
               "cost_source", "status", "http_status", "error_code", "ttfb_ms", "duration_ms",
               "generation_id", "created_at", "account_id", "funded_by"),
    "web_sessions": ("token_hash", "account_id", "created_at", "expires_at"),
    "consents": ("id_hash", "app_id", "user_id", "cap_nano", "origin", "created_at",
                 "expires_at", "used_at", "outcome"),
    "secrets": ("name", "value", "created_at"),
    "funding_sources": ("id", "account_id", "provider", "label", "kek_id", "wrapped_key",
                        "ciphertext", "created_at", "problem", "problem_at"),
}

# The sums that must match, per table.
SUMS: dict[str, tuple[str, ...]] = {
    "connections": ("cap_nano",),
    "spend": ("settled_nano", "held_nano"),
    "account_spend": ("settled_nano", "held_nano"),
    "accounts": ("budget_nano",),
    "ledger": ("cost_nano", "upstream_cost_nano", "operator_nano", "prompt_tokens",
               "completion_tokens"),
}


class CopyError(Exception):
    """The copy cannot be made (or did not match); nothing was written."""


@dataclass(frozen=True, slots=True)
class CopyReport:
    rows: dict[str, int]
    totals: dict[str, int]
    reconciled_holds: int


def _totals_sql(table: str) -> str:
    sums = ", ".join(f"COALESCE(SUM({c}), 0)" for c in SUMS.get(table, ()))
    return f"SELECT COUNT(*){', ' + sums if sums else ''} FROM {table}"  # noqa: S608 (constant names)


def _read_source(path: str) -> tuple[dict[str, list[tuple[Any, ...]]], dict[str, tuple[int, ...]]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        with db:  # one read transaction: a consistent picture
            rows = {
                table: db.execute(
                    f"SELECT {', '.join(columns)} FROM {table}"  # noqa: S608 (constant names)
                ).fetchall()
                for table, columns in TABLES.items()
            }
            totals = {table: tuple(db.execute(_totals_sql(table)).fetchone()) for table in TABLES}
            holds = db.execute("SELECT COUNT(*) FROM holds").fetchone()[0]
            running = db.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
    finally:
        db.close()
    if running:
        raise CopyError(
            f"{running} gateway process(es) still run on this SQLite file: stop them first"
        )
    if holds:
        raise CopyError(
            f"{holds} hold(s) are open: stop every gateway on this SQLite file first "
            "(its requests must finish)"
        )
    return rows, totals


def _convert(table: str, row: tuple[Any, ...]) -> tuple[Any, ...]:
    # SQLite keeps blobs as bytes already, and numbers as int or float: what asyncpg
    # wants, but for REAL columns holding whole numbers (duration_ms written as 2.0).
    if table == "ledger":
        out = list(row)
        for i in (15, 16):  # ttfb_ms, duration_ms
            if out[i] is not None:
                out[i] = float(out[i])
        return tuple(out)
    return row


async def copy_sqlite_to_postgres(
    sqlite_path: str, url: str, *, schema: str | None = None
) -> CopyReport:
    """Copy the SQLite store at ``sqlite_path`` into the (empty) PostgreSQL database at
    ``url``; raises :class:`CopyError` with the reason when it cannot or did not match."""
    source = SQLiteStore(sqlite_path)
    await source.open()  # migrates an older file, and settles holds of dead processes
    try:
        reconciled = await source.reconcile_stale_holds()
    finally:
        await source.close()
    rows, totals = _read_source(sqlite_path)

    target = PostgresStore(url, schema=schema)
    con = await target._connect()
    try:
        await target._migrate(con)
        async with con.transaction():
            for table in TABLES:
                if await con.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})"):  # noqa: S608 (constant names)
                    raise CopyError(f"the target database is not empty (table {table})")
            for table, columns in TABLES.items():
                await con.copy_records_to_table(
                    table, records=[_convert(table, r) for r in rows[table]], columns=columns
                )
            # Identities continue after the copied rows.
            await con.execute(
                "SELECT setval(pg_get_serial_sequence('ledger', 'id'), "
                "COALESCE((SELECT max(id) FROM ledger), 0) + 1, false)"
            )
            for table in TABLES:
                found = tuple(await con.fetchrow(_totals_sql(table)) or ())
                if found != totals[table]:
                    raise CopyError(
                        f"{table}: the copy does not match the source "
                        f"(source {totals[table]}, copy {found}); nothing was written"
                    )
    except asyncpg.PostgresError as exc:
        raise CopyError(f"the target database refused the copy: {exc}") from exc
    finally:
        await con.close()
    money = {
        f"{table}.{column}": int(totals[table][1 + i])
        for table, columns in SUMS.items()
        for i, column in enumerate(columns)
    }
    return CopyReport(
        rows={table: int(totals[table][0]) for table in TABLES},
        totals=money,
        reconciled_holds=reconciled,
    )
