"""``wattfare store …``: the store's data (``store copy --to postgres``)."""

from __future__ import annotations

import os
import sys
from typing import Any

from gateway.cli.common import config_arg, print_json
from gateway.config import Settings


def add_parser(commands: Any) -> None:
    store = commands.add_parser("store", help="the store's data")
    config_arg(store)
    actions = store.add_subparsers(dest="store_command", required=True, metavar="ACTION")
    copy = actions.add_parser(
        "copy", help="copy the SQLite store into an empty PostgreSQL database ($url_env)"
    )
    copy.add_argument("--to", choices=["postgres"], required=True, help="the target backend")
    config_arg(copy)


async def run(settings: Settings) -> int:
    """``[store] path`` (the SQLite file) into the database ``$url_env`` names."""
    from gateway.store.copy import CopyError, copy_sqlite_to_postgres

    url = os.environ.get(settings.store.url_env, "")
    if not url:
        sys.stderr.write(
            f"wattfare: store.url_env: environment variable {settings.store.url_env} is not set\n"
        )
        return 2
    try:
        report = await copy_sqlite_to_postgres(settings.store.path, url)
    except (CopyError, OSError) as exc:
        sys.stderr.write(f"wattfare: store copy failed: {exc}\n")
        return 1
    print_json({
        "copied": report.rows, "totals": report.totals,
        "reconciled_holds": report.reconciled_holds, "verified": True,
    })
    return 0
