"""Looks into the PostgreSQL database that several gateway nodes share, for the
multi-node tests: its rows read directly, the invariants checked, a schema per module."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg

from .harness import wait_until


def rows(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    async def fetch() -> list[tuple[Any, ...]]:
        con = await asyncpg.connect(url)
        try:
            return [tuple(r) for r in await con.fetch(sql, *args)]
        finally:
            await con.close()

    return asyncio.run(fetch())


def assert_consistent(url: str, *, timeout: float = 5.0) -> None:
    """No hold left; for every connection and month, the ledger adds up to what is
    settled, and that is within the cap."""
    settled = wait_until(lambda: rows(url, "SELECT count(*) FROM holds")[0][0] == 0,
                         timeout=timeout, interval=0.1)
    assert settled, rows(url, "SELECT id, instance_id, amount_nano, used_nano FROM holds")
    for app_id, user, period, total, held, cap, ledger in rows(
        url,
        "SELECT s.app_id, s.user_id, s.period, s.settled_nano, s.held_nano, c.cap_nano, "
        "(SELECT COALESCE(sum(l.cost_nano), 0) FROM ledger l WHERE l.app_id = s.app_id "
        " AND l.user_id = s.user_id AND l.period = s.period) "
        "FROM spend s LEFT JOIN connections c ON c.app_id = s.app_id AND c.user_id = s.user_id",
    ):
        where = f"{app_id}/{user}/{period}"
        assert held == 0, where
        assert total == ledger, f"{where}: settled {total} != ledger {ledger}"
        assert cap is not None and total <= cap, f"{where}: settled {total} > cap {cap}"


@contextlib.contextmanager
def schema_of_its_own(server_url: str, prefix: str = "nodes_") -> Iterator[str]:
    """A fresh schema on the server at ``server_url``, as a database URL for nodes to
    share; dropped afterwards."""
    schema = prefix + uuid.uuid4().hex[:10]
    rows(server_url, f'CREATE SCHEMA "{schema}"')
    separator = "&" if "?" in server_url else "?"
    try:
        yield f"{server_url}{separator}search_path={schema}"
    finally:
        rows(server_url, f'DROP SCHEMA "{schema}" CASCADE')
