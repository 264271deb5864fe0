"""Moving a SQLite deployment to PostgreSQL: everything arrives, the totals are checked,
and a copy that cannot be made writes nothing."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.store.copy import CopyError, copy_sqlite_to_postgres
from gateway.store.sqlite import SQLiteStore

from .backends import PostgresBackend, SQLiteBackend
from .helpers import hold_request, settlement, this_month


async def fill(path: str) -> dict[str, str]:
    """A SQLite store with a little of everything; what to look for afterwards."""
    store = SQLiteStore(path)
    await store.open()
    try:
        created = await store.create_app(name="shop", mode="live", origins=("http://a.test",))
        app = created.app
        account = await store.create_account(email="ada@x.test", password_hash="h",
                                             budget_nano=5_000)
        cid = uuid.uuid4().bytes
        await store.create_consent(cid, app_id=app.id, user_id="u1", cap_nano=3_000,
                                   origin="http://a.test", expires_at=int(time.time()) + 60)
        await store.finish_consent(cid, approve=True, account_id=account.id, cap_nano=3_000,
                                   now=int(time.time()))
        for cost in (100, 250, 4_000):  # the last one is clamped: the operator pays the rest
            hold = await store.reserve(hold_request(app.id, "u1", want=1_000, auto=False))
            await store.settle(settlement(hold.id, cost))
        await store.create_web_session(b"s" * 32, account_id=account.id,
                                       expires_at=int(time.time()) + 600)
        await store.create_account(email="bob@x.test", password_hash="h", budget_nano=0)
        await store.set_account_status("bob@x.test", "disabled")
        secret = await store.secret("cookie_signing")
    finally:
        await store.close()
    return {"app": app.id, "account": account.id, "pk": app.publishable_key,
            "secret": secret.hex()}


async def test_everything_moves_and_the_totals_match(tmp_path: Path, pg_url: str) -> None:
    path = str(tmp_path / "old.db")
    seen = await fill(path)
    pg = PostgresBackend(pg_url)
    try:
        report = await copy_sqlite_to_postgres(path, pg_url, schema=pg.schema)
        assert report.rows["ledger"] == 3 and report.rows["apps"] == 1
        assert report.totals["ledger.cost_nano"] == 3_000  # 100 + 250 + 2,650 (the cap)
        store = pg.new_store()
        await store.open()
        try:
            app = await store.app_by_publishable_key(seen["pk"])
            assert app is not None and app.origins == ("http://a.test",)
            conn = await store.connection(seen["app"], "u1")
            assert conn is not None and (conn.settled_nano, conn.remaining_nano) == (3_000, 0)
            rows = await store.ledger(seen["app"], "u1")
            assert sorted(r.operator_nano for r in rows) == [0, 0, 1_350]
            spend = await store.account_spend(seen["account"], this_month())
            assert (spend.settled_nano, spend.remaining_nano) == (3_000, 2_000)
            found = await store.account_by_web_session(b"s" * 32, now=int(time.time()))
            assert found is not None and found.email == "ada@x.test"
            assert (await store.secret("cookie_signing")).hex() == seen["secret"]
            bob = await store.account_by_email("bob@x.test")
            assert bob is not None and bob.status == "disabled"
            # The copy carries on as a live store: new ledger rows, new holds.
            assert await store.set_connection_cap(seen["account"], app_id=seen["app"],
                                                  user_id="u1", cap_nano=10_000)
            hold = await store.reserve(hold_request(seen["app"], "u1", want=10, auto=False))
            await store.settle(settlement(hold.id, 10))
            assert len(await store.ledger(seen["app"], "u1")) == 4
        finally:
            await store.close()
        with pytest.raises(CopyError, match="not empty"):
            await copy_sqlite_to_postgres(path, pg_url, schema=pg.schema)
    finally:
        await pg.drop()


async def test_open_holds_refuse_the_copy(tmp_path: Path, pg_url: str) -> None:
    path = str(tmp_path / "busy.db")
    seen = await fill(path)
    running = SQLiteStore(path)
    await running.open()
    pg = PostgresBackend(pg_url)
    try:
        await running.reserve(hold_request(seen["app"], "u1", want=0, minimum=0, auto=False))
        with pytest.raises(CopyError, match="still run on this SQLite file"):
            await copy_sqlite_to_postgres(path, pg_url, schema=pg.schema)
        assert await pg.rows("SELECT to_regclass('apps') IS NULL") == [(True,)]  # untouched
    finally:
        await running.close()
        await pg.drop()


async def test_a_dead_processs_user_funded_hold_arrives_booked_to_its_funder(
    tmp_path: Path, pg_url: str
) -> None:
    """Holds never move (the copy refuses while one is open); one a dead process left is
    settled first, to its own funder, and that ledger row is what arrives."""
    path = str(tmp_path / "crashed.db")
    seen = await fill(path)
    crashed = SQLiteStore(path)
    await crashed.open()
    funder = "account:" + seen["account"]
    hold = await crashed.reserve(hold_request(seen["app"], "u1", want=0, minimum=0,
                                              auto=False, funded_by=funder))
    await SQLiteBackend(tmp_path, name="crashed.db").kill(crashed)
    await crashed.close()  # its instance row stays: it had a hold open
    pg = PostgresBackend(pg_url)
    try:
        report = await copy_sqlite_to_postgres(path, pg_url, schema=pg.schema)
        assert report.reconciled_holds == 1 and report.rows["ledger"] == 4
        assert await pg.rows(
            "SELECT funded_by, status FROM ledger WHERE request_id = "  # noqa: S608 (test-made id)
            f"'{hold.id.removeprefix('hold_')}'"
        ) == [(funder, "reconciled")]
    finally:
        await pg.drop()


def test_the_command_line_copies_and_reports(
    tmp_path: Path, pg_url: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    path = tmp_path / "cli.db"
    asyncio.run(fill(str(path)))
    schema = "copy_" + uuid.uuid4().hex[:10]
    pg = PostgresBackend(pg_url)
    pg.schema = schema
    config = tmp_path / "w.toml"
    config.write_text(f'[store]\npath = "{path}"\nurl_env = "TARGET_DB"\n')
    separator = "&" if "?" in pg_url else "?"
    asyncio.run(pg.execute(f'CREATE SCHEMA "{schema}"'))
    try:
        monkeypatch.setenv("TARGET_DB", f"{pg_url}{separator}search_path={schema}")
        assert main(["store", "copy", "--to", "postgres", "--config", str(config)]) == 0
        out = capsys.readouterr().out
        assert '"verified": true' in out and '"ledger": 3' in out
        monkeypatch.delenv("TARGET_DB")
        assert main(["store", "copy", "--to", "postgres", "--config", str(config)]) == 2
        assert "TARGET_DB is not set" in capsys.readouterr().err
    finally:
        asyncio.run(pg.drop())
