"""Fixtures of the end-to-end suite: one simulated upstream for the session, one gateway
(with its own database) and one test app per module, a fresh user id per test.

A module that needs other gateway settings overrides ``gateway_config``.
"""

from __future__ import annotations

import uuid
from collections.abc import Generator, Iterator

import httpx
import openai
import pytest

from .harness import AppKeys, FakeUpstream, Gateway, GatewayConfig, assert_consistent

# Long enough for a generation look-up's retries against the simulated upstream.
HOLDS_TIMEOUT_S = 20.0


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # A failing test shows what the gateway logged: most failures are explained there.
    report: pytest.TestReport = yield
    gateway = getattr(item, "funcargs", {}).get("gateway")
    if report.failed and isinstance(gateway, Gateway):
        report.sections.append(("gateway stderr (tail)", gateway.stderr()[-8000:]))
    return report


@pytest.fixture(autouse=True)
def _no_hold_left(request: pytest.FixtureRequest) -> Iterator[None]:
    """The invariant every end-to-end test keeps: once its requests are done, the store
    holds no money for any of them (looked-up costs included) and its totals agree."""
    yield
    if "gateway" in request.fixturenames:
        gateway = request.getfixturevalue("gateway")
        if isinstance(gateway, Gateway) and gateway.running:
            assert_consistent(gateway.db, timeout=HOLDS_TIMEOUT_S)


@pytest.fixture(scope="session")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    upstream = FakeUpstream.start(tmp_path_factory.mktemp("fake") / "stderr.log")
    try:
        yield upstream
    finally:
        upstream.stop()


@pytest.fixture(scope="module")
def gateway_config() -> GatewayConfig:
    return GatewayConfig()


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream, gateway_config: GatewayConfig
) -> Iterator[Gateway]:
    gw = Gateway(
        workdir=tmp_path_factory.mktemp("gateway"), upstream_api=fake.api, config=gateway_config
    )
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()
    # Whatever the tests provoked, the gateway must have handled it, not crashed on it.
    assert "Traceback" not in gw.stderr(), gw.stderr()[-8000:]


@pytest.fixture(scope="module")
def app(gateway: Gateway) -> AppKeys:
    """A test-mode app (consent auto-approved)."""
    return gateway.create_app("shop")


@pytest.fixture
def user_id() -> str:
    """A user of its own per test, so tests share a gateway without sharing a cap."""
    return "user-" + uuid.uuid4().hex[:16]


@pytest.fixture
def http(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=20) as client:
        yield client


@pytest.fixture
def client(gateway: Gateway, app: AppKeys, user_id: str) -> Iterator[openai.OpenAI]:
    """The official SDK on the secret key, acting for this test's user."""
    with openai.OpenAI(
        base_url=gateway.url + "/v1",
        api_key=app.secret_key,
        max_retries=0,
        timeout=20,
        default_headers={"Wattfare-User": user_id},
    ) as sdk:
        yield sdk
