"""The contract suite's fixtures: every test runs once per backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.store.base import Store

from .backends import Backend, SQLiteBackend

BACKENDS = ["sqlite"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return SQLiteBackend(tmp_path)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    s = backend.new_store()
    await s.open()
    try:
        yield s
    finally:
        await s.close()
