"""What only the SQLite store does: its file, its group commit, its write-ahead log,
and the month by its own clock."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from gateway.store.base import CapReached
from gateway.store.sqlite import SQLiteStore

from .backends import SQLiteBackend, assert_consistent
from .helpers import hold_request, settlement


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "wattfare.db"))
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def consistent(path: str) -> None:
    await assert_consistent(SQLiteBackend(Path(path).parent, name=Path(path).name))


async def test_each_charge_lands_in_the_month_of_its_hold(tmp_path: Path) -> None:
    moment = [1767225599.0]  # 2025-12-31T23:59:59Z
    store = SQLiteStore(str(tmp_path / "months.db"), clock=lambda: moment[0])
    await store.open()
    try:
        app = (await store.create_app(name="a", mode="test", origins=())).app
        hold = await store.reserve(hold_request(app.id, "u", want=100))
        assert hold.period == "2025-12"
        moment[0] = 1767225600.0  # the first second of January: the hold stays December's
        await store.settle(settlement(hold.id, 100))
        dec = await store.connection(app.id, "u", "2025-12")
        jan = await store.connection(app.id, "u")
        assert dec is not None and dec.settled_nano == 100
        assert jan is not None and jan.period == "2026-01"
        assert jan.settled_nano == 0 and jan.remaining_nano == 1000
    finally:
        await store.close()


async def test_the_secret_key_is_never_stored(sqlite_store: SQLiteStore) -> None:
    created = await sqlite_store.create_app(name="shop", mode="test", origins=())
    secret = created.keys.secret_key
    raw = Path(sqlite_store.path).read_bytes()
    wal = Path(sqlite_store.path + "-wal")
    if wal.exists():
        raw += wal.read_bytes()
    assert secret.encode() not in raw
    assert secret[8:].encode() not in raw


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "new.db")
    with sqlite3.connect(path) as db:
        db.execute("PRAGMA user_version = 99")
    s = SQLiteStore(path)
    with pytest.raises(RuntimeError, match="newer than this gateway"):
        await s.open()
    await s.close()


def test_an_op_failing_half_done_is_undone_and_the_batch_still_commits(
    tmp_path: Path,
) -> None:
    conn = sqlite3.connect(tmp_path / "batch.db", isolation_level=None)
    conn.execute("CREATE TABLE t (k TEXT PRIMARY KEY)")

    def insert(key: str) -> Callable[[sqlite3.Connection], str]:
        def op(c: sqlite3.Connection) -> str:
            c.execute("INSERT INTO t VALUES (?)", (key,))
            return key
        return op

    def refuse(c: sqlite3.Connection) -> None:
        raise CapReached(0, budget=False)  # refusals come before any write

    def half_done(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO t VALUES ('half')")
        raise sqlite3.IntegrityError("failed after writing")

    outcomes = SQLiteStore._run_batch(
        conn, fns=[insert("a"), refuse, half_done, insert("b")]
    )
    assert [ok for ok, _ in outcomes] == [True, False, False, True]
    assert isinstance(outcomes[1][1], CapReached)
    assert isinstance(outcomes[2][1], sqlite3.IntegrityError)
    assert sorted(r[0] for r in conn.execute("SELECT k FROM t")) == ["a", "b"]
    assert not conn.in_transaction
    # Refusals alone need no fall-back: one transaction, both writes kept.
    outcomes = SQLiteStore._run_batch(conn, fns=[insert("c"), refuse, insert("d")])
    assert [ok for ok, _ in outcomes] == [True, False, True]
    assert sorted(r[0] for r in conn.execute("SELECT k FROM t")) == ["a", "b", "c", "d"]
    conn.close()


STEADY_REQUESTS = 6000


@pytest.mark.parametrize("writers", [pytest.param(1, id="one-store"),
                                     pytest.param(2, id="two-stores-one-file")])
async def test_the_wal_starts_over_under_steady_writes(tmp_path: Path, writers: int) -> None:
    """Passive checkpoints alone never catch up with a writer that never pauses, and the
    log would grow without bound; past the threshold it is made to start over, also when
    two stores (as two workers would) write to the same file."""
    stores = [SQLiteStore(str(tmp_path / "steady.db")) for _ in range(writers)]
    for store in stores:
        store.checkpoint_interval_s = 0.02
        store.wal_restart_frames = 200
        await store.open()
    try:
        app = (await stores[0].create_app(name="shop", mode="test", origins=())).app
        wal = Path(stores[0].path + "-wal")
        largest = 0
        done = 0
        loop = asyncio.get_running_loop()
        # A number of requests, not a time: a busy machine serves fewer a second, and
        # the log's size is about requests, not seconds (bounded in time all the same).
        deadline = loop.time() + 30.0

        async def writer(n: int) -> None:
            nonlocal done
            store = stores[n % writers]
            while done < STEADY_REQUESTS and loop.time() < deadline:
                hold = await store.reserve(hold_request(app.id, f"u{n}", want=10, cap=10**12))
                await store.settle(settlement(hold.id, 5))
                done += 1

        async def watch() -> None:
            nonlocal largest
            while done < STEADY_REQUESTS and loop.time() < deadline:
                largest = max(largest, wal.stat().st_size if wal.exists() else 0)
                await asyncio.sleep(0.01)

        await asyncio.gather(*(writer(n) for n in range(8)), watch())
    finally:
        for store in stores:
            await store.close()
    await consistent(stores[0].path)
    # Each request appends several 4 KB pages (over 10 KB): without restarts the log
    # would hold them all (about 80 MB here). It stays near the threshold instead (200
    # frames, 0.8 MB), plus what the writers append until a restart gets its turn (a
    # few MB at most, seen early in the run). A quarter of the no-restart size tells
    # the two apart.
    assert done >= STEADY_REQUESTS, done
    assert largest < STEADY_REQUESTS * 10 * 1024 // 4, largest
