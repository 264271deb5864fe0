"""The embedded SQLite store (the default).

Durability, as configured here (WAL, ``synchronous=NORMAL``):

- A process crash (``kill -9``) loses nothing that was committed: a settled charge is in
  the WAL before :meth:`SQLiteStore.settle` returns. Holds the dead process left are
  charged their last checkpoint at the next start-up (or by a live worker, once the dead
  one's heartbeat is stale).
- A power loss or kernel crash may lose the last transactions committed before it (WAL
  frames not yet synced); the database stays consistent (never half a transaction).
  Operators who need every commit on disk set ``PRAGMA synchronous=FULL`` semantics by
  running on a battery-backed disk or choose a replicated store.

Concurrency: every statement runs on aiosqlite's single connection thread. Each
read-modify-write transaction runs there as *one* function between ``BEGIN IMMEDIATE``
and ``COMMIT``, so transactions of this process never interleave and cost one thread
hop each; ``BEGIN IMMEDIATE`` with a busy timeout serialises them against other
processes (``--workers``) on the same file.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal, TypeVar, cast

import aiosqlite
import orjson

from gateway.keys import Mode, generate_key_pair, secret_key_hash
from gateway.store.base import App, Change, NewApp, StoreError, UnknownApp
from gateway.store.sqlite_accounts import AccountsMixin, record_event, transaction
from gateway.store.sqlite_admin import APP_COLUMNS as _APP_COLUMNS
from gateway.store.sqlite_admin import AdminMixin
from gateway.store.sqlite_admin import app_of as _app
from gateway.store.sqlite_funding import FundingMixin
from gateway.store.sqlite_money import MeteringMixin
from gateway.store.sqlite_schema import MIGRATIONS

T = TypeVar("T")

log = logging.getLogger("wattfare.store")
CHECKPOINT_INTERVAL_S = 1.0
# Under steady writes a checkpoint on another connection never catches up with the log's
# end, and the log only starts over from its beginning once one has: past this many
# frames (4 KB pages), the writer's own thread finishes the checkpoint between batches.
WAL_RESTART_FRAMES = 16_384
# Once it starts over, the log file is cut back to this size.
WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024

# An instance whose heartbeat is older than this is presumed dead.
STALE_AFTER_S = 30

def _ensure_parent(path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)


def _process_start(pid: int) -> str:
    """When ``pid`` started (Linux: clock ticks since boot), to tell a reused pid apart;
    empty where the system does not say."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return ""
    # Field 22; the command name (field 2) may hold spaces, so count from its end.
    return stat[stat.rfind(b")") + 2:].split()[19].decode()


def _process_alive(pid: int, started: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not started or _process_start(pid) == started


def _deliver(futures: list[asyncio.Future[Any]], outcomes: list[tuple[bool, Any]]) -> None:
    for future, (ok, value) in zip(futures, outcomes, strict=True):
        if future.done():
            continue
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)


