"""The store interface: everything the gateway keeps, behind protocols split by concern.

- :class:`MeteringStore`: connections and the money moving through holds;
- :class:`AppStore`: apps and their keys;
- :class:`AccountStore`: end-user accounts, browser sessions, consent links, the dashboard;
- :class:`SecretStore`: secrets the gateway generates for itself;
- :class:`Store`: all of them, with the life cycle (open, close, heartbeat).

The chat path depends on the first two only.

Money is integer nano-USD throughout. A request moves money in three steps:

1. :meth:`MeteringStore.reserve` takes a *hold* against the connection's cap for the
   month (refusing with ``spend_cap_reached`` when not even the minimum fits); the month
   is the store's own (the database's clock where there is a server);
2. :meth:`MeteringStore.extend` grows the hold while a stream runs, and records how much
   the stream has used so far (a checkpoint that survives a crash);
3. :meth:`MeteringStore.settle` turns the hold into a charge and one ledger row,
   atomically; or :meth:`MeteringStore.defer` keeps the hold, with the finished
   request's settlement, until the upstream's own record of its cost can be read
   (:meth:`MeteringStore.claim_lookups`, :meth:`MeteringStore.retry_lookup`).

Holds whose process died are charged their last checkpoint by
:meth:`MeteringStore.reconcile_stale_holds`, or looked up like deferred ones when the
upstream named the generation. Invariant, whatever the concurrency: a connection's
settled total for a month never exceeds its cap; what the upstream reports beyond that is
recorded in the ledger as the operator's. The arithmetic is :mod:`gateway.store.rules`,
shared by every backend.

A connection approved by an end user belongs to their *account*, whose monthly budget
covers all its connections. Such a request is charged against both, in the same
transactions: a hold is at most what remains of the cap *and* of the budget, an extension
likewise, and settlement clamps against both, so neither settled total ever exceeds its
limit. Connections without an account (test mode's auto-approval on first API use) are
charged against their cap alone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal, Protocol

from gateway.keys import KeyPair, Mode

ConnectionStatus = Literal["connected", "revoked"]
# An app is active (its keys work), disabled by the operator (refused, reversible), or
# deleted while it had a ledger (refused for good; the ledger rows stay for reports).
AppStatus = Literal["active", "disabled", "deleted"]
# An account is active, disabled by the operator (no sign-in, connections revoked), or
# deleted by its owner (email and password erased, ledger kept).
AccountStatus = Literal["active", "disabled", "deleted"]


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


class AppDeleted(StoreError):
    """The app was deleted: it cannot be enabled or edited any more."""


class AppInUse(StoreError):
    """The app has a ledger or requests in flight, so deleting it needs ``force``."""

    def __init__(self, ledger_rows: int, open_holds: int) -> None:
        super().__init__(f"{ledger_rows} ledger rows, {open_holds} open holds")
        self.ledger_rows = ledger_rows
        self.open_holds = open_holds


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
class AppStats:
    """What an app has: its connections, requests in flight, ledger and this month."""

    connected: int
    revoked: int
    open_holds: int
    ledger_rows: int
    settled_nano: int
    held_nano: int
    period: str


@dataclass(frozen=True, slots=True)
class AppDeletion:
    """What :meth:`Store.delete_app` did. ``erased``: the app had no ledger and is gone
    with its connections; otherwise it is marked deleted, every connection revoked, and
    its ledger rows kept."""

    app: App
    erased: bool
    revoked: int


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
    model: str
    want_nano: int
    min_nano: int
    # Test-mode apps connect on first use with this cap; None means live mode (no
    # connection → NoConnection). ``requested_cap_nano`` is what the session asked for.
    auto_connect: bool
    requested_cap_nano: int | None
    default_cap_nano: int
    # Who pays the upstream (see :class:`Settlement`), kept with the hold: whoever
    # settles or looks it up later (after a crash, on another node) uses the same funder.
    funded_by: str = "operator"


@dataclass(frozen=True, slots=True)
class Hold:
    id: str
    amount_nano: int
    period: str  # the month it is charged to, by the store's clock
    funded_by: str = "operator"


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
    cost_source: str  # one of COST_SOURCES
    prompt_tokens: int
    completion_tokens: int
    status: str  # "ok", "cut_cap", "cut_revoked", "client_disconnected", "upstream_error", …
    http_status: int
    error_code: str | None
    ttfb_ms: float | None
    duration_ms: float
    generation_id: str | None
    # Who paid the upstream: "operator", or "account:<id>" for a user-funded request.
    funded_by: str = "operator"


# Where a ledger row's cost came from: the upstream's usage report, its record of the
# generation looked up afterwards, tokens × the configured price, the gateway's running
# estimate, or a crashed request's last checkpoint.
COST_SOURCES = ("upstream", "generation", "tokens", "estimate", "reconciled")


@dataclass(frozen=True, slots=True)
class PendingLookup:
    """A deferred hold claimed by this instance: the upstream's record of
    ``generation_id`` is to be read, and the hold settled to it, or to ``fallback`` when
    the look-up gives up. ``attempts`` counts the look-ups tried so far."""

    hold_id: str
    request_id: str
    generation_id: str
    attempts: int
    fallback: Settlement


@dataclass(frozen=True, slots=True)
class Change:
    """One recorded change (see :class:`ChangeFeed`); ``user_id`` is "" for an app's."""

    seq: int
    kind: str
    app_id: str
    user_id: str


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
    funded_by: str = "operator"


