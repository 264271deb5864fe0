"""What a PostgreSQL node remembers of each connection: brought up to date by its own
steps, bounded, and never more than a shortcut."""

from __future__ import annotations

import pytest

from gateway.store import postgres_cache
from gateway.store.postgres_cache import Snapshots

KEY = ("app", "u", "2026-12")
# (key_version, app_status, cap, status, account_id, settled, held, budget, a_settled, a_held)
ROW = (1, "active", 1000, "connected", "acct", 100, 50, 5000, 300, 50)


def test_own_steps_move_the_totals_of_the_connection_and_its_account() -> None:
    s = Snapshots()
    s.put(KEY, ROW)
    s.held(KEY, 200)  # a hold taken
    assert s.get(KEY) == (1, "active", 1000, "connected", "acct", 100, 250, 5000, 300, 250)
    s.held(KEY, -250, settled=120)  # settled
    assert s.get(KEY) == (1, "active", 1000, "connected", "acct", 220, 0, 5000, 420, 0)
    assert s.for_extend(ROW) == (1000, "connected", 100, 50, 5000, 300, 50)
    assert s.for_settle(ROW, 40) == (40, 1000, 100, 50, 5000, 300, 50)


def test_what_a_function_found_replaces_what_was_remembered() -> None:
    s = Snapshots()
    s.put(KEY, ROW)
    s.merge(KEY, (2000, 900, 0, 5000, 900, 0), status="revoked")
    assert s.get(KEY) == (1, "active", 2000, "revoked", "acct", 900, 0, 5000, 900, 0)
    s.merge(("other", "u", "2026-12"), (1, 1, 1, 1, 1, 1))  # unknown: nothing to update
    assert s.get(("other", "u", "2026-12")) is None


def test_it_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(postgres_cache, "MAX_CONNECTIONS", 3)
    monkeypatch.setattr(postgres_cache, "MAX_HOLDS", 2)
    s = Snapshots()
    for n in range(5):
        s.put(("app", f"u{n}", "p"), ROW)
    assert [s.get(("app", f"u{n}", "p")) is not None for n in range(5)] == [
        False, False, True, True, True
    ]
    for n in range(3):
        s.keep_hold(f"h{n}", KEY, n)
    assert s.hold("h2") == (KEY, 2) and s.hold("h0") is None
    s.drop_hold("h2")
    assert s.hold("h2") is None
