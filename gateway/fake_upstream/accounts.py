"""Who pays: people with credits, the keys issued to them, and the ledger of every bill.

Any bearer key the server accepts is billed in the ledger under that key (nano-USD, exact:
every catalog price is a whole number of nano-USD per token). Keys issued through the
OAuth PKCE flow (`oauth.py`) also belong to a person, and their bills come out of that
person's credits, as OpenRouter bills a user-controlled key:

- a request is refused with 402 when the person's remaining credits (or the key's
  remaining limit, whichever is less) cannot pay its worst case: the prompt plus its
  `max_tokens` (or the model's largest completion) at the model's prices; with OpenRouter's
  wording, "This request requires more credits, or fewer max_tokens. You requested up to N
  tokens, but can only afford M. …";
- a key whose usage reached its limit gets 403 "Key limit exceeded (total limit). …";
- a revoked key, like an unknown one, gets 401 "User not found.".

Like OpenRouter, admission reads the balance and does not reserve it, so requests already
running when it runs out can take it below zero.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

from gateway.fake_upstream.encoding import dumps
from gateway.fake_upstream.wire import json_number, random_id

__all__ = ["Accounts", "IssuedKey", "Person", "Refusal", "to_nano", "usd_of"]

NANO_PER_USD: Final = Decimal(1_000_000_000)
MAX_BILLS: Final = 10_000
"""How many generations' bills `GET /_fake/ledger?id=` remembers, oldest out first."""
_CREDITS_URL: Final = "https://openrouter.ai/settings/credits"
_KEYS_URL: Final = "https://openrouter.ai/settings/keys"


def to_nano(usd: Decimal) -> int:
    """`usd` as whole nano-USD; ValueError when it is not a whole number of them."""
    nano = usd * NANO_PER_USD
    if nano != nano.to_integral_value():
        raise ValueError(f"{usd} USD is not a whole number of nano-USD")
    return int(nano)


def usd_of(value: object) -> int:
    """A JSON number or numeric string of USD as whole nano-USD (ValueError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("must be a number of USD")
    try:
        amount = Decimal(repr(value) if isinstance(value, float) else str(value))
    except ArithmeticError:
        raise ValueError("must be a number of USD") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError("must be a non-negative number of USD")
    return to_nano(amount)


def _usd(nano: int) -> Any:
    return json_number(Decimal(nano) / NANO_PER_USD)


@dataclass(slots=True)
class Person:
    """An account with credits; `usage_nano` is what its keys were billed."""

    user_id: str
    credits_nano: int
    usage_nano: int = 0

    @property
    def remaining_nano(self) -> int:
        return self.credits_nano - self.usage_nano

    def as_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "credits_nano_usd": self.credits_nano,
            "usage_nano_usd": self.usage_nano,
            "remaining_nano_usd": self.remaining_nano,
        }


@dataclass(slots=True)
class IssuedKey:
    """A key billed to a person, with an optional limit of its own."""

    key: str
    user_id: str
    limit_nano: int | None
    usage_nano: int = 0
    revoked: bool = False

    @property
    def label(self) -> str:
        return f"{self.key[:11]}...{self.key[-3:]}"


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a request is not served: its HTTP status and OpenRouter's message."""

    status: int
    message: str


@dataclass(slots=True)
class _Bill:
    billed_nano: int = 0
    requests: int = 0
    lookups: int = 0


