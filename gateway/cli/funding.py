"""``wattfare funding …``: the key-encryption keys that seal people's own funding
sources (:mod:`gateway.funding.vault`)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gateway.cli.common import config_arg, opened_store, print_json
from gateway.config import Settings


def add_parser(commands: Any) -> None:
    funding = commands.add_parser("funding", help="people's own funding sources")
    config_arg(funding)
    actions = funding.add_subparsers(dest="funding_command", required=True, metavar="ACTION")
    new_kek = actions.add_parser(
        "new-kek", help="print a fresh key-encryption key entry for funding.kek_env"
    )
    new_kek.add_argument("--id", default="k1", help="the new key's id (default: k1)")
    config_arg(new_kek)
    rotate = actions.add_parser(
        "rotate-kek", help="re-wrap every stored data key with the active (first) KEK"
    )
    config_arg(rotate)


def new_kek(ns: argparse.Namespace) -> int:
    """``funding new-kek``: needs no settings."""
    from gateway.funding.vault import new_kek as make

    try:
        sys.stdout.write(make(ns.id) + "\n")
    except ValueError as exc:
        sys.stderr.write(f"wattfare: {exc}\n")
        return 2
    return 0


async def rotate_kek(settings: Settings) -> int:
    from gateway.funding.funder import record_of, sealed_of
    from gateway.funding.vault import Vault, VaultError

    if not settings.funding.keyring:
        sys.stderr.write(f"wattfare: ${settings.funding.kek_env} holds no key-encryption key\n")
        return 2
    vault = Vault(settings.funding.keyring)
    rewrapped = current = failed = 0
    async with opened_store(settings) as store:
        for source in await store.funding_sources():
            if source.kek_id == vault.active_id:
                current += 1
                continue
            try:
                sealed = vault.rewrap(sealed_of(source), record=record_of(source))
            except VaultError as exc:
                sys.stderr.write(f"wattfare: source {source.id}: {exc}\n")
                failed += 1
                continue
            if await store.rewrap_funding_source(
                source.id, old_kek_id=source.kek_id, kek_id=sealed.kek_id,
                wrapped_key=sealed.wrapped_key,
            ):
                rewrapped += 1
    print_json({
        "active_kek": vault.active_id, "rewrapped": rewrapped, "already_current": current,
        "failed": failed,
    })
    return 1 if failed else 0
