"""The store interface: everything the gateway keeps, behind one protocol.

Money is integer nano-USD throughout. A request moves money in three steps:

1. :meth:`Store.reserve` takes a *hold* against the connection's cap for the month
   (refusing with ``spend_cap_reached`` when not even the minimum fits);
2. :meth:`Store.extend` grows the hold while a stream runs, and records how much the
   stream has used so far (a checkpoint that survives a crash);
3. :meth:`Store.settle` turns the hold into a charge and one ledger row, atomically.

Holds whose process died are charged their last checkpoint by
:meth:`Store.reconcile_stale_holds`. Invariant, whatever the concurrency: a connection's
settled total for a month never exceeds its cap; what the upstream reports beyond that is
recorded in the ledger as the operator's.

A connection approved by an end user belongs to their *account*, whose monthly budget
covers all its connections. Such a request is charged against both, in the same
transactions: a hold is at most what remains of the cap *and* of the budget, an extension
likewise, and settlement clamps against both, so neither settled total ever exceeds its
limit. Connections without an account (test mode's auto-approval on first API use) are
charged against their cap alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, Protocol

from gateway.keys import KeyPair, Mode

ConnectionStatus = Literal["connected", "revoked"]


class StoreError(Exception):
    """Base of the store's own refusals (mapped to API errors by the caller)."""


class StaleCredential(StoreError):
    """The app is gone, or its key was rolled after the credential was verified."""


class NoConnection(StoreError):
    """A live-mode app has no connection for this user."""


class Revoked(StoreError):
    """The connection was revoked."""


class CapReached(StoreError):
    """What remains of the cap cannot cover the minimum the request needs."""

    def __init__(self, remaining_nano: int, *, budget: bool = False) -> None:
        super().__init__(f"remaining {remaining_nano} nano-USD")
        self.remaining_nano = remaining_nano
        # True when the account's budget, not the app's cap, is what ran out.
        self.budget = budget


class UnknownApp(StoreError):
    """No app with that id or name."""


class AccountExists(StoreError):
    """An account with that email already exists."""


class ConsentGone(StoreError):
    """A consent link that cannot be used: ``reason`` is unknown, expired or used."""

    def __init__(self, reason: Literal["unknown", "expired", "used"]) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class App:
    id: str
    name: str
    mode: Mode
    publishable_key: str
    secret_hash: bytes
    key_version: int
    origins: tuple[str, ...]
    status: str
    created_at: int


@dataclass(frozen=True, slots=True)
class NewApp:
    """An app as created or rolled: the only moment its secret key exists."""

    app: App
    keys: KeyPair


@dataclass(frozen=True, slots=True)
class ConnectionState:
    app_id: str
    user_id: str
    status: ConnectionStatus
    cap_nano: int
    settled_nano: int
    held_nano: int
    period: str
    # What is left of the budget of the account the connection belongs to (if any):
    # it limits the connection too.
    account_room_nano: int | None = None

    @property
    def remaining_nano(self) -> int:
        own = max(0, self.cap_nano - self.settled_nano - self.held_nano)
        return own if self.account_room_nano is None else min(own, self.account_room_nano)


@dataclass(frozen=True, slots=True)
class HoldRequest:
    request_id: str
    app_id: str
    user_id: str
    key_version: int
    period: str
    model: str
    want_nano: int
    min_nano: int
    # Test-mode apps connect on first use with this cap; None means live mode (no
    # connection → NoConnection). ``requested_cap_nano`` is what the session asked for.
    auto_connect: bool
    requested_cap_nano: int | None
    default_cap_nano: int


@dataclass(frozen=True, slots=True)
class Hold:
    id: str
    amount_nano: int
    period: str


@dataclass(frozen=True, slots=True)
class Extension:
    granted_nano: int
    revoked: bool


@dataclass(frozen=True, slots=True)
class Settlement:
    """What a finished request cost and how it went: becomes one ledger row."""

    hold_id: str
    request_id: str
    model: str
    cost_nano: int
    cost_source: str  # "upstream" | "tokens" | "estimate"
    prompt_tokens: int
    completion_tokens: int
    status: str  # "ok", "cut_cap", "cut_revoked", "client_disconnected", "upstream_error", …
    http_status: int
    error_code: str | None
    ttfb_ms: float | None
    duration_ms: float
    generation_id: str | None


@dataclass(frozen=True, slots=True)
class Charge:
    charged_nano: int
    operator_nano: int


@dataclass(frozen=True, slots=True)
class LedgerRow:
    request_id: str
    app_id: str
    user_id: str
    period: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_nano: int
    upstream_cost_nano: int
    operator_nano: int
    cost_source: str
    status: str
    http_status: int
    error_code: str | None
    ttfb_ms: float | None
    duration_ms: float
    generation_id: str | None
    created_at: int