@dataclass(frozen=True, slots=True)
class Account:
    """An end user of the gateway's own pages: the holder of a monthly budget."""

    id: str
    email: str
    password_hash: str
    budget_nano: int
    created_at: int
    status: AccountStatus = "active"


@dataclass(frozen=True, slots=True)
class AccountSummary:
    """An account as the operator lists it: its connections and this month's spend."""

    account: Account
    connections: int
    settled_nano: int
    held_nano: int
    period: str


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
    funded_by: str = "operator"


# A hold of this instance older than this, whose request is no longer live, is an orphan.
ORPHAN_AFTER_S = 60


@dataclass(frozen=True, slots=True)
class UsageRow:
    """One ledger row of an account, for its owner's export: ``seq`` orders the rows
    and pages through them (:meth:`Store.account_usage`)."""

    seq: int
    request_id: str
    created_at: int
    app_id: str
    app_name: str
    user_id: str
    period: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    cost_nano: int
    status: str
    funded_by: str = "operator"


# What a deleted account's password hash becomes: no hash, so no password matches it.
DELETED_PASSWORD_HASH = "!deleted"  # noqa: S105 (not a hash of anything)


def deleted_email(account_id: str) -> str:
    """What a deleted account's email becomes: unique, and never an address (no "@"),
    so nobody signs in as it and the address is free for a new account."""
    return "deleted:" + account_id


@dataclass(frozen=True, slots=True)
class FundingSource:
    """A person's own upstream account that pays for their requests: the key it issued
    is kept only sealed (:mod:`gateway.funding.vault`); ``problem`` is the last refusal
    the upstream gave it (``out_of_credit``, ``key_limit``, ``key_revoked``), if any."""

    id: str
    account_id: str
    provider: str  # "openrouter"
    label: str
    kek_id: str
    wrapped_key: bytes
    ciphertext: bytes
    created_at: int
    problem: str | None = None
    problem_at: int | None = None


@dataclass(frozen=True, slots=True)
class FundingAttempt:
    """One "connect a funding source" attempt under way: bound to the browser session
    that started it (a hash of its id) and usable once, until ``expires_at``."""

    state_hash: bytes
    session_hash: bytes
    account_id: str
    provider: str
    verifier_hash: bytes
    return_to: str
    created_at: int
    expires_at: int


@dataclass(frozen=True, slots=True)
class UsageQuery:
    """Which ledger rows a usage report covers (None: all)."""

    period: str | None = None
    app_id: str | None = None
    user_id: str | None = None
    model: str | None = None


@dataclass(frozen=True, slots=True)
class UsageSum:
    """Ledger rows summed for one month, app, user and model (integers, exact)."""

    period: str
    app_id: str
    user_id: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cost_nano: int
    upstream_cost_nano: int
    operator_nano: int


@dataclass(frozen=True, slots=True)
class UsagePage:
    """One slice of the ledger, in ledger order, summed: ``scanned`` rows up to and
    including row ``last_id`` (0 when the slice was empty)."""

    rows: list[UsageSum]
    scanned: int
    last_id: int


def period_of(epoch_s: float) -> str:
    """The calendar month (UTC) a moment falls in, as ``YYYY-MM``."""
    t = time.gmtime(epoch_s)
    return f"{t.tm_year:04d}-{t.tm_mon:02d}"


