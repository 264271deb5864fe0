"""Fixtures of the simulated upstream's tests: its own process, driven over loopback."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from .helpers import KEY, Upstream, start_upstream


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    yield from start_upstream(tmp_path_factory.mktemp("fake") / "stderr.log")


@pytest.fixture(scope="module")
def keyed_upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    yield from start_upstream(tmp_path_factory.mktemp("keyed") / "stderr.log", "--require-key", KEY)


@pytest.fixture
def client(upstream: Upstream) -> Iterator[httpx.Client]:
    """OpenRouter's paths (`/api/v1`), with the operator's key."""
    headers = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=upstream.api, headers=headers, timeout=10) as c:
        yield c


@pytest.fixture
def openai_client(upstream: Upstream) -> Iterator[httpx.Client]:
    """The OpenAI-compatible paths (`/v1`), without a key, as a local vLLM takes them."""
    with httpx.Client(base_url=upstream.openai, timeout=10) as c:
        yield c


@pytest.fixture
def admin(upstream: Upstream) -> Iterator[httpx.Client]:
    """The server's root, for the test-only `/_fake/…` paths and `/auth`."""
    with httpx.Client(base_url=upstream.root, timeout=10) as c:
        yield c
