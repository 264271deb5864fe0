"""The money rules alone: each decision, and the invariants under any order of steps."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.store import rules
from gateway.store.base import (
    CapReached,
    ConnectionStatus,
    HoldRequest,
    NoConnection,
    Revoked,
    StaleCredential,
)

from .helpers import hold_request


def connected(cap: int, account: str | None = None) -> rules.ConnectionRow:
    return rules.ConnectionRow(cap_nano=cap, status="connected", account_id=account)


def admit(
    req: HoldRequest,
    *,
    conn: rules.ConnectionRow | None,
    settled_nano: int,
    held_nano: int,
    account: rules.Pool | None,
) -> rules.Admission:
    """The rules' admission for an active app at key version 1."""
    return rules.admit(
        req,
        app_key_version=1,
        app_status="active",
        conn=conn,
        settled_nano=settled_nano,
        held_nano=held_nano,
        account=account,
    )


def test_pool_room_never_negative_and_can_release() -> None:
    pool = rules.Pool(limit_nano=100, settled_nano=60, held_nano=30)
    assert pool.room() == 10
    assert pool.room(releasing=30) == 40
    assert rules.Pool(100, 120, 0).room() == 0  # a cap lowered below what was spent
    assert rules.Pool(100, 0, 10).room(releasing=50) == 100


def test_admit_takes_the_least_of_want_cap_and_budget() -> None:
    req = hold_request("app", "u", want=500, auto=False)
    got = admit(
        req,
        conn=connected(1000, "acct"),
        settled_nano=200,
        held_nano=100,
        account=rules.Pool(300, 50, 0),
    )
    assert (got.amount_nano, got.write, got.account_id) == (250, None, "acct")
    got = admit(req, conn=connected(1000), settled_nano=0, held_nano=0, account=None)
    assert got.amount_nano == 500


def test_admit_refuses_before_writing() -> None:
    req = hold_request("app", "u", want=100, minimum=60, auto=False)
    with pytest.raises(StaleCredential):
        rules.admit(
            req,
            app_key_version=2,
            app_status="active",
            conn=None,
            settled_nano=0,
            held_nano=0,
            account=None,
        )
    with pytest.raises(StaleCredential):
        rules.admit(
            req,
            app_key_version=None,
            app_status=None,
            conn=None,
            settled_nano=0,
            held_nano=0,
            account=None,
        )
    with pytest.raises(StaleCredential):
        rules.admit(
            req,
            app_key_version=1,
            app_status="disabled",
            conn=connected(10),
            settled_nano=0,
            held_nano=0,
            account=None,
        )
    with pytest.raises(NoConnection):
        admit(req, conn=None, settled_nano=0, held_nano=0, account=None)
    with pytest.raises(Revoked):
        admit(
            req,
            conn=rules.ConnectionRow(1000, "revoked", None),
            settled_nano=0,
            held_nano=0,
            account=None,
        )
    with pytest.raises(CapReached) as cap:
        admit(req, conn=connected(1000), settled_nano=950, held_nano=0, account=None)
    assert (cap.value.remaining_nano, cap.value.budget) == (50, False)
    with pytest.raises(CapReached) as budget:
        admit(
            req,
            conn=connected(1000, "a"),
            settled_nano=0,
            held_nano=0,
            account=rules.Pool(100, 50, 0),
        )
    assert (budget.value.remaining_nano, budget.value.budget) == (50, True)


def test_test_mode_connects_on_first_use_and_reapproves_its_own_caps() -> None:
    first = hold_request("app", "u", want=10, cap=None)
    got = admit(first, conn=None, settled_nano=0, held_nano=0, account=None)
    assert (got.write, got.cap_nano) == ("insert", 500)  # the configured default
    asked = hold_request("app", "u", want=10, cap=2000)
    got = admit(asked, conn=connected(1000), settled_nano=0, held_nano=0, account=None)
    assert (got.write, got.cap_nano) == ("update_cap", 2000)
    # A cap a person chose (the connection has an account) is theirs to change.
    got = admit(
        asked,
        conn=connected(1000, "acct"),
        settled_nano=0,
        held_nano=0,
        account=rules.Pool(10**6, 0, 0),
    )
    assert (got.write, got.cap_nano) == (None, 1000)
    same = hold_request("app", "u", want=10, cap=1000)
    assert (
        admit(same, conn=connected(1000), settled_nano=0, held_nano=0, account=None).write is None
    )


def test_a_free_model_is_admitted_with_nothing_left() -> None:
    req = hold_request("app", "u", want=0, minimum=0, auto=False)
    got = admit(req, conn=connected(100), settled_nano=100, held_nano=0, account=None)
    assert got.amount_nano == 0


