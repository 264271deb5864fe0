"""Looks into the PostgreSQL database that several gateway nodes share, for the
multi-node tests: its rows read directly, the invariants checked, a schema per module;
and the steps the two- and three-node tests share (streams racing for one cap, a node
killed mid-stream)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from .harness import BackgroundStream, Gateway, chat_body, data_events, wait_until

CHAT = "/v1/chat/completions"


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


async def race_for_one_cap(
    nodes: list[Gateway], headers: dict[str, str], *, streams: int, chunks: int,
    delay_s: Callable[[int], float],
) -> list[tuple[int, int, bytes]]:
    """``streams`` streams on one connection, stream ``i`` on node ``i % len(nodes)``
    after ``delay_s(i)``: (node, status, body) of each."""
    limits = httpx.Limits(max_connections=streams, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as http:

        async def one(i: int) -> tuple[int, int, bytes]:
            body = {**chat_body("hi", chunks=chunks, chunk_text=("a", "tok ")[i % 2],
                                gap_ms=20), "max_tokens": chunks,
                    "stream_options": {"include_usage": True}}
            await asyncio.sleep(delay_s(i))
            node = i % len(nodes)
            response = await http.post(nodes[node].url + CHAT, json=body, headers=headers)
            return node, response.status_code, response.content

        return await asyncio.gather(*(one(i) for i in range(streams)))


async def assert_the_race_kept_the_cap(
    database: str, user_id: str, results: list[tuple[int, int, bytes]], *, cap_nano: int
) -> None:
    """Some streams served, some refused, none cut short; the store consistent, one
    ledger row a served stream, and what is settled within the cap: overshoot none."""
    statuses = [status for _, status, _ in results]
    assert set(statuses) <= {200, 402}, statuses
    assert statuses.count(200) >= 3 and statuses.count(402) >= 1, statuses
    for _, status, content in results:
        if status == 200:
            assert data_events(content)[-1] == "[DONE]"
    await asyncio.to_thread(assert_consistent, database)
    [(total,)] = await asyncio.to_thread(
        rows, database, "SELECT COALESCE(sum(settled_nano), 0) FROM spend WHERE user_id = $1",
        user_id,
    )
    ledger = await asyncio.to_thread(
        rows, database, "SELECT cost_nano FROM ledger WHERE user_id = $1", user_id,
    )
    assert len(ledger) == statuses.count(200), ledger
    assert total == sum(cost for (cost,) in ledger), ledger
    assert total <= cap_nano  # overshoot: exactly none


def kill_mid_stream(
    victim: Gateway, database: str, headers: dict[str, str], user_id: str, *,
    within_s: float,
) -> None:
    """Kill ``victim`` with -9 in the middle of a checkpointed stream of ``user_id``;
    another node settles its hold within ``within_s``, to the upstream's record of the
    generation (its id was kept with the hold), not to the victim's last checkpoint."""
    stream = BackgroundStream(victim.url + CHAT, headers=headers,
                              body=chat_body("hi", chunks=100, gap_ms=100))
    assert stream.wait_for_content(5, timeout=10)
    assert wait_until(
        lambda: rows(database, "SELECT used_nano FROM holds WHERE user_id = $1",
                     user_id)[0][0] > 0,
        timeout=5, interval=0.05,
    )
    victim.stop(kill=True)
    killed_at = time.monotonic()
    with pytest.raises(httpx.TransportError):
        stream.join(timeout=10)
    assert wait_until(
        lambda: rows(database, "SELECT count(*) FROM holds")[0][0] == 0,
        timeout=within_s, interval=0.1,
    )
    assert time.monotonic() - killed_at < within_s
    [(status, source, code, cost)] = rows(
        database, "SELECT status, cost_source, error_code, cost_nano FROM ledger "
        "WHERE user_id = $1", user_id,
    )
    assert (status, source, code) == ("reconciled", "generation", "process_lost")
    assert cost > 0
    assert_consistent(database)