class Accounts:
    """People, issued keys and the per-key ledger of one server."""

    __slots__ = ("_bills", "_by_id", "_default_credits_nano", "_keys", "_people")

    def __init__(self, *, default_credits_nano: int) -> None:
        self._default_credits_nano = default_credits_nano
        self._people: dict[str, Person] = {}
        self._keys: dict[str, IssuedKey] = {}
        self._bills: dict[str, _Bill] = {}
        self._by_id: OrderedDict[str, tuple[str, int]] = OrderedDict()

    def person(self, user_id: str) -> Person:
        """The person `user_id`, created with the default credits on first mention."""
        found = self._people.get(user_id)
        if found is None:
            found = self._people[user_id] = Person(user_id, self._default_credits_nano)
        return found

    def new_user_id(self) -> str:
        """A fresh id of OpenRouter's form, `user_<27 letters and digits>`."""
        return "user_" + random_id(27)

    def issue(self, user_id: str, *, limit_nano: int | None) -> IssuedKey:
        """A new key billed to `user_id`."""
        self.person(user_id)
        issued = IssuedKey("sk-or-v1-" + secrets.token_hex(32), user_id, limit_nano)
        self._keys[issued.key] = issued
        return issued

    def account_of(self, key: str) -> str:
        """The account `key` belongs to: its person's for an issued key; any other key
        (the operator's) is an account of its own."""
        issued = self._keys.get(key)
        return "user:" + issued.user_id if issued is not None else "key:" + key

    def looked_up(self, key: str) -> None:
        """Count a generation look-up made with `key`."""
        bill = self._bills.get(key)
        if bill is None:
            bill = self._bills[key] = _Bill()
        bill.lookups += 1

    def issued(self, key: str) -> IssuedKey | None:
        """The issued key `key` (revoked or not), or None for any other key."""
        return self._keys.get(key)

    def refusal(
        self, key: str, *, bound: int, prompt_nano: int, completion_price_nano: int
    ) -> Refusal | None:
        """Why `key` may not run a request of this worst case, or None when it may."""
        issued = self._keys.get(key)
        if issued is None:
            return None
        if issued.revoked:
            return Refusal(401, "User not found.")
        if issued.limit_nano is not None and issued.usage_nano >= issued.limit_nano:
            return Refusal(403, f"Key limit exceeded (total limit). Manage it using {_KEYS_URL}")
        worst = prompt_nano + bound * completion_price_nano
        if worst == 0:
            return None
        person = self.person(issued.user_id)
        if person.remaining_nano <= 0:
            return Refusal(402, f"Insufficient credits. Add more using {_CREDITS_URL}")
        afford, by_limit = person.remaining_nano, False
        if issued.limit_nano is not None and issued.limit_nano - issued.usage_nano < afford:
            afford, by_limit = issued.limit_nano - issued.usage_nano, True
        if worst <= afford:
            return None
        tokens = max(0, (afford - prompt_nano) // max(completion_price_nano, 1))
        remedy = (
            f"visit {_KEYS_URL} and create a key with a higher limit"
            if by_limit
            else f"visit {_CREDITS_URL} and add more credits"
        )
        return Refusal(
            402,
            "This request requires more credits, or fewer max_tokens. You requested up to "
            f"{bound} tokens, but can only afford {tokens}. To increase, {remedy}",
        )

    def bill(self, key: str, cost_nano: int, generation_id: str) -> None:
        """Record a generation billed `cost_nano` to `key` (and to its person, if issued)."""
        if len(self._by_id) >= MAX_BILLS:
            self._by_id.popitem(last=False)
        self._by_id[generation_id] = (key, cost_nano)
        bill = self._bills.get(key)
        if bill is None:
            bill = self._bills[key] = _Bill()
        bill.billed_nano += cost_nano
        bill.requests += 1
        issued = self._keys.get(key)
        if issued is not None:
            issued.usage_nano += cost_nano
            self.person(issued.user_id).usage_nano += cost_nano

    def _key_entry(self, key: str) -> dict[str, Any]:
        bill = self._bills.get(key) or _Bill()
        issued = self._keys.get(key)
        return {
            "billed_nano_usd": bill.billed_nano,
            "requests": bill.requests,
            "lookups": bill.lookups,
            "user_id": issued.user_id if issued else None,
            "limit_nano_usd": issued.limit_nano if issued else None,
            "revoked": issued.revoked if issued else False,
        }

    def bill_json(self, generation_id: str) -> bytes | None:
        """One generation's bill, `{"id", "key", "billed_nano_usd"}`, or None if unknown."""
        found = self._by_id.get(generation_id)
        if found is None:
            return None
        return dumps({"id": generation_id, "key": found[0], "billed_nano_usd": found[1]})

    def ledger_json(self, key: str | None = None) -> bytes:
        """The ledger: every key's bill and every person's credits (or one key's entry)."""
        if key is not None:
            return dumps({"key": key, **self._key_entry(key)})
        keys = set(self._bills) | set(self._keys)
        return dumps(
            {
                "total_nano_usd": sum(b.billed_nano for b in self._bills.values()),
                "keys": {k: self._key_entry(k) for k in sorted(keys)},
                "people": {u: p.as_json() for u, p in sorted(self._people.items())},
            }
        )

    def key_json(self, key: str) -> bytes:
        """`GET /api/v1/key` for `key`: OpenRouter's `{"data": {...}}` (usage never resets)."""
        issued = self._keys.get(key)
        bill = self._bills.get(key) or _Bill()
        usage = _usd(bill.billed_nano)
        limit = issued.limit_nano if issued else None
        remaining = None if limit is None or issued is None else limit - issued.usage_nano
        zero = _usd(0)
        return dumps(
            {
                "data": {
                    "label": issued.label if issued else f"{key[:11]}...{key[-3:]}",
                    "limit": None if limit is None else _usd(limit),
                    "limit_remaining": None if remaining is None else _usd(remaining),
                    "limit_reset": None,
                    "include_byok_in_limit": False,
                    "usage": usage,
                    "usage_daily": usage,
                    "usage_weekly": usage,
                    "usage_monthly": usage,
                    "byok_usage": zero,
                    "byok_usage_daily": zero,
                    "byok_usage_weekly": zero,
                    "byok_usage_monthly": zero,
                    "is_free_tier": False,
                    "is_management_key": False,
                    "is_provisioning_key": False,
                    "expires_at": None,
                    "creator_user_id": issued.user_id if issued else None,
                    "rate_limit": {
                        "requests": -1,
                        "interval": "10s",
                        "note": "This field is deprecated and safe to ignore.",
                    },
                }
            }
        )