def test_grant_and_charge() -> None:
    assert (
        rules.grant(
            300, status="connected", cap=rules.Pool(1000, 500, 400), account=None
        ).granted_nano
        == 100
    )
    revoked = rules.grant(300, status="revoked", cap=rules.Pool(1000, 0, 0), account=None)
    assert (revoked.granted_nano, revoked.revoked) == (0, True)
    assert (
        rules.grant(
            300, status="connected", cap=rules.Pool(1000, 0, 0), account=rules.Pool(100, 0, 50)
        ).granted_nano
        == 50
    )
    over = rules.charge(2000, hold_nano=900, cap=rules.Pool(1000, 0, 1000), account=None)
    assert (over.charged_nano, over.operator_nano) == (900, 1100)
    clamped = rules.charge(
        150, hold_nano=100, cap=rules.Pool(1000, 0, 100), account=rules.Pool(100, 0, 100)
    )
    assert (clamped.charged_nano, clamped.operator_nano) == (100, 50)
    assert (
        rules.charge(-5, hold_nano=10, cap=rules.Pool(100, 0, 10), account=None).charged_nano == 0
    )
    assert rules.checkpoint(50, 20) == 50 and rules.checkpoint(50, 70) == 70


# -- invariants under arbitrary interleavings ---------------------------------------------


@dataclass
class Totals:
    limit: int
    settled: int = 0
    held: int = 0

    def pool(self) -> rules.Pool:
        return rules.Pool(self.limit, self.settled, self.held)


@dataclass
class Model:
    """A store in miniature: each step reads the totals, asks the rules, writes."""

    caps: list[Totals]
    budget: Totals
    holds: dict[int, tuple[int, int]] = field(default_factory=dict)  # id -> (conn, amount)
    revoked: set[int] = field(default_factory=set)
    next_id: int = 0

    def reserve(self, conn: int, want: int, minimum: int) -> None:
        req = hold_request("app", f"u{conn}", want=want, minimum=minimum, auto=False)
        cap = self.caps[conn]
        status: ConnectionStatus = "revoked" if conn in self.revoked else "connected"
        try:
            got = rules.admit(
                req,
                app_key_version=1,
                app_status="active",
                conn=rules.ConnectionRow(cap.limit, status, "acct"),
                settled_nano=cap.settled,
                held_nano=cap.held,
                account=self.budget.pool(),
            )
        except (CapReached, Revoked):
            return
        cap.held += got.amount_nano
        self.budget.held += got.amount_nano
        self.holds[self.next_id] = (conn, got.amount_nano)
        self.next_id += 1

    def extend(self, pick: int, add: int) -> None:
        if not self.holds:
            return
        hold_id = sorted(self.holds)[pick % len(self.holds)]
        conn, amount = self.holds[hold_id]
        status: ConnectionStatus = "revoked" if conn in self.revoked else "connected"
        ext = rules.grant(
            add, status=status, cap=self.caps[conn].pool(), account=self.budget.pool()
        )
        self.caps[conn].held += ext.granted_nano
        self.budget.held += ext.granted_nano
        self.holds[hold_id] = (conn, amount + ext.granted_nano)

    def settle(self, pick: int, cost: int) -> None:
        if not self.holds:
            return
        hold_id = sorted(self.holds)[pick % len(self.holds)]
        conn, amount = self.holds.pop(hold_id)
        cap = self.caps[conn]
        got = rules.charge(cost, hold_nano=amount, cap=cap.pool(), account=self.budget.pool())
        assert got.charged_nano + got.operator_nano == max(0, cost)
        for totals in (cap, self.budget):
            totals.held -= amount
            totals.settled += got.charged_nano

    def check(self) -> None:
        for n, cap in enumerate(self.caps):
            assert cap.settled <= cap.limit, (n, cap)
            assert cap.held == sum(a for c, a in self.holds.values() if c == n)
        assert self.budget.settled <= self.budget.limit
        assert self.budget.settled == sum(c.settled for c in self.caps)
        assert self.budget.held == sum(c.held for c in self.caps)


amounts = st.integers(min_value=0, max_value=2_000)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.integers(0, 2), amounts, amounts),
        st.tuples(st.just("extend"), st.integers(0, 50), amounts, st.just(0)),
        st.tuples(st.just("settle"), st.integers(0, 50), st.integers(-10, 5_000), st.just(0)),
        st.tuples(st.just("revoke"), st.integers(0, 2), st.just(0), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(caps=st.lists(amounts, min_size=3, max_size=3), budget=amounts, plan=steps)
def test_settled_never_exceeds_cap_or_budget(
    caps: list[int], budget: int, plan: list[tuple[str, int, int, int]]
) -> None:
    model = Model(caps=[Totals(c) for c in caps], budget=Totals(budget))
    for kind, a, b, c in plan:
        if kind == "reserve":
            model.reserve(a, b, min(b, c))
        elif kind == "extend":
            model.extend(a, b)
        elif kind == "settle":
            model.settle(a, b)
        else:
            model.revoked.add(a)
        model.check()
    for hold_id in list(model.holds):
        model.settle(hold_id, 10**6)  # whatever the upstream says at the end
        model.check()
    assert model.budget.held == 0
