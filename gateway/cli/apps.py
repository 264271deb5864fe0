"""``wattfare apps …``: register, inspect, edit, disable and delete apps.

Deleting an app with no ledger rows (nothing was ever charged through it) erases it with
its connections. An app with a ledger is only deleted with ``--force``, and then kept as
``deleted``: its keys are refused for good, its connections revoked (open streams cut),
its pending consent links dropped, and its ledger rows stay, so usage reports and the
users' dashboards still add up. ``apps disable`` is the reversible stop.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from gateway.cli.common import (
    app_name,
    config_arg,
    fail,
    opened_store,
    origin,
    print_json,
    usd_number,
)
from gateway.config import Settings
from gateway.store.base import (
    App,
    AppDeleted,
    AppInUse,
    NewApp,
    Store,
    UnknownApp,
    period_of,
)


def add_parser(commands: Any) -> None:
    apps = commands.add_parser("apps", help="manage apps and their keys")
    config_arg(apps)
    actions = apps.add_subparsers(dest="apps_command", required=True, metavar="ACTION")

    create = actions.add_parser("create", help="register an app; prints its keys once")
    create.add_argument("name", type=app_name)
    create.add_argument("--live", action="store_true", help="live mode: consent required")
    create.add_argument(
        "--origin", action="append", type=origin, default=[], metavar="URL",
        help="a browser origin the app runs on (repeatable)",
    )
    listing = actions.add_parser("list", help="list apps (deleted ones with --all)")
    listing.add_argument("--all", action="store_true", help="include deleted apps")
    for name, text in (
        ("show", "an app, its connections, requests in flight, ledger and this month"),
        ("roll-key", "replace an app's keys; the old stop at once"),
        ("disable", "refuse the app's keys at once and cut its open streams (reversible)"),
        ("enable", "accept a disabled app's keys again"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("app", help="app id or name")
    delete = actions.add_parser(
        "delete", help="erase an unused app; with --force, retire one that has a ledger"
    )
    delete.add_argument("app", help="app id or name")
    delete.add_argument(
        "--force", action="store_true",
        help="delete an app that has a ledger: keys refused for good, connections revoked, "
        "ledger kept",
    )
    origins = actions.add_parser("origins", help="add or remove an app's browser origins")
    origin_actions = origins.add_subparsers(
        dest="origins_command", required=True, metavar="ACTION"
    )
    for name, text in (("add", "register origins"), ("remove", "unregister origins")):
        action = origin_actions.add_parser(name, help=text)
        action.add_argument("app", help="app id or name")
        action.add_argument("origins", nargs="+", type=origin, metavar="URL")
        config_arg(action)
    for parser in actions.choices.values():
        config_arg(parser)


def app_json(app: App, *, secret_key: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "app_id": app.id,
        "name": app.name,
        "mode": app.mode,
        "status": app.status,
        "publishable_key": app.publishable_key,
    }
    if secret_key is not None:
        out["secret_key"] = secret_key
    out["origins"] = list(app.origins)
    return out


def _created(new: NewApp) -> dict[str, Any]:
    out = app_json(new.app, secret_key=new.keys.secret_key)
    del out["status"]  # always active; the printed shape is the documented one
    return out


async def run(settings: Settings, ns: argparse.Namespace) -> int:
    async with opened_store(settings) as store:
        command = ns.apps_command
        if command == "create":
            try:
                created = await store.create_app(
                    name=ns.name, mode="live" if ns.live else "test", origins=tuple(ns.origin)
                )
            except ValueError as exc:
                return fail(str(exc))
            print_json(_created(created))
            return 0
        if command == "list":
            print_json([
                {**app_json(a), "created_at": a.created_at}
                for a in await store.list_apps()
                if ns.all or a.status != "deleted"
            ])
            return 0
        try:
            return await _one(store, command, ns)
        except UnknownApp:
            return fail(f"no app with id or name {ns.app!r}")
        except AppDeleted:
            return fail(f"app {ns.app!r} was deleted; it cannot be changed any more")


async def _one(store: Store, command: str, ns: argparse.Namespace) -> int:
    if command == "roll-key":
        print_json(_created(await store.roll_key(ns.app)))
    elif command == "show":
        app = await store.find_app(ns.app)
        if app is None:
            raise UnknownApp(ns.app)
        stats = await store.app_stats(app.id, period_of(time.time()))
        print_json({
            **app_json(app),
            "created_at": app.created_at,
            "connections": {"connected": stats.connected, "revoked": stats.revoked},
            "requests_in_flight": stats.open_holds,
            "ledger_rows": stats.ledger_rows,
            "this_month": {
                "period": stats.period,
                "settled_usd": usd_number(stats.settled_nano),
                "held_usd": usd_number(stats.held_nano),
            },
        })
    elif command in ("disable", "enable"):
        app = await store.set_app_status(
            ns.app, "disabled" if command == "disable" else "active"
        )
        print_json(app_json(app))
        if command == "disable":
            sys.stderr.write(
                "wattfare: its keys and session tokens are refused at once; its open "
                "streams are cut within a second\n"
            )
    elif command == "delete":
        return await _delete(store, ns)
    else:
        if ns.origins_command == "add":
            app = await store.update_app_origins(ns.app, add=tuple(ns.origins))
        else:
            app = await store.update_app_origins(ns.app, remove=tuple(ns.origins))
        print_json(app_json(app))
    return 0


async def _delete(store: Store, ns: argparse.Namespace) -> int:
    try:
        deletion = await store.delete_app(ns.app, force=ns.force)
    except AppInUse as exc:
        return fail(
            f"app {ns.app!r} has {exc.ledger_rows} ledger row(s) and {exc.open_holds} "
            "request(s) in flight. 'wattfare apps disable' stops it and can be undone; "
            "'wattfare apps delete --force' deletes it for good, revokes its connections "
            "and keeps its ledger"
        )
    print_json({
        "app_id": deletion.app.id,
        "name": deletion.app.name,
        "deleted": "erased" if deletion.erased else "retired",
        "connections_revoked": deletion.revoked,
        "ledger_kept": not deletion.erased,
    })
    return 0