class MeteringStore(Protocol):
    """Connections and the money moving through holds: what the chat path charges."""

    async def connection(
        self, app_id: str, user_id: str, period: str | None = None
    ) -> ConnectionState | None:
        """The connection and its spend in ``period`` (None: the store's current month)."""
        ...

    async def revoke(self, app_id: str, user_id: str) -> bool:
        """Revoke the connection (a "revoked" change); False if there is none."""
        ...

    async def reserve(self, req: HoldRequest) -> Hold: ...
    async def extend(self, hold_id: str, *, add_nano: int, used_nano: int) -> Extension: ...

    def note_generation(self, hold_id: str, generation_id: str) -> asyncio.Future[None]:
        """Keep the upstream's generation id with the hold, for a look-up after a crash:
        queued at once with the store's next commit, without a task of its own (a stream
        calls this and goes on). The future is done when it is committed; awaiting it is
        optional."""
        ...

    async def settle(self, settlement: Settlement) -> Charge | None:
        """Charge the hold and write its ledger row; None if it is settled already."""
        ...

    async def defer(self, settlement: Settlement, *, retry_in_s: float) -> None:
        """The request is over but its cost awaits the upstream's record: the hold stays
        (the cap stays safe), ``settlement`` is kept with it as the fall-back, durably,
        and a look-up is due in ``retry_in_s`` (by the store's clock)."""
        ...

    async def claim_lookups(self, *, limit: int, lease_s: float) -> list[PendingLookup]:
        """Up to ``limit`` deferred holds whose look-up is due (this instance's or any
        other's), and the holds of dead instances that have a generation id (deferred
        now, their fall-back the last checkpoint, ``cost_source`` "reconciled"). Claimed
        holds move to this instance and are not due again for ``lease_s``, so no two
        instances work on one at once."""
        ...

    async def retry_lookup(self, hold_id: str, *, retry_in_s: float) -> None:
        """A look-up failed: try again in ``retry_in_s`` (one more attempt counted)."""
        ...

    async def reconcile_stale_holds(self, *, live_request_ids: Collection[str] = ()) -> int:
        """Settle to their last checkpoint ("reconciled") the holds of dead instances
        that have no generation id, and this instance's own holds that are neither
        deferred, nor of a request in ``live_request_ids``, and older than
        ``ORPHAN_AFTER_S`` (with a generation id, those are deferred for a look-up
        instead). Returns how many holds it settled or deferred."""
        ...

    async def open_holds(self) -> int:
        """How many holds exist (of every instance)."""
        ...

    async def ledger(self, app_id: str, user_id: str, *, limit: int = 100) -> list[LedgerRow]: ...


class AppStore(Protocol):
    """Apps and their keys."""

    async def create_app(self, *, name: str, mode: Mode, origins: tuple[str, ...]) -> NewApp: ...
    async def list_apps(self) -> list[App]: ...
    async def roll_key(self, app: str) -> NewApp: ...
    async def app_by_publishable_key(self, publishable_key: str) -> App | None: ...
    async def app_by_secret_hash(self, secret_hash: bytes) -> App | None: ...


class AccountStore(Protocol):
    """End-user accounts, their browser sessions, consent links and the dashboard."""

    async def create_account(
        self, *, email: str, password_hash: str, budget_nano: int
    ) -> Account: ...
    async def account_by_email(self, email: str) -> Account | None: ...
    async def set_account_budget(self, email: str, budget_nano: int) -> Account | None: ...
    async def list_accounts(self, period: str) -> list[AccountSummary]: ...
    async def set_account_status(
        self, email: str, status: Literal["active", "disabled"]
    ) -> tuple[Account, int] | None:
        """Disable or enable an account; None if there is none (or its owner deleted it).
        Disabling signs it out everywhere and revokes its connections (open streams cut);
        the count returned is how many were revoked. Enabling lets it sign in again; its
        apps ask anew."""
        ...
    async def account_spend(self, account_id: str, period: str) -> AccountSpend: ...
    async def create_web_session(
        self, token_hash: bytes, *, account_id: str, expires_at: int
    ) -> None: ...
    async def account_by_web_session(self, token_hash: bytes, *, now: int) -> Account | None: ...
    async def delete_web_session(self, token_hash: bytes) -> None: ...
    async def end_web_sessions(self, account_id: str) -> int:
        """Sign the account out of every browser; how many sessions ended."""
        ...
    async def set_password(self, account_id: str, password_hash: str) -> int:
        """Replace the account's password hash and end all its browser sessions, in one
        transaction (a stolen session does not outlive a password change); how many
        sessions ended."""
        ...
    async def delete_account(self, account_id: str) -> list[tuple[str, str]]:
        """Delete an account, in one transaction: every connection of it is revoked
        (recorded as revocation events, as :meth:`revoke` does), its browser sessions
        end, its funding source and connect attempts are deleted, and its email and
        password hash are erased (:func:`deleted_email`,
        :data:`DELETED_PASSWORD_HASH`). The money record stays: its ledger rows, budget
        and monthly totals are the operator's and the apps' accounting, and a request
        still running settles against the budget it was admitted under. Returns the
        ``(app_id, user_id)`` of the connections it revoked."""
        ...

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

    async def account_usage(
        self, account_id: str, *, after: int = 0, limit: int = 1000, period: str | None = None
    ) -> list[UsageRow]:
        """The account's ledger rows with ``seq`` above ``after``, oldest first, at most
        ``limit``; only the month ``period`` (``YYYY-MM``) when given."""
        ...

    # an account's funding source (its own upstream key, sealed) and connect attempts
    async def save_funding_source(self, source: FundingSource) -> None:
        """Store the account's source, replacing the one it had (one per account)."""
        ...
    async def funding_source(self, account_id: str) -> FundingSource | None: ...
    async def connection_funding(self, app_id: str, user_id: str) -> FundingSource | None:
        """The source of the account the connection belongs to, if it has one."""
        ...
    async def delete_funding_source(self, account_id: str) -> bool: ...
    async def set_funding_problem(
        self, source_id: str, *, problem: str | None, at: int
    ) -> None: ...
    async def funding_sources(self) -> list[FundingSource]: ...
    async def rewrap_funding_source(
        self, source_id: str, *, old_kek_id: str, kek_id: str, wrapped_key: bytes
    ) -> bool:
        """Replace a source's wrapped data key if it is still wrapped by ``old_kek_id``."""
        ...
    async def create_funding_attempt(self, attempt: FundingAttempt) -> None: ...
    async def take_funding_attempt(
        self, state_hash: bytes, *, session_hash: bytes
    ) -> FundingAttempt | None:
        """The attempt if it was started by that browser session, deleted in the same
        step (an attempt is used once); None, and nothing deleted, otherwise."""
        ...


