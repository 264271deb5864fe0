"""The money rules, as pure functions of the rows a backend read inside its transaction.

Every backend reads the same few numbers under its own lock (the app's key version and
status; the connection's cap, status and account; the month's settled and held totals of
the connection and, when it has one, of its account), asks these functions what to do,
and writes what they say. So "a connection's settled total never exceeds its cap" and
"an account's settled total never exceeds its budget" are written here, once:

- a hold is at most what remains of the cap and of the budget (:func:`admit`);
- an extension likewise, and nothing once the connection is revoked (:func:`grant`);
- a settlement charges at most what would remain if this hold were released, and the
  rest of the upstream's figure is the operator's (:func:`charge`).

Each holds for any order of steps, as long as each step sees the totals as the steps
before it left them: which is what the backends' transactions guarantee.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gateway.store.base import (
    CapReached,
    Charge,
    ConnectionStatus,
    Extension,
    HoldRequest,
    NoConnection,
    Revoked,
    StaleCredential,
)


@dataclass(frozen=True, slots=True)
class Pool:
    """A monthly limit (a connection's cap, an account's budget) and what is settled and
    held against it this month."""

    limit_nano: int
    settled_nano: int
    held_nano: int

    def room(self, *, releasing: int = 0) -> int:
        """What remains, not counting ``releasing`` of the held total (a hold being
        settled)."""
        held = max(0, self.held_nano - releasing)
        return max(0, self.limit_nano - self.settled_nano - held)


@dataclass(frozen=True, slots=True)
class ConnectionRow:
    """A connection as read for a money step."""

    cap_nano: int
    status: ConnectionStatus
    account_id: str | None


@dataclass(frozen=True, slots=True)
class Admission:
    """What :func:`admit` decided: the hold's amount, and what to write about the
    connection (``"insert"`` a test-mode auto-connection, ``"update_cap"`` re-approve the
    cap a test-mode session asks for, or nothing)."""

    amount_nano: int
    cap_nano: int
    write: Literal["insert", "update_cap"] | None
    account_id: str | None


def connection_cap(
    req: HoldRequest, conn: ConnectionRow | None
) -> tuple[int, Literal["insert", "update_cap"] | None]:
    """The cap a request is held against, and whether test mode connects the user (first
    use) or re-approves the cap the session asks for.

    Raises :class:`NoConnection` (live mode, never connected) or :class:`Revoked`.
    """
    if conn is None:
        if not req.auto_connect:
            raise NoConnection(req.user_id)
        cap = req.requested_cap_nano
        return (req.default_cap_nano if cap is None else cap), "insert"
    if conn.status == "revoked":
        raise Revoked(req.user_id)
    if (
        req.auto_connect
        and conn.account_id is None  # a cap a person chose is theirs to change
        and req.requested_cap_nano is not None
        and req.requested_cap_nano != conn.cap_nano
    ):
        return req.requested_cap_nano, "update_cap"
    return conn.cap_nano, None


def admit(
    req: HoldRequest,
    *,
    app_key_version: int | None,
    app_status: str | None,
    conn: ConnectionRow | None,
    settled_nano: int,
    held_nano: int,
    account: Pool | None,
) -> Admission:
    """The hold a request gets: ``want_nano`` or what remains of the cap and the budget,
    whichever is least. Every refusal is raised before anything is written.

    ``app_key_version``/``app_status`` are None when the app is gone; ``settled_nano`` and
    ``held_nano`` are the connection's totals this month (0 when it has none yet);
    ``account`` is the budget of the account the connection belongs to, if any.
    """
    if app_key_version is None or app_status != "active" or app_key_version != req.key_version:
        raise StaleCredential(req.app_id)
    cap, write = connection_cap(req, conn)
    remaining = Pool(cap, settled_nano, held_nano).room()
    budget_binds = False
    if account is not None:
        room = account.room()
        budget_binds = room < remaining
        remaining = min(remaining, room)
    # A free model's minimum is 0: it is admitted even with nothing left.
    if remaining < req.min_nano:
        raise CapReached(remaining, budget=budget_binds)
    return Admission(
        amount_nano=min(max(0, req.want_nano), remaining),
        cap_nano=cap,
        write=write,
        account_id=None if conn is None else conn.account_id,
    )


def grant(
    add_nano: int, *, status: ConnectionStatus, cap: Pool, account: Pool | None
) -> Extension:
    """How much a running hold may grow by: at most ``add_nano`` and what remains of the
    cap and the budget; nothing once the connection is revoked."""
    if status == "revoked":
        return Extension(granted_nano=0, revoked=True)
    room = cap.room()
    if account is not None:
        room = min(room, account.room())
    return Extension(granted_nano=max(0, min(add_nano, room)), revoked=False)


def charge(cost_nano: int, *, hold_nano: int, cap: Pool, account: Pool | None) -> Charge:
    """What a settling hold charges the user: the upstream's figure, up to what the cap
    (and the budget) would leave if the hold were released; the rest is the operator's.

    ``cap`` and ``account`` are read with this hold still counted in their held totals.
    """
    cost = max(0, cost_nano)
    allowed = cap.room(releasing=hold_nano)
    if account is not None:
        allowed = min(allowed, account.room(releasing=hold_nano))
    charged = min(cost, allowed)
    return Charge(charged_nano=charged, operator_nano=cost - charged)


def checkpoint(used_before: int, used_now: int) -> int:
    """A hold's checkpoint only moves forward (what a crashed stream is charged)."""
    return max(used_before, used_now, 0)
