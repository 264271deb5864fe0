"""``wattfare accounts …`` (also ``wattfare users …``): end users' accounts.

Disabling an account signs it out everywhere, refuses its sign-in, and revokes every
connection it approved (their open streams are cut); its ledger is kept. Enabling it
lets the person sign in again; each app must then ask for their consent anew.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from gateway.cli.common import config_arg, email, fail, opened_store, print_json, usd, usd_number
from gateway.config import Settings
from gateway.store.base import Account, period_of


def add_parser(commands: Any) -> None:
    accounts = commands.add_parser(
        "accounts", aliases=["users"], help="manage end users' accounts"
    )
    config_arg(accounts)
    actions = accounts.add_subparsers(dest="accounts_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="accounts, their budgets and this month's spend")
    listing.add_argument(
        "--all", action="store_true", help="include accounts their owners deleted"
    )
    for name, text in (
        ("show", "an account, this month's spend and its connections"),
        ("disable", "sign an account out, refuse its sign-in, revoke its connections"),
        ("enable", "let a disabled account sign in again"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("email", type=email)
    budget = actions.add_parser(
        "budget", help="set the monthly budget that covers all of an account's apps"
    )
    budget.add_argument("email", type=email)
    budget.add_argument(
        "--monthly-usd", type=usd, required=True, metavar="N", help="USD per calendar month"
    )
    for parser in actions.choices.values():
        config_arg(parser)


def _account_json(account: Account) -> dict[str, Any]:
    return {
        "account_id": account.id,
        "email": account.email,
        "status": account.status,
        "monthly_budget_usd": usd_number(account.budget_nano),
        "created_at": account.created_at,
    }


async def run(settings: Settings, ns: argparse.Namespace) -> int:
    period = period_of(time.time())
    async with opened_store(settings) as store:
        command = ns.accounts_command
        if command == "list":
            print_json([
                {
                    **_account_json(s.account),
                    "connections": s.connections,
                    "this_month": {
                        "period": s.period,
                        "settled_usd": usd_number(s.settled_nano),
                        "held_usd": usd_number(s.held_nano),
                    },
                }
                for s in await store.list_accounts(period)
                if ns.all or s.account.status != "deleted"
            ])
            return 0
        if command == "budget":
            account = await store.set_account_budget(
                ns.email, ns.monthly_usd
            )
            if account is None:
                return fail(f"no account with email {ns.email!r}")
            print_json({
                "email": account.email,
                "monthly_budget_usd": usd_number(account.budget_nano),
            })
            return 0
        if command == "show":
            account = await store.account_by_email(ns.email)
            if account is None:
                return fail(f"no account with email {ns.email!r}")
            spend = await store.account_spend(account.id, period)
            connections = await store.account_connections(account.id, period)
            print_json({
                **_account_json(account),
                "this_month": {
                    "period": period,
                    "settled_usd": usd_number(spend.settled_nano),
                    "held_usd": usd_number(spend.held_nano),
                    "remaining_usd": usd_number(spend.remaining_nano),
                },
                "connections": [
                    {
                        "app_id": c.app_id,
                        "app_name": c.app_name,
                        "user_id": c.user_id,
                        "status": c.status,
                        "cap_usd": usd_number(c.cap_nano),
                        "settled_usd": usd_number(c.settled_nano),
                        "held_usd": usd_number(c.held_nano),
                    }
                    for c in connections
                ],
            })
            return 0
        changed = await store.set_account_status(
            ns.email, "disabled" if command == "disable" else "active"
        )
        if changed is None:
            return fail(f"no account with email {ns.email!r}")
        account, revoked = changed
        print_json({**_account_json(account), "connections_revoked": revoked})
        return 0
