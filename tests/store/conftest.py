"""The contract suite's fixtures: every test runs once per backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.store.base import Store

from .backends import Backend, PostgresBackend, SQLiteBackend

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "sqlite":
        yield SQLiteBackend(tmp_path)
        return
    pg = PostgresBackend(request.getfixturevalue("pg_url"))
    try:
        yield pg
    finally:
        await pg.drop()


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    s = backend.new_store()
    await s.open()
    try:
        yield s
    finally:
        await s.close()