@dataclass(frozen=True, slots=True)
class Account:
    """An end user of the gateway's own pages: the holder of a monthly budget."""

    id: str
    email: str
    password_hash: str
    budget_nano: int
    created_at: int


@dataclass(frozen=True, slots=True)
class AccountSpend:
    """An account's budget and what its connections spent and hold this month."""

    budget_nano: int
    settled_nano: int
    held_nano: int
    period: str

    @property
    def remaining_nano(self) -> int:
        return max(0, self.budget_nano - self.settled_nano - self.held_nano)


@dataclass(frozen=True, slots=True)
class Consent:
    """A one-time consent link: who asks, for whom, how much, and for which origin."""

    app_id: str
    user_id: str
    cap_nano: int
    origin: str
    created_at: int
    expires_at: int
    used_at: int | None
    outcome: str | None


@dataclass(frozen=True, slots=True)
class AccountConnection:
    """One connection of an account, with its app and this month's spend."""

    app_id: str
    app_name: str
    app_mode: Mode
    user_id: str
    status: ConnectionStatus
    cap_nano: int
    settled_nano: int
    held_nano: int
    period: str
    updated_at: int

    @property
    def remaining_nano(self) -> int:
        if self.status != "connected":
            return 0
        return max(0, self.cap_nano - self.settled_nano - self.held_nano)


@dataclass(frozen=True, slots=True)
class RequestSummary:
    """One ledger row as an account's owner sees it."""

    app_id: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_nano: int
    status: str
    created_at: int


def period_of(epoch_s: float) -> str:
    """The calendar month (UTC) a moment falls in, as ``YYYY-MM``."""
    t = time.gmtime(epoch_s)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}"


class Store(Protocol):
    """What every backend provides. All methods are safe to call concurrently."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...

    # apps and keys
    async def create_app(self, *, name: str, mode: Mode, origins: tuple[str, ...]) -> NewApp: ...
    async def list_apps(self) -> list[App]: ...
    async def roll_key(self, app: str) -> NewApp: ...
    async def app_by_publishable_key(self, publishable_key: str) -> App | None: ...
    async def app_by_secret_hash(self, secret_hash: bytes) -> App | None: ...

    # connections
    async def connection(
        self, app_id: str, user_id: str, period: str
    ) -> ConnectionState | None: ...
    async def revoke(self, app_id: str, user_id: str) -> bool: ...
    async def revocations_since(self, seq: int) -> tuple[int, list[tuple[str, str]]]: ...

    # money
    async def reserve(self, req: HoldRequest) -> Hold: ...
    async def extend(self, hold_id: str, *, add_nano: int, used_nano: int) -> Extension: ...
    async def settle(self, settlement: Settlement) -> Charge | None: ...
    async def reconcile_stale_holds(self) -> int: ...
    async def heartbeat(self) -> None: ...
    async def ledger(self, app_id: str, user_id: str, *, limit: int = 100) -> list[LedgerRow]: ...

    # end-user accounts and their browser sessions
    async def create_account(
        self, *, email: str, password_hash: str, budget_nano: int
    ) -> Account: ...
    async def account_by_email(self, email: str) -> Account | None: ...
    async def set_account_budget(self, email: str, budget_nano: int) -> Account | None: ...
    async def account_spend(self, account_id: str, period: str) -> AccountSpend: ...
    async def create_web_session(
        self, token_hash: bytes, *, account_id: str, expires_at: int
    ) -> None: ...
    async def account_by_web_session(self, token_hash: bytes, *, now: int) -> Account | None: ...
    async def delete_web_session(self, token_hash: bytes) -> None: ...

    # consent links
    async def create_consent(
        self,
        id_hash: bytes,
        *,
        app_id: str,
        user_id: str,
        cap_nano: int,
        origin: str,
        expires_at: int,
    ) -> None: ...
    async def consent(self, id_hash: bytes) -> Consent | None: ...
    async def finish_consent(
        self, id_hash: bytes, *, approve: bool, account_id: str | None, cap_nano: int, now: int
    ) -> Consent:
        """Use the link once: approving creates or updates the connection (status
        connected, the chosen cap, the account if given). Raises :class:`ConsentGone`."""
        ...

    # an account's dashboard
    async def account_connections(
        self, account_id: str, period: str
    ) -> list[AccountConnection]: ...
    async def set_connection_cap(
        self, account_id: str, *, app_id: str, user_id: str, cap_nano: int
    ) -> bool: ...
    async def account_requests(
        self, account_id: str, *, limit: int = 20
    ) -> list[RequestSummary]: ...
    async def account_daily_spend(
        self, account_id: str, *, since: int
    ) -> list[tuple[str, str, int]]:
        """``(app_id, "YYYY-MM-DD", cost_nano)`` per app and UTC day since ``since``."""
        ...

    # the gateway's own secrets (generated on first use, then kept)
    async def secret(self, name: str, *, size: int = 32) -> bytes: ...
