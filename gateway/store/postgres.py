"""The PostgreSQL store: one database shared by any number of gateway nodes.

Why asyncpg (and not psycopg 3): the money steps are short statements on the request
path, so what counts is the gateway's own CPU per round trip (the machine also runs the
database, the upstream and the load). Measured here (loopback, one connection, 20,000
prepared one-row queries, two runs each): asyncpg 0.32 used 63-64 µs of client CPU a
call, psycopg 3.3's async connection (binary, prepared) 97-103 µs, with wall times of
230-254 µs and 255-297 µs. psycopg's pipeline mode saves round trips, but the steps here
take one write each anyway. asyncpg also brings the pool and the LISTEN/NOTIFY the store
needs (:mod:`gateway.store.postgres_events`).

What a node promises here (see also the README's "Running in production"):

- A money step is one transaction on the database: each is a plpgsql function that locks
  the rows it depends on (connection, month's spend, account, account's spend), checks
  them against what the node read and decided on with :mod:`gateway.store.rules`, and
  writes the decision; if anything changed in between, it returns the new values and the
  node decides again. One round trip for the write; the read before it is usually
  spared, as the node remembers what it last saw (:mod:`gateway.store.postgres_cache`).
  Writes of one node waiting at the same time share one round trip and one commit
  (:mod:`gateway.store.postgres_batch`).
- Times that matter (the month a hold is charged to, leases, look-ups' due times) are
  the database's, never a node's own clock.
- A node keeps a heartbeat lease in ``instances``; when it lapses (``lease_s``), the
  others settle the node's holds (:meth:`reconcile_stale_holds`).
- A committed settlement survives a crash of the node and, with PostgreSQL's default
  ``synchronous_commit = on`` and ``fsync = on``, a power loss of the database server.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from typing import Any

import asyncpg
import orjson

from gateway.keys import Mode, generate_key_pair, secret_key_hash
from gateway.store.base import App, NewApp, UnknownApp
from gateway.store.postgres_accounts import AccountsMixin
from gateway.store.postgres_admin import APP_COLUMNS as _APP_COLUMNS
from gateway.store.postgres_admin import AdminMixin
from gateway.store.postgres_admin import app_of as _app
from gateway.store.postgres_batch import Batcher, Turns
from gateway.store.postgres_cache import Snapshots
from gateway.store.postgres_events import EventsMixin
from gateway.store.postgres_funding import FundingMixin
from gateway.store.postgres_money import MeteringMixin
from gateway.store.postgres_reconcile import ReconcileMixin
from gateway.store.postgres_schema import MIGRATION_LOCK, MIGRATIONS

log = logging.getLogger("wattfare.store")

class PostgresStore(MeteringMixin, ReconcileMixin, AccountsMixin, FundingMixin, EventsMixin,
                    AdminMixin):
    """:class:`gateway.store.base.Store` on a PostgreSQL database (its money half:
    :mod:`gateway.store.postgres_money`, :mod:`gateway.store.postgres_batch` and
    :mod:`gateway.store.postgres_reconcile`; its end-user half:
    :mod:`gateway.store.postgres_accounts` and :mod:`gateway.store.postgres_funding`;
    change notices between nodes: :mod:`gateway.store.postgres_events`; the operator's:
    :mod:`gateway.store.postgres_admin`).

    ``schema``: keep the tables in this schema (created if missing) instead of the
    connection's default, so several gateways (or test runs) can share one database.
    """

    def __init__(
        self,
        url: str,
        *,
        min_size: int = 2,
        max_size: int = 10,
        lease_s: float = 20.0,
        schema: str | None = None,
    ) -> None:
        if max_size < 2:  # one connection is the money writes' own; reads need another
            raise ValueError(f"max_size must be at least 2, got {max_size}")
        self.url = url
        self.min_size = min_size
        self.max_size = max_size
        self.lease_s = lease_s
        self.schema = schema
        self.instance_id = uuid.uuid4().hex
        self._pool: asyncpg.Pool | None = None
        self._writes: Batcher | None = None
        self._registered = False
        self._snapshots = Snapshots()
        self._turns = Turns()
        EventsMixin.__init__(self)

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    @property
    def _batcher(self) -> Batcher:
        if self._writes is None:
            raise RuntimeError("store is not open")
        return self._writes

    def _server_settings(self) -> dict[str, str]:
        settings = {"application_name": "wattfare"}
        if self.schema is not None:
            settings["search_path"] = self.schema
        return settings

    async def _connect(self) -> asyncpg.Connection:
        """One connection outside the pool (migrations, the change listener)."""
        return await asyncpg.connect(self.url, server_settings=self._server_settings())

    # -- plumbing -------------------------------------------------------------------------

    async def open(self) -> None:
        con = await self._connect()
        try:
            await self._migrate(con)
        finally:
            await con.close()
        self._pool = await asyncpg.create_pool(
            self.url, min_size=self.min_size, max_size=self.max_size,
            server_settings=self._server_settings(), reset=_keep_session,
        )
        self._writes = Batcher(self._pool)
        await self.pool.execute(
            "INSERT INTO instances (id, pid, host, proc_start, started_at, heartbeat_at) "
            "VALUES ($1, $2, $3, '', wattfare_now(), wattfare_now())",
            self.instance_id, os.getpid(), socket.gethostname(),
        )
        self._registered = True
        await self._start_listening()

    async def _migrate(self, con: asyncpg.Connection) -> None:
        """Apply the migrations this database lacks, under an advisory lock: nodes that
        start together wait for the first, then find nothing left to do."""
        async with con.transaction():
            await con.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            if self.schema is not None:
                await con.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            await con.execute(
                "CREATE TABLE IF NOT EXISTS wattfare_schema (version INTEGER NOT NULL)"
            )
            version = await con.fetchval("SELECT max(version) FROM wattfare_schema")
            if version is None:
                version = 0
                await con.execute("INSERT INTO wattfare_schema (version) VALUES (0)")
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"database schema version {version} is newer than this gateway "
                    f"({len(MIGRATIONS)}); upgrade the gateway"
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                await con.execute(script)
                await con.execute("UPDATE wattfare_schema SET version = $1", number)
                log.info("database schema migrated to version %d", number)

    async def close(self) -> None:
        await self._stop_listening()
        if self._pool is None:
            return
        if self._writes is not None:
            await self._writes.close()
        pool, self._pool, self._writes = self._pool, None, None
        try:
            if self._registered:
                # Holds still open are settled by the others (or the next start) as usual.
                await pool.execute(
                    "DELETE FROM instances WHERE id = $1 AND NOT EXISTS "
                    "(SELECT 1 FROM holds WHERE instance_id = $1)",
                    self.instance_id,
                )
        finally:
            await pool.close()

    async def ping(self) -> None:
        await self.pool.fetchval("SELECT 1")

    async def heartbeat(self) -> None:
        renewed = await self.pool.execute(
            "UPDATE instances SET heartbeat_at = wattfare_now() WHERE id = $1",
            self.instance_id,
        )
        if renewed == "UPDATE 0":
            # Presumed dead by the others (the node stalled past its lease): its holds
            # may have been settled; it carries on as a live node again.
            log.warning("this node's lease had lapsed; registering again")
            await self.pool.execute(
                "INSERT INTO instances (id, pid, host, proc_start, started_at, heartbeat_at) "
                "VALUES ($1, $2, $3, '', wattfare_now(), wattfare_now()) "
                "ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                self.instance_id, os.getpid(), socket.gethostname(),
            )

    async def _live_instances(self, con: Any) -> list[str]:
        rows = await con.fetch(
            "SELECT id FROM instances WHERE heartbeat_at >= wattfare_now() - $1 AND id <> $2",
            int(self.lease_s), self.instance_id,
        )
        return [self.instance_id, *(r[0] for r in rows)]

    # -- apps and keys --------------------------------------------------------------------

    async def create_app(self, *, name: str, mode: Mode, origins: tuple[str, ...]) -> NewApp:
        keys = generate_key_pair(mode)
        now = int(time.time())
        app = App(
            id="app_" + uuid.uuid4().hex[:20], name=name, mode=mode,
            publishable_key=keys.publishable_key,
            secret_hash=secret_key_hash(keys.secret_key), key_version=1, origins=origins,
            status="active", created_at=now,
        )
        try:
            created = await self.pool.fetchval(
                "INSERT INTO apps (id, name, mode, publishable_key, secret_hash, key_version, "
                "origins, status, created_at, updated_at) "
                "VALUES ($1, $2, $3, $4, $5, 1, $6, 'active', wattfare_now(), wattfare_now()) "
                "RETURNING created_at",
                app.id, name, mode, app.publishable_key, app.secret_hash,
                orjson.dumps(list(origins)).decode(),
            )
        except asyncpg.UniqueViolationError as exc:
            raise ValueError(f"an app named {name!r} already exists") from exc
        return NewApp(app=App(**{**_fields(app), "created_at": created}), keys=keys)

    async def list_apps(self) -> list[App]:
        rows = await self.pool.fetch(
            f"SELECT {_APP_COLUMNS} FROM apps ORDER BY created_at, id"  # noqa: S608 (constant columns)
        )
        return [_app(r) for r in rows]

    async def roll_key(self, app: str) -> NewApp:
        async with self.pool.acquire() as con, con.transaction():
            row = await con.fetchrow(
                f"SELECT {_APP_COLUMNS} FROM apps WHERE id = $1 OR name = $1 FOR UPDATE",  # noqa: S608 (constant columns)
                app,
            )
            if row is None:
                raise UnknownApp(app)
            old = _app(row)
            keys = generate_key_pair(old.mode)
            new = App(**{
                **_fields(old), "publishable_key": keys.publishable_key,
                "secret_hash": secret_key_hash(keys.secret_key),
                "key_version": old.key_version + 1,
            })
            await con.execute(
                "UPDATE apps SET publishable_key = $1, secret_hash = $2, key_version = $3, "
                "updated_at = wattfare_now() WHERE id = $4",
                new.publishable_key, new.secret_hash, new.key_version, old.id,
            )
            await self._record_event(con, "key_rolled", old.id, "")
            return NewApp(app=new, keys=keys)

    async def app_by_publishable_key(self, publishable_key: str) -> App | None:
        row = await self.pool.fetchrow(
            f"SELECT {_APP_COLUMNS} FROM apps WHERE publishable_key = $1",  # noqa: S608 (constant columns)
            publishable_key,
        )
        return None if row is None else _app(row)

    async def app_by_secret_hash(self, secret_hash: bytes) -> App | None:
        row = await self.pool.fetchrow(
            f"SELECT {_APP_COLUMNS} FROM apps WHERE secret_hash = $1",  # noqa: S608 (constant columns)
            secret_hash,
        )
        return None if row is None else _app(row)


async def _keep_session(con: asyncpg.Connection) -> None:
    """What the pool runs on a connection it takes back: nothing. By default asyncpg
    resets the session (advisory locks, cursors, listeners, settings), a round trip per
    use, twice a request's cost; the store's pooled connections change none of these
    (migrations and the listener have connections of their own)."""


def _fields(app: App) -> dict[str, Any]:
    return {name: getattr(app, name) for name in App.__dataclass_fields__}
