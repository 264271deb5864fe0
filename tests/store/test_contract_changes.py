"""Every backend's change feed: what one instance changes, the others learn within a
second (a revocation cuts streams there, a rolled key empties credential caches)."""

from __future__ import annotations

import asyncio
import time
import uuid

from gateway.store.base import Store

from .backends import Backend
from .helpers import hold_request, settlement


async def test_changes_are_recorded_with_what_they_change(store: Store) -> None:
    assert await store.changes() == []  # the feed starts now
    app = (await store.create_app(name="a", mode="test", origins=())).app
    hold = await store.reserve(hold_request(app.id, "u", want=1))
    await store.settle(settlement(hold.id, 1))
    assert await store.changes() == []  # money moving is not a change
    await store.revoke(app.id, "u")
    await store.revoke(app.id, "u")  # already revoked: nothing new
    await store.roll_key(app.id)
    account = await store.create_account(email="a@x.test", password_hash="h", budget_nano=9)
    cid = uuid.uuid4().bytes
    await store.create_consent(cid, app_id=app.id, user_id="v", cap_nano=5,
                               origin="http://a.test", expires_at=int(time.time()) + 60)
    await store.finish_consent(cid, approve=True, account_id=account.id, cap_nano=5,
                               now=int(time.time()))
    assert await store.set_connection_cap(account.id, app_id=app.id, user_id="v", cap_nano=7)
    changes = await store.changes()
    assert [(c.kind, c.app_id, c.user_id) for c in changes] == [
        ("revoked", app.id, "u"), ("key_rolled", app.id, ""), ("connected", app.id, "v"),
        ("cap", app.id, "v"),
    ]
    assert [c.seq for c in changes] == sorted(c.seq for c in changes)
    assert await store.changes() == []


async def test_another_instance_learns_of_a_change_within_a_second(backend: Backend) -> None:
    a, b = backend.new_store(), backend.new_store()
    await a.open()
    await b.open()
    try:
        app = (await a.create_app(name="a", mode="test", origins=())).app
        hold = await a.reserve(hold_request(app.id, "u", want=1))
        await b.changes()
        waiting = asyncio.create_task(b.wait_for_changes(at_most_s=0.8))
        await asyncio.sleep(0.05)
        started = time.monotonic()
        assert await a.revoke(app.id, "u")
        await waiting
        seen = await b.changes()
        assert time.monotonic() - started < 1.0
        assert [(c.kind, c.user_id) for c in seen] == [("revoked", "u")]
        await a.settle(settlement(hold.id, 1))
    finally:
        await a.close()
        await b.close()
