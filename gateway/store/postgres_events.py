"""Changes one node makes that the others must act on at once (a revocation cuts their
streams, a rolled key or a disabled app empties their credential caches), carried by
PostgreSQL's LISTEN/NOTIFY.

Every change is a row of ``events`` (so none is lost: a node reads the rows after its
cursor), and inserting one notifies channel ``wattfare_events`` (a trigger). A node
listens on a connection of its own and wakes its poller on each notice; without a notice,
the poller reads the table anyway every poll interval, so a lost notice (a dropped
listener connection, a restart of the server) delays a change by one interval, never
loses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import asyncpg

from gateway.store.base import Change

log = logging.getLogger("wattfare.store")

CHANNEL = "wattfare_events"
# How far back (seconds) each read looks again for rows committed late.
RECENT_S = 5


class EventsMixin:
    """The change feed of :class:`gateway.store.postgres.PostgresStore`."""

    @property
    def pool(self) -> asyncpg.Pool:
        raise NotImplementedError  # provided by PostgresStore

    def __init__(self) -> None:
        self._changed = asyncio.Event()
        self._listener: asyncpg.Connection | None = None
        self._cursor: int | None = None
        self._seen: dict[int, int] = {}  # recent rows already reported: seq -> created_at

    async def _connect(self) -> asyncpg.Connection:
        raise NotImplementedError  # provided by PostgresStore

    async def _start_listening(self) -> None:
        try:
            con = await self._connect()
            await con.add_listener(CHANNEL, self._on_notice)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("cannot listen for changes (polling instead): %s", exc)
            return
        con.add_termination_listener(self._on_lost)
        self._listener = con

    def _on_notice(self, *_: Any) -> None:
        self._changed.set()

    def _on_lost(self, *_: Any) -> None:
        self._listener = None
        self._changed.set()  # read the table now: a notice may have been missed

    async def _stop_listening(self) -> None:
        con, self._listener = self._listener, None
        if con is not None and not con.is_closed():
            with contextlib.suppress(OSError, asyncpg.PostgresError):
                await con.close()

    @staticmethod
    async def _record_event(con: Any, kind: str, app_id: str, user_id: str) -> None:
        await con.execute(
            "INSERT INTO events (kind, app_id, user_id, created_at) "
            "VALUES ($1, $2, $3, wattfare_now())",
            kind, app_id, user_id,
        )

    async def wait_for_changes(self, *, at_most_s: float) -> None:
        if self._listener is None:
            await self._start_listening()  # (again) after the listener was lost
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), at_most_s)
        self._changed.clear()

    async def changes(self) -> list[Change]:
        if self._cursor is None:  # the feed starts now: what is there is not news
            recent = await self.pool.fetch(
                "SELECT seq, created_at FROM events WHERE created_at >= wattfare_now() - $1 "
                "OR seq = (SELECT max(seq) FROM events)",
                RECENT_S,
            )
            self._seen = {r[0]: r[1] for r in recent}
            self._cursor = max(self._seen, default=0)
            return []
        # Sequence numbers are taken at insert but become visible at commit, so a row can
        # appear below the cursor after it moved on: the last few seconds are read again,
        # and rows already seen are skipped. The first column is the database's clock
        # (the one row there always is, with no event, says only that).
        rows = await self.pool.fetch(_READ, self._cursor, RECENT_S)
        fresh = [r for r in rows if r[1] is not None and r[1] not in self._seen]
        for r in fresh:
            self._seen[r[1]] = r[5]
            self._cursor = max(self._cursor, r[1])
        # Forgotten once older than any read looks again, by the database's clock: a
        # node's own, if wrong, would have it report each change again (ahead) or keep
        # every one for ever (behind).
        horizon = rows[0][0] - 2 * RECENT_S
        for seq in [seq for seq, at in self._seen.items() if at < horizon]:
            del self._seen[seq]
        return [Change(seq=r[1], kind=r[2], app_id=r[3], user_id=r[4]) for r in fresh]


# What changed after ``$1`` or in the last ``$2`` seconds, with the database's time.
_READ = """
SELECT wattfare_now(), e.seq, e.kind, e.app_id, e.user_id, e.created_at
FROM (SELECT 1) AS one LEFT JOIN LATERAL (
    SELECT seq, kind, app_id, user_id, created_at FROM events
    WHERE seq > $1 OR created_at >= wattfare_now() - $2 ORDER BY seq LIMIT 1000
) AS e ON true
ORDER BY e.seq
"""
