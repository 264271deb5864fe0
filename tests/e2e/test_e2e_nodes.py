"""Several gateway nodes on one PostgreSQL database: every promise holds across them.

Two ``wattfare serve`` processes share a schema of the test server: streams on both
against one cap never overspend it, a revocation on one cuts a stream on the other, a key
rolled through one is refused by the other at once, and a node killed with -9 has its
holds settled by the survivor within its lease.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gateway.store.postgres_schema import MIGRATIONS
from gateway.tokens import mint_session_token

from .harness import (
    AppKeys,
    BackgroundStream,
    FakeUpstream,
    Gateway,
    GatewayConfig,
    chat_body,
    is_content,
    secret_headers,
    wait_until,
)
from .pgnodes import (
    CHAT,
    assert_consistent,
    assert_the_race_kept_the_cap,
    kill_mid_stream,
    race_for_one_cap,
    rows,
    schema_of_its_own,
)

pytestmark = pytest.mark.e2e

NANO = 1_000_000_000
LEASE_S = 5.0


@pytest.fixture(scope="module")
def database(pg_url: str) -> Iterator[str]:
    """A schema of its own on the test server, as the nodes' database URL."""
    with schema_of_its_own(pg_url) as url:
        yield url


@pytest.fixture(scope="module")
def nodes(
    tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream, database: str
) -> Iterator[list[Gateway]]:
    config = GatewayConfig(database_url=database, lease_s=LEASE_S, checkpoint_interval_s=0.2)
    started: list[Gateway] = []
    try:
        for _ in range(2):
            node = Gateway(workdir=tmp_path_factory.mktemp("node"), upstream_api=fake.api,
                           config=config)
            node.start()
            started.append(node)
        yield started
    finally:
        for node in started:
            node.stop()
    for node in started:
        assert "Traceback" not in node.stderr(), node.stderr()[-8000:]


@pytest.fixture(scope="module")
def app(nodes: list[Gateway]) -> AppKeys:
    return nodes[0].create_app("shop-" + uuid.uuid4().hex[:6])


@pytest.fixture
def user_id() -> str:
    return "user-" + uuid.uuid4().hex[:16]


def session(app: AppKeys, user_id: str, cap_nano: int) -> dict[str, str]:
    token = mint_session_token(app.secret_key, user_id, monthly_usd=cap_nano / NANO).token
    return {"Authorization": f"Bearer {token}"}


# Each stream holds about 15,900 nano-USD (see test_e2e_caps): the cap fits a few at once,
# so the two nodes race each other for what is left of it.
STREAMS = 24
CHUNKS = 20
CAP_NANO = 60_000


async def test_streams_on_two_nodes_never_overspend_one_cap(
    nodes: list[Gateway], database: str, app: AppKeys, user_id: str
) -> None:
    results = await race_for_one_cap(
        nodes, session(app, user_id, CAP_NANO), streams=STREAMS, chunks=CHUNKS,
        delay_s=lambda i: (i % 8) * 0.05,
    )
    await assert_the_race_kept_the_cap(database, user_id, results, cap_nano=CAP_NANO)


def test_a_revocation_on_one_node_cuts_a_stream_on_the_other(
    nodes: list[Gateway], database: str, app: AppKeys, user_id: str
) -> None:
    headers = secret_headers(app, user_id)
    stream = BackgroundStream(nodes[0].url + CHAT, headers=headers,
                              body=chat_body("hi", chunks=80, gap_ms=200))
    try:
        assert stream.wait_for_content(2, timeout=10)
        deleted = httpx.delete(nodes[1].url + "/v1/connection", headers=headers, timeout=10)
        revoked_at = time.monotonic()
        assert deleted.status_code == 200 and deleted.json()["status"] == "revoked"
    finally:
        stream.join(timeout=30)
    error_at, error = next((at, e) for at, e in stream.events if b'"error"' in e)
    assert b'"code":"connection_revoked"' in error
    # A notice crosses at once; one 200 ms chunk may be on its way meanwhile.
    assert error_at - revoked_at < 1.0
    assert sum(is_content(e) for e in stream.after(revoked_at)) <= 2
    assert_consistent(database)
    [(status, code)] = rows(database, "SELECT status, error_code FROM ledger WHERE user_id = $1",
                            user_id)
    assert (status, code) == ("cut_revoked", "connection_revoked")


def test_a_key_rolled_through_one_node_is_refused_by_the_other(
    nodes: list[Gateway], user_id: str
) -> None:
    keys = nodes[0].create_app("roll-" + uuid.uuid4().hex[:6])
    old = {"Authorization": f"Bearer {keys.secret_key}", "Wattfare-User": user_id}
    # The other node has the app's credentials cached.
    assert httpx.get(nodes[1].url + "/v1/connection", headers=old, timeout=10).status_code == 200
    rolled = nodes[0].roll_key(keys.app_id)
    rolled_at = time.monotonic()
    new = {"Authorization": f"Bearer {rolled.secret_key}", "Wattfare-User": user_id}

    def refused() -> bool:
        return httpx.get(nodes[1].url + "/v1/connection", headers=old,
                         timeout=10).status_code == 401

    assert wait_until(refused, timeout=1.0, interval=0.02)
    assert time.monotonic() - rolled_at < 1.0
    chat = httpx.post(nodes[1].url + CHAT, json=chat_body("hi", stream=False), headers=old,
                      timeout=10)
    assert chat.status_code == 401
    assert httpx.post(nodes[1].url + CHAT, json=chat_body("hi", stream=False), headers=new,
                      timeout=20).status_code == 200


def test_a_node_killed_mid_stream_is_reconciled_by_the_other(
    nodes: list[Gateway], database: str, app: AppKeys, user_id: str
) -> None:
    victim, survivor = nodes
    headers = secret_headers(app, user_id)
    # The survivor settles the hold once the victim's lease lapses (a few seconds here,
    # lease_s in production: within half a minute by default).
    kill_mid_stream(victim, database, headers, user_id, within_s=3 * LEASE_S + 5)
    # The survivor serves the same user on; the victim comes back on the same database.
    assert httpx.post(survivor.url + CHAT, json=chat_body("after", stream=False),
                      headers=headers, timeout=20).status_code == 200
    victim.start()
    assert_consistent(database)


def test_nodes_share_one_schema_version(database: str, nodes: list[Gateway]) -> None:
    assert rows(database, "SELECT version FROM wattfare_schema") == [(len(MIGRATIONS),)]
    live = rows(database, "SELECT count(*) FROM instances")[0][0]
    assert live >= len(nodes)
    assert Path(nodes[0].config_path).read_text().count('backend = "postgres"') == 1