class AppAdminStore(Protocol):
    """Apps as the operator manages them: looked up by id or name, inspected, disabled,
    their origins edited, deleted."""

    async def find_app(self, app: str) -> App | None:
        """By id or name, whatever its status."""
        ...
    async def app_stats(self, app_id: str, period: str) -> AppStats: ...
    async def set_app_status(self, app: str, status: Literal["active", "disabled"]) -> App:
        """Disable or enable an app (raises :class:`UnknownApp`, :class:`AppDeleted`).
        Disabling also posts a revocation event for each connection with a request in
        flight, so every process cuts the app's open streams."""
        ...
    async def update_app_origins(
        self, app: str, *, add: tuple[str, ...] = (), remove: tuple[str, ...] = ()
    ) -> App:
        """Add and remove registered origins in one transaction (raises
        :class:`UnknownApp`, :class:`AppDeleted`)."""
        ...
    async def delete_app(self, app: str, *, force: bool) -> AppDeletion:
        """An app with no ledger rows and nothing in flight is erased with its
        connections and consent links. Otherwise :class:`AppInUse`, unless ``force``:
        then it is marked deleted (refused for good), every connection is revoked (open
        streams cut), unused consent links go, and the ledger stays."""
        ...


class ReportStore(Protocol):
    """Reports over the ledger (the operator's usage command)."""

    async def usage_count(self, query: UsageQuery) -> int:
        """How many ledger rows ``query`` covers."""
        ...

    async def usage(self, query: UsageQuery, *, after_id: int, limit: int) -> UsagePage:
        """The next ``limit`` ledger rows ``query`` covers after row ``after_id``, summed
        by month, app, user and model."""
        ...


class SecretStore(Protocol):
    """The gateway's own secrets (generated on first use, then kept)."""

    async def secret(self, name: str, *, size: int = 32) -> bytes: ...


class ChangeFeed(Protocol):
    """Changes any node made that every node must act on: ``revoked`` (cut the
    connection's streams), ``key_rolled`` and ``app_disabled`` (forget cached
    credentials of the app), ``cap`` and ``connected`` (nothing cached: for the record).
    Recorded in the same transaction as the change itself."""

    async def changes(self) -> list[Change]:
        """The changes recorded since the previous call, oldest first; the first call
        starts the feed and returns none."""
        ...

    async def wait_for_changes(self, *, at_most_s: float) -> None:
        """Return once a change may have been recorded (another node's notice), or after
        ``at_most_s`` seconds."""
        ...


class ChatStore(MeteringStore, AppStore, Protocol):
    """What the chat path needs: apps and keys, and the money."""


class Store(
    MeteringStore,
    AppStore,
    AppAdminStore,
    AccountStore,
    ReportStore,
    SecretStore,
    ChangeFeed,
    Protocol,
):
    """What every backend provides. All methods are safe to call concurrently."""

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...
    async def heartbeat(self) -> None:
        """Renew this instance's lease: its holds are its own while it lives."""
        ...
