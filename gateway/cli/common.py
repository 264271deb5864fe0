"""What every command shares: argument types, output, the store, money as text."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import orjson

from gateway.config import Settings
from gateway.money import MAX_USD, NANO_PER_USD, nano_to_usd, parse_usd
from gateway.store import make_store
from gateway.store.base import Store


def config_arg(parser: argparse.ArgumentParser) -> None:
    """``--config FILE``, accepted before the command and after it (the later wins)."""
    parser.add_argument(
        "--config", metavar="FILE", default=argparse.SUPPRESS,
        help="TOML settings file (default: $WATTFARE_CONFIG, else built-in defaults)",
    )


def origin(text: str) -> str:
    parts = urlsplit(text)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
        or parts.username
    ):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an origin (scheme://host[:port], no path)"
        )
    return f"{parts.scheme}://{parts.netloc.lower()}"


def app_name(text: str) -> str:
    if not text.strip() or len(text) > 100 or not text.isprintable():
        raise argparse.ArgumentTypeError("an app name is 1-100 printable characters")
    return text.strip()


def usd(text: str) -> int:
    """A USD amount typed on the command line, as nano-USD."""
    nano = parse_usd(text)
    if nano is None:
        raise argparse.ArgumentTypeError(f"an amount in USD from 0 to {MAX_USD:g}")
    return nano


def email(text: str) -> str:
    return text.strip().lower()


def usd_text(nano: int) -> str:
    """Nano-USD as an exact decimal with all nine places (no float on the way)."""
    sign = "-" if nano < 0 else ""
    whole, frac = divmod(abs(nano), NANO_PER_USD)
    return f"{sign}{whole}.{frac:09d}"


def usd_number(nano: int) -> float:
    """Nano-USD as a JSON number (exact to the nano-dollar below 9 million USD)."""
    return nano_to_usd(nano)


def print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def fail(message: str) -> int:
    sys.stderr.write(f"wattfare: {message}\n")
    return 1


@contextlib.asynccontextmanager
async def opened_store(settings: Settings) -> AsyncIterator[Store]:
    store = make_store(settings.store)
    await store.open()
    try:
        yield store
    finally:
        await store.close()