class SQLiteStore(MeteringMixin, AccountsMixin, FundingMixin, AdminMixin):
    """:class:`gateway.store.base.Store` on one SQLite file (its money half:
    :mod:`gateway.store.sqlite_money`; its end-user half:
    :mod:`gateway.store.sqlite_accounts` and :mod:`gateway.store.sqlite_funding`; the
    operator's: :mod:`gateway.store.sqlite_admin`)."""

    def __init__(
        self,
        path: str,
        *,
        busy_timeout_ms: int = 5000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.busy_timeout_ms = busy_timeout_ms
        # The store's clock: the month a hold is charged to, look-ups' due times, leases.
        self.clock = clock
        self.instance_id = uuid.uuid4().hex
        self._db: aiosqlite.Connection | None = None
        self._registered = False
        # Group commit: money transactions queued while a batch is on the connection
        # thread go together in the next one (one commit). The connection's thread
        # takes them from here (see _batched).
        self._pending: list[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]]] = []
        self._pending_lock = threading.Lock()
        self._draining = False
        self._checkpointer: asyncio.Task[None] | None = None
        self._checkpoint_db: aiosqlite.Connection | None = None
        self.checkpoint_interval_s = CHECKPOINT_INTERVAL_S
        self.wal_restart_frames = WAL_RESTART_FRAMES
        self._wal_restart_due = False  # set by the checkpointer, acted on by _drain
        self._cursor: int | None = None  # the change feed's

    # -- plumbing -------------------------------------------------------------------------

    async def open(self) -> None:
        if self.path != ":memory:":
            await asyncio.to_thread(_ensure_parent, self.path)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves.
        self._db = await aiosqlite.connect(
            self.path, isolation_level=None, timeout=self.busy_timeout_ms / 1000
        )
        await self._run(self._configure)
        await self._run(self._migrate)
        await self._run(self._register_instance)
        if self.path != ":memory:":
            # Connected here, not in the task: a task cancelled while aiosqlite connects
            # would leave that connection's thread running, unclosed.
            self._checkpoint_db = await aiosqlite.connect(self.path, isolation_level=None)
            self._checkpointer = asyncio.create_task(self._checkpoint_loop(self._checkpoint_db))

    async def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            await asyncio.gather(self._checkpointer, return_exceptions=True)
            self._checkpointer = None
        if self._checkpoint_db is not None:
            checkpoint_db, self._checkpoint_db = self._checkpoint_db, None
            await checkpoint_db.close()
        # Let queued money transactions commit (bounded: a wedged connection is not
        # waited for forever).
        for _ in range(500):
            with self._pending_lock:
                if not self._draining:
                    break
            await asyncio.sleep(0.01)
        if self._db is not None:
            db, self._db = self._db, None
            try:
                await self._run_on(db, self._unregister_instance)
            finally:
                await db.close()

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._db is None:
            raise RuntimeError("store is not open")
        return await self._run_on(self._db, fn)

    @staticmethod
    async def _run_on(db: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
        # aiosqlite hops to its thread once per statement; a transaction of five
        # statements would cost five hops and could interleave with another coroutine's.
        # Its (stable since 0.1, but underscored) _execute runs one function on that
        # thread, so a whole transaction is one hop and atomic with respect to this
        # process.
        proxy = cast(Any, db)
        return cast(T, await proxy._execute(lambda: fn(proxy._conn)))

    def _configure(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        # A checkpoint syncs the database file; run in a commit, it would stall every
        # request queued behind that commit. A separate connection does it instead.
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT_BYTES}")
        conn.execute("PRAGMA foreign_keys = ON")

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"database schema version {version} is newer than this gateway "
                    f"({len(MIGRATIONS)}); upgrade the gateway"
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in script.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _register_instance(self, conn: sqlite3.Connection) -> None:
        now = int(self.clock())
        conn.execute(
            "INSERT INTO instances (id, pid, host, proc_start, started_at, heartbeat_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (self.instance_id, os.getpid(), socket.gethostname(),
             _process_start(os.getpid()), now, now),
        )
        self._registered = True

    def _unregister_instance(self, conn: sqlite3.Connection) -> None:
        if not self._registered:
            return
        # Holds of requests still open at shutdown were settled by their handlers; any
        # left are charged by reconciliation as usual, so keep the row if there are some.
        conn.execute(
            "DELETE FROM instances WHERE id = ? AND NOT EXISTS "
            "(SELECT 1 FROM holds WHERE instance_id = ?)",
            (self.instance_id, self.instance_id),
        )

    async def _checkpoint_loop(self, db: aiosqlite.Connection) -> None:
        """Move the WAL into the database about once a second, off the serving
        connection's thread (PASSIVE: never waits for, nor blocks, the writer).

        A passive checkpoint copies the log as it was when it began. While requests keep
        coming, the writer appends during every one, so the log is never found fully
        copied, never starts over from its beginning, and would grow by gigabytes a day
        (a RESTART checkpoint from here starves: the writer takes the lock back between
        its batches). So once the log holds ``wal_restart_frames`` frames, the writer's
        own thread runs one more checkpoint between two batches (see
        :meth:`_finish_checkpoint`): it copies only what came since this one, and the
        next transaction starts the log over.
        """
        while True:
            await asyncio.sleep(self.checkpoint_interval_s)
            try:
                row = await self._run_on(
                    db, lambda c: c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                )
            except sqlite3.Error as exc:
                log.warning("WAL checkpoint failed: %s", exc)
                continue
            if row is not None and int(row[1]) >= self.wal_restart_frames:
                self._wal_restart_due = True

    def _finish_checkpoint(self, conn: sqlite3.Connection) -> None:
        """On the connection's thread, between transactions: copy the rest of the log, so
        that the next transaction starts it over (and cuts the file back to
        ``WAL_SIZE_LIMIT_BYTES``).

        RESTART, so that a writer in another process (``--workers``) cannot append while
        it runs, but without waiting: if that writer or another checkpoint holds the log,
        it copies what it can, as a passive one would, and is tried again at the next
        batch.
        """
        self._wal_restart_due = False
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                busy = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0]
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        except sqlite3.Error as exc:
            log.warning("WAL checkpoint failed: %s", exc)
            return
        if busy:
            self._wal_restart_due = True

    async def _batched(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a transaction committed together with whatever else is queued:
        it returns only once its commit is done.

        Ops wait in a list the connection's thread drains: while one batch commits, the
        next gathers, and the thread starts it as soon as the commit is done, with no
        trip through the event loop in between. One batch per turn on the connection's
        queue, so other statements interleave; results reach the waiting requests with
        one ``call_soon_threadsafe`` per batch.
        """
        return await self._submit(fn)

    def _submit(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        """:meth:`_batched` without waiting: ``fn`` is queued for the next batch, and the
        future is done once that batch has committed."""
        db = self._db
        if db is None:
            raise RuntimeError("store is not open")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._pending_lock:
            self._pending.append((fn, future))
            start = not self._draining
            self._draining = True
        if start:
            self._post(db, functools.partial(self._drain, db, loop))
        return future

    @staticmethod
    def _post(db: aiosqlite.Connection, job: Callable[[], None]) -> None:
        # Fire and forget onto the connection's thread, behind what is queued there
        # (aiosqlite runs its queue in order; ``_execute`` would need a task to await).
        cast(Any, db)._tx.put_nowait((None, job))

    def _drain(self, db: aiosqlite.Connection, loop: asyncio.AbstractEventLoop) -> None:
        """On the connection's thread: commit one batch, then queue the next turn."""
        if self._wal_restart_due:
            self._finish_checkpoint(cast(Any, db)._conn)
        with self._pending_lock:
            batch, self._pending = self._pending, []
            if not batch:
                self._draining = False
                return
        futures = [future for _, future in batch]
        try:
            outcomes = self._run_batch(cast(Any, db)._conn, fns=[fn for fn, _ in batch])
        except BaseException as exc:  # the batch as a whole failed (e.g. locked)
            outcomes = [(False, exc)] * len(batch)
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            loop.call_soon_threadsafe(_deliver, futures, outcomes)
        self._post(db, functools.partial(self._drain, db, loop))

    @classmethod
    def _run_batch(
        cls, conn: sqlite3.Connection, *, fns: list[Callable[[sqlite3.Connection], Any]]
    ) -> list[tuple[bool, Any]]:
        """Run ``fns`` in one transaction; each op's outcome, in order.

        An op refuses (a :class:`StoreError`) before it writes anything, so a refusal
        needs no rollback of its own. Anything else may have left an op half done: the
        whole transaction is rolled back and each op runs again alone.
        """
        outcomes: list[tuple[bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")  # if the lock cannot be had, the batch fails whole
        try:
            for fn in fns:
                try:
                    outcomes.append((True, fn(conn)))
                except StoreError as exc:
                    outcomes.append((False, exc))
        except Exception:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if len(fns) == 1:
                raise
            return [cls._run_alone(conn, fn) for fn in fns]
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return outcomes

    @staticmethod
    def _run_alone(
        conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], Any]
    ) -> tuple[bool, Any]:
        try:
            return True, transaction(conn, lambda: fn(conn))
        except Exception as exc:
            return False, exc

    async def ping(self) -> None:
        await self._run(lambda c: c.execute("SELECT 1").fetchone())

    async def heartbeat(self) -> None:
        now = int(self.clock())
        await self._run(
            lambda c: c.execute(
                "UPDATE instances SET heartbeat_at = ? WHERE id = ?", (now, self.instance_id)
            )
        )

    def _instances(self, conn: sqlite3.Connection) -> tuple[list[str], list[str]]:
        """The ids of the registered instances that live (this one first) and of those
        that are gone: a heartbeat older than ``STALE_AFTER_S``, or a process of this
        host that no longer runs."""
        now = self.clock()
        host = socket.gethostname()
        live, dead = [self.instance_id], list[str]()
        for inst_id, pid, inst_host, started, beat in conn.execute(
            "SELECT id, pid, host, proc_start, heartbeat_at FROM instances WHERE id != ?",
            (self.instance_id,),
        ).fetchall():
            gone = beat < now - STALE_AFTER_S or (
                inst_host == host and not _process_alive(pid, started)
            )
            (dead if gone else live).append(inst_id)
        return live, dead

    # -- the change feed ------------------------------------------------------------------

    async def changes(self) -> list[Change]:
        # One writer at a time: sequence numbers commit in order, so a cursor suffices.
        if self._cursor is None:
            top = await self._run(
                lambda c: c.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
            )
            self._cursor = int(top[0])
            return []
        cursor = self._cursor
        rows = await self._run(
            lambda c: c.execute(
                "SELECT seq, kind, app_id, user_id FROM events WHERE seq > ? "
                "ORDER BY seq LIMIT 1000",
                (cursor,),
            ).fetchall()
        )
        if rows:
            self._cursor = int(rows[-1][0])
        return [Change(*r) for r in rows]

    async def wait_for_changes(self, *, at_most_s: float) -> None:
        # No notices between processes on one file: the poller reads every interval.
        await asyncio.sleep(at_most_s)

    def _live_instances(self, conn: sqlite3.Connection) -> list[str]:
        return self._instances(conn)[0]

    def _dead_instances(self, conn: sqlite3.Connection) -> list[str]:
        return self._instances(conn)[1]

    # -- apps and keys --------------------------------------------------------------------

    async def create_app(self, *, name: str, mode: Mode, origins: tuple[str, ...]) -> NewApp:
        keys = generate_key_pair(mode)
        now = int(self.clock())
        app = App(
            id="app_" + uuid.uuid4().hex[:20],
            name=name,
            mode=mode,
            publishable_key=keys.publishable_key,
            secret_hash=secret_key_hash(keys.secret_key),
            key_version=1,
            origins=origins,
            status="active",
            created_at=now,
        )

        def insert(conn: sqlite3.Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO apps (id, name, mode, publishable_key, secret_hash, "
                    "key_version, origins, status, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, 1, ?, 'active', ?, ?)",
                    (app.id, name, mode, app.publishable_key, app.secret_hash,
                     orjson.dumps(list(origins)).decode(), now, now),
                )
            except sqlite3.IntegrityError as exc:
                raise ValueError(f"an app named {name!r} already exists") from exc

        await self._run(insert)
        return NewApp(app=app, keys=keys)

    async def list_apps(self) -> list[App]:
        rows = await self._run(
            lambda c: c.execute(f"SELECT {_APP_COLUMNS} FROM apps ORDER BY created_at, rowid")  # noqa: S608 (constant columns)
            .fetchall()
        )
        return [_app(r) for r in rows]

    async def roll_key(self, app: str) -> NewApp:
        def roll(conn: sqlite3.Connection) -> NewApp:
            def body() -> NewApp:
                row = conn.execute(
                    f"SELECT {_APP_COLUMNS} FROM apps WHERE id = ? OR name = ?", (app, app)  # noqa: S608 (constant columns)
                ).fetchone()
                if row is None:
                    raise UnknownApp(app)
                old = _app(row)
                keys = generate_key_pair(old.mode)
                new = App(
                    id=old.id, name=old.name, mode=old.mode,
                    publishable_key=keys.publishable_key,
                    secret_hash=secret_key_hash(keys.secret_key),
                    key_version=old.key_version + 1, origins=old.origins,
                    status=old.status, created_at=old.created_at,
                )
                now = int(self.clock())
                conn.execute(
                    "UPDATE apps SET publishable_key = ?, secret_hash = ?, key_version = ?, "
                    "updated_at = ? WHERE id = ?",
                    (new.publishable_key, new.secret_hash, new.key_version, now, old.id),
                )
                record_event(conn, "key_rolled", old.id, "", now)
                return NewApp(app=new, keys=keys)

            return transaction(conn, body)

        return await self._run(roll)

    async def app_by_publishable_key(self, publishable_key: str) -> App | None:
        return await self._app_where("publishable_key", publishable_key)

    async def app_by_secret_hash(self, secret_hash: bytes) -> App | None:
        return await self._app_where("secret_hash", secret_hash)

    async def _app_where(
        self, column: Literal["publishable_key", "secret_hash"], value: str | bytes
    ) -> App | None:
        row = await self._run(
            lambda c: c.execute(
                f"SELECT {_APP_COLUMNS} FROM apps WHERE {column} = ?", (value,)  # noqa: S608 (constant columns and column name)
            ).fetchone()
        )
        return None if row is None else _app(row)
