"""Shared fixtures: a real SQLite store in a temporary folder, and a PostgreSQL server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pgcluster import database_url_for_tests

from gateway.store.sqlite import SQLiteStore


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(str(tmp_path / "wattfare.db"))
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A PostgreSQL server's URL for the whole run (see :mod:`tests.pgcluster`)."""
    with database_url_for_tests() as url:
        yield url
