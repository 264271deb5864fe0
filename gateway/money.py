"""Money units: integer nano-USD inside the gateway, USD numbers only at its edges.

Prices are kept as integer pico-USD per token (OpenRouter's cheapest prices are
fractions of a nano-USD per token); a cost is rounded *up* to whole nano-USD, so an
estimate never undercounts. Every USD amount the gateway accepts (config, session
claims, the sessions API, pages, the command line) goes through :func:`usd_to_nano`, so
they all share one range and one rounding.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from typing import Any, Final

NANO_PER_USD: Final = 1_000_000_000
PICO_PER_NANO: Final = 1000
PICO_PER_USD: Final = 1_000_000_000_000
# The largest amount (USD) any cap, budget or price may name.
MAX_USD: Final = 1e9


def usd_to_nano(value: Any) -> int:
    """A USD amount from 0 to :data:`MAX_USD` (a JSON/TOML number) as nano-USD.

    Raises ValueError saying what is allowed (the caller names the field)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not 0 <= value <= MAX_USD
    ):
        raise ValueError(f"must be a number from 0 to {MAX_USD:g} (USD), got {value!r}")
    return round(Decimal(repr(value)) * NANO_PER_USD)


def parse_usd(text: str) -> int | None:
    """A USD amount as typed by a person or on a command line (``7.5``, `` $1,000 ``)
    as nano-USD; None when it is not one :func:`usd_to_nano` accepts."""
    try:
        value = float(text.strip().lstrip("$").replace(",", ""))
    except ValueError:
        return None
    try:
        return usd_to_nano(value)
    except ValueError:
        return None


def nano_to_usd(nano: int) -> float:
    """Nano-USD as a USD number, for the API edge only."""
    return nano / NANO_PER_USD


def reported_usd_to_nano(value: Any) -> int | None:
    """A cost the upstream reported (USD, a JSON number) as nano-USD rounded up; None
    when it is not a finite, non-negative number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    if value < 0:
        return None
    return math.ceil(Decimal(repr(value)) * NANO_PER_USD)


def pico_per_token(value: Any) -> int | None:
    """A price per token in USD (a string such as ``"0.00000015"`` or a number) as
    pico-USD; None if it is not a finite, non-negative number (OpenRouter's ``"-1"``
    means variable)."""
    try:
        usd = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return None
    if not usd.is_finite() or usd < 0:
        return None
    return math.ceil(usd * PICO_PER_USD)


def pico_per_token_from_per_million(usd_per_million: float) -> int:
    """A configured price (USD per million tokens) as pico-USD per token."""
    return math.ceil(Decimal(repr(usd_per_million)) * PICO_PER_USD / 1_000_000)
