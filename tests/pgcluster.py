"""The PostgreSQL server the tests use: the one ``WATTFARE_TEST_DATABASE_URL`` names, or
a throwaway cluster (:mod:`bench.pgserver`) for the run."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from bench.pgserver import TEST_SETTINGS, URL_ENV, throwaway_cluster

PROBE_TIMEOUT_S = 3.0


@contextlib.contextmanager
def database_url_for_tests() -> Iterator[str]:
    given = os.environ.get(URL_ENV)
    if given:
        yield given
        return
    with throwaway_cluster(settings=TEST_SETTINGS) as cluster:
        yield cluster.url


def with_host(url: str, host: str) -> str:
    """``url`` with its host replaced (user, port, database and options kept)."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    netloc = (f"{user}@" if user else "") + host + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _accepts(url: str) -> bool:
    async def probe() -> None:
        con = await asyncpg.connect(url, timeout=PROBE_TIMEOUT_S)
        await con.close()

    try:
        asyncio.run(probe())
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return False
    return True


@contextlib.contextmanager
def database_url_at(address: str, *, trusted: str) -> Iterator[str]:
    """A server's URL with ``address`` as its host, for clients on the network
    ``trusted`` (CIDR) to reach: the server ``WATTFARE_TEST_DATABASE_URL`` names if it
    accepts connections there, else a throwaway cluster listening there too."""
    given = os.environ.get(URL_ENV)
    if given and _accepts(with_host(given, address)):
        yield with_host(given, address)
        return
    with throwaway_cluster(settings=TEST_SETTINGS, listen=(address,),
                           trusted=(trusted,)) as cluster:
        yield with_host(cluster.url, address)
