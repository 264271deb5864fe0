"""The SQLite store's metering half: connections, holds, settlement, deferred look-ups
and reconciliation.

:class:`MeteringMixin` is part of :class:`gateway.store.sqlite.SQLiteStore`. Each money
step reads its rows and writes what :mod:`gateway.store.rules` decides, inside one
transaction on the connection's thread (the request path's steps through the group
commit, see ``SQLiteStore._batched``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Collection
from typing import Any, TypeVar

import orjson

from gateway.store import rules
from gateway.store.base import (
    ORPHAN_AFTER_S,
    Charge,
    ConnectionState,
    Extension,
    Hold,
    HoldRequest,
    LedgerRow,
    PendingLookup,
    Settlement,
    period_of,
)
from gateway.store.sqlite_accounts import record_event, transaction

T = TypeVar("T")

_LEDGER_COLUMNS = (
    "request_id, app_id, user_id, period, model, prompt_tokens, completion_tokens, cost_nano, "
    "upstream_cost_nano, operator_nano, cost_source, status, http_status, error_code, ttfb_ms, "
    "duration_ms, generation_id, created_at, funded_by"
)


def account_pool(conn: sqlite3.Connection, account_id: str, period: str) -> rules.Pool:
    """The account's budget and this month's totals (an account that is gone has none)."""
    row = conn.execute(
        "SELECT a.budget_nano, COALESCE(s.settled_nano, 0), COALESCE(s.held_nano, 0) "
        "FROM accounts a LEFT JOIN account_spend s ON s.account_id = a.id AND s.period = ? "
        "WHERE a.id = ?",
        (period, account_id),
    ).fetchone()
    return rules.Pool(0, 0, 0) if row is None else rules.Pool(*row)


def _add_held(conn: sqlite3.Connection, key: tuple[str, str, str], account: str | None,
              amount: int) -> None:
    """Add ``amount`` to the held totals of the connection's month (and its account's)."""
    conn.execute(
        "INSERT INTO spend (app_id, user_id, period, settled_nano, held_nano) "
        "VALUES (?, ?, ?, 0, ?) ON CONFLICT (app_id, user_id, period) "
        "DO UPDATE SET held_nano = held_nano + excluded.held_nano",
        (*key, amount),
    )
    if account is not None:
        conn.execute(
            "INSERT INTO account_spend (account_id, period, settled_nano, held_nano) "
            "VALUES (?, ?, 0, ?) ON CONFLICT (account_id, period) "
            "DO UPDATE SET held_nano = held_nano + excluded.held_nano",
            (account, key[2], amount),
        )


def reconciled(hold: tuple[Any, ...], now: float) -> Settlement:
    """What a hold left by a lost request is charged: its last checkpoint, booked to the
    hold's own funder. ``hold`` is a row of ``_HOLD_FIELDS``: ``(id, request_id, model,
    used_nano, created_at, generation_id, funded_by)``."""
    hold_id, request_id, model, used, created, generation_id, funded_by = hold
    return Settlement(
        hold_id=hold_id, request_id=request_id, model=model, cost_nano=used,
        cost_source="reconciled", prompt_tokens=0, completion_tokens=0, status="reconciled",
        http_status=0, error_code="process_lost", ttfb_ms=None,
        duration_ms=float(max(0.0, now - created) * 1000), generation_id=generation_id,
        funded_by=funded_by,
    )


def settlement_json(s: Settlement) -> str:
    return orjson.dumps(s).decode()


def settlement_of(text: str) -> Settlement:
    return Settlement(**orjson.loads(text))


_HOLD_FIELDS = "id, request_id, model, used_nano, created_at, generation_id, funded_by"


class MeteringMixin:
    """Connections, holds, the ledger and reconciliation for the SQLite store."""

    instance_id: str
    clock: Callable[[], float]

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError  # provided by SQLiteStore

    async def _batched(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        raise NotImplementedError  # provided by SQLiteStore

    def _submit(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        raise NotImplementedError  # provided by SQLiteStore

    def _live_instances(self, conn: sqlite3.Connection) -> list[str]:
        raise NotImplementedError  # provided by SQLiteStore

    def _dead_instances(self, conn: sqlite3.Connection) -> list[str]:
        raise NotImplementedError  # provided by SQLiteStore

    # -- connections ----------------------------------------------------------------------

    async def connection(
        self, app_id: str, user_id: str, period: str | None = None
    ) -> ConnectionState | None:
        def read(conn: sqlite3.Connection) -> ConnectionState | None:
            month = period or period_of(self.clock())
            row = conn.execute(
                "SELECT c.status, c.cap_nano, COALESCE(s.settled_nano, 0), "
                "COALESCE(s.held_nano, 0), c.account_id FROM connections c LEFT JOIN spend s "
                "ON s.app_id = c.app_id AND s.user_id = c.user_id AND s.period = ? "
                "WHERE c.app_id = ? AND c.user_id = ?",
                (month, app_id, user_id),
            ).fetchone()
            if row is None:
                return None
            account = None if row[4] is None else account_pool(conn, row[4], month).room()
            return ConnectionState(
                app_id=app_id, user_id=user_id, status=row[0], cap_nano=row[1],
                settled_nano=row[2], held_nano=row[3], period=month, account_room_nano=account,
            )

        return await self._run(read)

    async def revoke(self, app_id: str, user_id: str) -> bool:
        def revoke(conn: sqlite3.Connection) -> bool:
            def body() -> bool:
                now = int(self.clock())
                cur = conn.execute(
                    "UPDATE connections SET status = 'revoked', updated_at = ? "
                    "WHERE app_id = ? AND user_id = ? AND status != 'revoked'",
                    (now, app_id, user_id),
                )
                if cur.rowcount:
                    record_event(conn, "revoked", app_id, user_id, now)
                    return True
                exists = conn.execute(
                    "SELECT 1 FROM connections WHERE app_id = ? AND user_id = ?",
                    (app_id, user_id),
                ).fetchone()
                return exists is not None

            return transaction(conn, body)

        return await self._run(revoke)

    # -- money ----------------------------------------------------------------------------

    async def reserve(self, req: HoldRequest) -> Hold:
        return await self._batched(lambda c: self._reserve(c, req))

    def _reserve(self, conn: sqlite3.Connection, req: HoldRequest) -> Hold:
        """Every refusal is raised before anything is written (the batch relies on it)."""
        now = self.clock()
        period = period_of(now)
        # The app, its connection to this user and this month's spend: one read.
        row = conn.execute(
            "SELECT a.key_version, a.status, c.cap_nano, c.status, c.account_id, "
            "COALESCE(s.settled_nano, 0), COALESCE(s.held_nano, 0) FROM apps a "
            "LEFT JOIN connections c ON c.app_id = a.id AND c.user_id = ? "
            "LEFT JOIN spend s ON s.app_id = a.id AND s.user_id = ? AND s.period = ? "
            "WHERE a.id = ?",
            (req.user_id, req.user_id, period, req.app_id),
        ).fetchone()
        version, app_status, cap, status, account_id, settled, held = row or (
            None, None, 0, None, None, 0, 0
        )
        admitted = rules.admit(
            req, app_key_version=version, app_status=app_status,
            conn=None if status is None else rules.ConnectionRow(cap, status, account_id),
            settled_nano=settled, held_nano=held,
            account=None if account_id is None else account_pool(conn, account_id, period),
        )
        stamp = int(now)
        if admitted.write == "insert":
            conn.execute(
                "INSERT INTO connections (app_id, user_id, cap_nano, status, created_at, "
                "updated_at) VALUES (?, ?, ?, 'connected', ?, ?)",
                (req.app_id, req.user_id, admitted.cap_nano, stamp, stamp),
            )
        elif admitted.write == "update_cap":
            conn.execute(
                "UPDATE connections SET cap_nano = ?, updated_at = ? "
                "WHERE app_id = ? AND user_id = ?",
                (admitted.cap_nano, stamp, req.app_id, req.user_id),
            )
        hold_id = "hold_" + req.request_id  # request ids are unique
        conn.execute(
            "INSERT INTO holds (id, request_id, app_id, user_id, period, model, amount_nano, "
            "used_nano, instance_id, created_at, updated_at, account_id, funded_by) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?)",
            (hold_id, req.request_id, req.app_id, req.user_id, period, req.model,
             admitted.amount_nano, self.instance_id, stamp, stamp, account_id, req.funded_by),
        )
        _add_held(conn, (req.app_id, req.user_id, period), account_id, admitted.amount_nano)
        return Hold(id=hold_id, amount_nano=admitted.amount_nano, period=period,
                    funded_by=req.funded_by)

    async def extend(self, hold_id: str, *, add_nano: int, used_nano: int) -> Extension:
        def body(conn: sqlite3.Connection) -> Extension:
            row = conn.execute(
                "SELECT h.app_id, h.user_id, h.period, c.cap_nano, c.status, "
                "s.settled_nano, s.held_nano, h.account_id, h.used_nano FROM holds h "
                "JOIN connections c ON c.app_id = h.app_id AND c.user_id = h.user_id "
                "JOIN spend s ON s.app_id = h.app_id AND s.user_id = h.user_id "
                "AND s.period = h.period WHERE h.id = ?",
                (hold_id,),
            ).fetchone()
            if row is None:
                return Extension(granted_nano=0, revoked=False)
            app_id, user_id, period, cap, status, settled, held, account_id, used = row
            extension = rules.grant(
                add_nano, status=status, cap=rules.Pool(cap, settled, held),
                account=None if account_id is None else account_pool(conn, account_id, period),
            )
            grant = extension.granted_nano
            conn.execute(
                "UPDATE holds SET amount_nano = amount_nano + ?, used_nano = ?, "
                "updated_at = ? WHERE id = ?",
                (grant, rules.checkpoint(used, used_nano), int(self.clock()), hold_id),
            )
            if grant:
                _add_held(conn, (app_id, user_id, period), account_id, grant)
            return extension

        return await self._batched(body)

    def note_generation(self, hold_id: str, generation_id: str) -> asyncio.Future[None]:
        def note(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE holds SET generation_id = ? WHERE id = ?", (generation_id, hold_id)
            )

        return self._submit(note)

    async def settle(self, settlement: Settlement) -> Charge | None:
        return await self._batched(lambda c: self._settle(c, settlement))

    def _settle(self, conn: sqlite3.Connection, s: Settlement) -> Charge | None:
        row = conn.execute(
            "SELECT h.app_id, h.user_id, h.period, h.amount_nano, "
            "COALESCE(c.cap_nano, 0), s.settled_nano, s.held_nano, h.account_id, "
            "h.generation_id FROM holds h "
            "LEFT JOIN connections c ON c.app_id = h.app_id AND c.user_id = h.user_id "
            "JOIN spend s ON s.app_id = h.app_id AND s.user_id = h.user_id "
            "AND s.period = h.period WHERE h.id = ?",
            (s.hold_id,),
        ).fetchone()
        if row is None:
            return None  # settled already: settling is idempotent
        app_id, user_id, period, amount, cap, settled, held, account_id, generation = row
        result = rules.charge(
            s.cost_nano, hold_nano=amount, cap=rules.Pool(cap, settled, held),
            account=None if account_id is None else account_pool(conn, account_id, period),
        )
        charged = result.charged_nano
        conn.execute("DELETE FROM holds WHERE id = ?", (s.hold_id,))
        conn.execute(
            "UPDATE spend SET held_nano = MAX(0, held_nano - ?), settled_nano = settled_nano + ? "
            "WHERE app_id = ? AND user_id = ? AND period = ?",
            (amount, charged, app_id, user_id, period),
        )
        if account_id is not None:
            conn.execute(
                "UPDATE account_spend SET held_nano = MAX(0, held_nano - ?), "
                "settled_nano = settled_nano + ? WHERE account_id = ? AND period = ?",
                (amount, charged, account_id, period),
            )
        conn.execute(
            f"INSERT INTO ledger ({_LEDGER_COLUMNS}, account_id) "  # noqa: S608 (constant columns)
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (s.request_id, app_id, user_id, period, s.model, s.prompt_tokens,
             s.completion_tokens, charged, max(0, s.cost_nano), result.operator_nano,
             s.cost_source, s.status, s.http_status, s.error_code, s.ttfb_ms, s.duration_ms,
             s.generation_id or generation, int(self.clock()), s.funded_by, account_id),
        )
        return result

    # -- deferred settlements: the upstream's own record, looked up afterwards ------------

    async def defer(self, settlement: Settlement, *, retry_in_s: float) -> None:
        def body(conn: sqlite3.Connection) -> None:
            now = self.clock()
            conn.execute(
                "UPDATE holds SET settlement = ?, due_at = ?, updated_at = ?, "
                "generation_id = COALESCE(?, generation_id) WHERE id = ?",
                (settlement_json(settlement), now + retry_in_s, int(now),
                 settlement.generation_id, settlement.hold_id),
            )

        await self._batched(body)

    async def claim_lookups(self, *, limit: int, lease_s: float) -> list[PendingLookup]:
        def body(conn: sqlite3.Connection) -> list[PendingLookup]:
            now = self.clock()
            live = self._live_instances(conn)
            marks = ", ".join("?" * len(live))
            # Holds a dead instance left with a generation id: deferred, due now.
            for hold in conn.execute(
                f"SELECT {_HOLD_FIELDS} FROM holds WHERE settlement IS NULL "  # noqa: S608 (constant columns, placeholders)
                f"AND generation_id IS NOT NULL AND instance_id NOT IN ({marks})",
                live,
            ).fetchall():
                conn.execute(
                    "UPDATE holds SET settlement = ?, due_at = ? WHERE id = ?",
                    (settlement_json(reconciled(hold, now)), now, hold[0]),
                )
            rows = conn.execute(
                "SELECT id, request_id, generation_id, attempts, settlement FROM holds "
                "WHERE settlement IS NOT NULL AND generation_id IS NOT NULL AND due_at <= ? "
                "ORDER BY due_at LIMIT ?",
                (now, limit),
            ).fetchall()
            for row in rows:
                conn.execute(
                    "UPDATE holds SET instance_id = ?, due_at = ? WHERE id = ?",
                    (self.instance_id, now + lease_s, row[0]),
                )
            return [
                PendingLookup(hold_id=r[0], request_id=r[1], generation_id=r[2],
                              attempts=r[3], fallback=settlement_of(r[4]))
                for r in rows
            ]

        return await self._run(lambda c: transaction(c, lambda: body(c)))

    async def retry_lookup(self, hold_id: str, *, retry_in_s: float) -> None:
        await self._batched(
            lambda c: c.execute(
                "UPDATE holds SET attempts = attempts + 1, due_at = ? WHERE id = ?",
                (self.clock() + retry_in_s, hold_id),
            )
        )

    # -- reconciliation -------------------------------------------------------------------

    async def reconcile_stale_holds(self, *, live_request_ids: Collection[str] = ()) -> int:
        live_requests = frozenset(live_request_ids)

        def body(conn: sqlite3.Connection) -> int:
            now = self.clock()
            live = self._live_instances(conn)
            dead = self._dead_instances(conn)
            marks = ", ".join("?" * len(live))
            lost = conn.execute(
                f"SELECT {_HOLD_FIELDS} FROM holds WHERE settlement IS NULL "  # noqa: S608 (constant columns, placeholders)
                f"AND generation_id IS NULL AND instance_id NOT IN ({marks})",
                live,
            ).fetchall()
            # This instance's own orphans: not deferred, their request no longer running,
            # untouched for a while (a stream's checkpoints touch its hold).
            orphans = [
                hold for hold in conn.execute(
                    f"SELECT {_HOLD_FIELDS} FROM holds WHERE settlement IS NULL "  # noqa: S608 (constant columns)
                    "AND instance_id = ? AND updated_at < ?",
                    (self.instance_id, now - ORPHAN_AFTER_S),
                ).fetchall()
                if hold[1] not in live_requests
            ]
            for hold in [*lost, *(h for h in orphans if h[5] is None)]:
                self._settle(conn, reconciled(hold, now))
            # Deferred without a generation id to look up: nothing will come, settle to
            # the fall-back once due.
            stuck = conn.execute(
                "SELECT settlement FROM holds WHERE settlement IS NOT NULL "
                "AND generation_id IS NULL AND due_at <= ?",
                (now,),
            ).fetchall()
            for (text,) in stuck:
                self._settle(conn, settlement_of(text))
            for hold in orphans:
                if hold[5] is not None:  # the upstream keeps a record: look it up
                    conn.execute(
                        "UPDATE holds SET settlement = ?, due_at = ? WHERE id = ?",
                        (settlement_json(reconciled(hold, now)), now, hold[0]),
                    )
            for inst_id in dead:
                conn.execute("DELETE FROM instances WHERE id = ?", (inst_id,))
            return len(lost) + len(orphans) + len(stuck)

        return await self._run(lambda c: transaction(c, lambda: body(c)))

    async def open_holds(self) -> int:
        row = await self._run(lambda c: c.execute("SELECT COUNT(*) FROM holds").fetchone())
        return int(row[0])

    async def ledger(self, app_id: str, user_id: str, *, limit: int = 100) -> list[LedgerRow]:
        rows = await self._run(
            lambda c: c.execute(
                f"SELECT {_LEDGER_COLUMNS} FROM ledger "  # noqa: S608 (constant columns)
                "WHERE app_id = ? AND user_id = ? ORDER BY id DESC LIMIT ?",
                (app_id, user_id, limit),
            ).fetchall()
        )
        return [LedgerRow(*r) for r in rows]
