"""A request's funding: whose upstream key pays for it, resolved once per request.

With ``"user"`` among ``funding.modes`` this costs one store read per request (the
connection's account's source, read before the hold is reserved, so that the hold records
its funder and a refusal leaves no hold): a disconnect in any process stops the next
request everywhere. Opening a sealed key is cached per source (sources are never edited,
only replaced under a new id), so the hot path does no cryptography after a source's
first request.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from gateway.config import FundingSettings
from gateway.errors import FundingUnavailable
from gateway.funding.vault import Sealed, Vault, VaultError
from gateway.keys import Mode
from gateway.store.base import FundingSource, Store

log = logging.getLogger("wattfare.funding")

CACHE_LIMIT = 10_000

REASONS = {
    "none": "This user has not connected a funding source (their own OpenRouter account); "
            "they can connect one on their Wattfare dashboard.",
    "out_of_credit": "This user's OpenRouter account is out of credit; they can add "
                     "credit on OpenRouter, then try again.",
    "key_limit": "This user's OpenRouter key reached its spending limit; they can raise "
                 "it on OpenRouter or reconnect OpenRouter on their Wattfare dashboard.",
    "key_revoked": "This user's OpenRouter key was revoked or is no longer valid; they "
                   "can reconnect OpenRouter on their Wattfare dashboard.",
    "unreadable": "This user's funding source cannot be read by the gateway; they can "
                  "reconnect OpenRouter on their Wattfare dashboard.",
}


def unavailable(reason: str) -> FundingUnavailable:
    return FundingUnavailable(REASONS[reason], reason=reason)


def funded_by_account(account_id: str) -> str:
    return "account:" + account_id


# Who paid a request, as its account's owner is told (the usage export's ``paid_by``).
OWN, OPERATOR_PAID, OTHER = "own_openrouter", "operator", "other_account"


def paid_by(funded_by: str, account_id: str) -> str:
    """A ledger row's ``funded_by`` seen by the owner of ``account_id``: their own
    OpenRouter account, the operator, or (a connection that changed hands while one of
    its requests ran) someone else's."""
    if funded_by == funded_by_account(account_id):
        return OWN
    return OPERATOR_PAID if funded_by == "operator" else OTHER


@dataclass(frozen=True, slots=True)
class Funding:
    """Who pays: ``key`` None means the operator's key."""

    funded_by: str
    key: str | None = None
    source_id: str | None = None
    problem: str | None = None


OPERATOR = Funding(funded_by="operator")


def record_of(source: FundingSource) -> str:
    """What a source's sealed key is bound to (see :class:`Vault`)."""
    return f"{source.id}\x00{source.account_id}"


def sealed_of(source: FundingSource) -> Sealed:
    return Sealed(
        kek_id=source.kek_id, wrapped_key=source.wrapped_key, ciphertext=source.ciphertext
    )


class Funder:
    """Resolves a request's funding under the configured modes."""

    def __init__(self, settings: FundingSettings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.vault = Vault(settings.keyring) if settings.keyring else None
        self._keys: dict[str, str] = {}

    async def resolve(
        self, *, app_id: str, user_id: str, mode: Mode, upstream_kind: str
    ) -> Funding:
        """The request's funding; raises :class:`FundingUnavailable` when the person
        must pay and cannot. A person's key is an OpenRouter key: requests routed to
        another kind of upstream (a local server) are the operator's."""
        settings = self.settings
        if (
            not settings.user or upstream_kind != "openrouter"
            or (mode == "test" and settings.test_apps_operator_funded)
        ):
            return OPERATOR
        source = await self.store.connection_funding(app_id, user_id)
        if source is None:
            if settings.operator:
                return OPERATOR
            raise unavailable("none")
        return Funding(
            funded_by=funded_by_account(source.account_id), key=self._key_of(source),
            source_id=source.id, problem=source.problem,
        )

    async def key_for(self, funded_by: str) -> str | None:
        """The key of ``"account:<id>"``'s source now (None: the operator's, or gone);
        for looking up a user-funded generation after its request ended."""
        if not funded_by.startswith("account:"):
            return None
        source = await self.store.funding_source(funded_by.removeprefix("account:"))
        if source is None:
            return None
        try:
            return self._key_of(source)
        except FundingUnavailable:
            return None

    def _key_of(self, source: FundingSource) -> str:
        key = self._keys.get(source.id)
        if key is not None:
            return key
        if self.vault is None:
            raise unavailable("unreadable")
        try:
            key = self.vault.open(sealed_of(source), record=record_of(source))
            key.encode("latin-1")  # it goes into a header
        except (VaultError, UnicodeError):
            log.error("funding source %s of %s does not open", source.id, source.account_id)
            raise unavailable("unreadable") from None
        if len(self._keys) >= CACHE_LIMIT:
            self._keys.clear()
        self._keys[source.id] = key
        return key

    async def refused(self, funding: Funding, reason: str) -> None:
        """The upstream refused the person's key: keep the reason for their dashboard."""
        if funding.source_id is not None and funding.problem != reason:
            await self._note(funding.source_id, reason)

    async def worked(self, funding: Funding) -> None:
        """A request on a source the dashboard shows a problem for went through."""
        if funding.source_id is not None and funding.problem is not None:
            await self._note(funding.source_id, None)

    async def _note(self, source_id: str, problem: str | None) -> None:
        # A notice for the dashboard: failing to keep it changes no answer.
        try:
            await self.store.set_funding_problem(
                source_id, problem=problem, at=int(time.time())
            )
        except Exception:
            log.exception("could not record the state of funding source %s", source_id)

    def forget(self, source_id: str) -> None:
        self._keys.pop(source_id, None)
