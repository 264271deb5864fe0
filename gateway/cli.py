"""The ``wattfare`` command line.

Every command takes ``--config FILE`` after its own arguments; without it
``$WATTFARE_CONFIG``; without that, the built-in defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import orjson

from gateway.config import ConfigError, Settings, load_settings
from gateway.money import MAX_USD, NANO_PER_USD, parse_usd
from gateway.store import make_store
from gateway.store.base import App, NewApp, UnknownApp


def _config_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", metavar="FILE", default=None,
        help="TOML settings file (default: $WATTFARE_CONFIG, else built-in defaults)",
    )


def _origin(text: str) -> str:
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


def _app_name(text: str) -> str:
    if not text.strip() or len(text) > 100 or not text.isprintable():
        raise argparse.ArgumentTypeError("an app name is 1-100 printable characters")
    return text.strip()


def _usd(text: str) -> float:
    nano = parse_usd(text)
    if nano is None:
        raise argparse.ArgumentTypeError(f"an amount in USD from 0 to {MAX_USD:g}")
    return nano / NANO_PER_USD


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wattfare", description="A consent layer and metered gateway for AI spend."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--workers", type=int, default=None, help="worker processes")
    _config_arg(serve)

    apps = commands.add_parser("apps", help="manage apps and their keys")
    app_commands = apps.add_subparsers(dest="apps_command", required=True, metavar="ACTION")
    create = app_commands.add_parser("create", help="register an app; prints its keys once")
    create.add_argument("name", type=_app_name)
    create.add_argument("--live", action="store_true", help="live mode: consent required")
    create.add_argument(
        "--origin", action="append", type=_origin, default=[], metavar="URL",
        help="a browser origin the app runs on (repeatable)",
    )
    _config_arg(create)
    listing = app_commands.add_parser("list", help="list apps")
    _config_arg(listing)
    roll = app_commands.add_parser("roll-key", help="replace an app's keys; the old stop at once")
    roll.add_argument("app", help="app id or name")
    _config_arg(roll)

    users = commands.add_parser("users", help="manage end users' accounts")
    user_commands = users.add_subparsers(dest="users_command", required=True, metavar="ACTION")
    budget = user_commands.add_parser(
        "budget", help="set the monthly budget that covers all of an account's apps"
    )
    budget.add_argument("email")
    budget.add_argument(
        "--monthly-usd", type=_usd, required=True, metavar="N", help="USD per calendar month"
    )
    _config_arg(budget)

    funding = commands.add_parser("funding", help="people's own funding sources")
    funding_commands = funding.add_subparsers(
        dest="funding_command", required=True, metavar="ACTION"
    )
    new_kek = funding_commands.add_parser(
        "new-kek", help="print a fresh key-encryption key entry for funding.kek_env"
    )
    new_kek.add_argument("--id", default="k1", help="the new key's id (default: k1)")
    _config_arg(new_kek)
    rotate = funding_commands.add_parser(
        "rotate-kek", help="re-wrap every stored data key with the active (first) KEK"
    )
    _config_arg(rotate)

    demo = commands.add_parser("demo", help="gateway + simulated upstream + a test app")
    demo.add_argument("--port", type=int, default=8787, help="gateway port")
    demo.add_argument("--upstream-port", type=int, default=8788, help="simulated upstream port")
    demo.add_argument(
        "--sample-port", type=int, default=8789, help="port of the sample app page"
    )
    demo.add_argument(
        "--once", action="store_true", help="run the printed snippet once, then exit"
    )
    _config_arg(demo)

    from gateway.fake_upstream.settings import add_arguments

    fake = commands.add_parser("fake-upstream", help="the simulated OpenRouter")
    add_arguments(fake)
    _config_arg(fake)
    return parser


def _app_json(app: App, *, secret_key: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "app_id": app.id,
        "name": app.name,
        "mode": app.mode,
        "publishable_key": app.publishable_key,
    }
    if secret_key is not None:
        out["secret_key"] = secret_key
    out["origins"] = list(app.origins)
    return out


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


async def _apps(settings: Settings, ns: argparse.Namespace) -> int:
    store = make_store(settings.store)
    await store.open()
    try:
        if ns.apps_command == "create":
            try:
                created: NewApp = await store.create_app(
                    name=ns.name, mode="live" if ns.live else "test", origins=tuple(ns.origin)
                )
            except ValueError as exc:
                sys.stderr.write(f"wattfare: {exc}\n")
                return 1
            _print_json(_app_json(created.app, secret_key=created.keys.secret_key))
        elif ns.apps_command == "list":
            _print_json([
                {**_app_json(a), "created_at": a.created_at} for a in await store.list_apps()
            ])
        else:
            try:
                rolled = await store.roll_key(ns.app)
            except UnknownApp:
                sys.stderr.write(f"wattfare: no app with id or name {ns.app!r}\n")
                return 1
            _print_json(_app_json(rolled.app, secret_key=rolled.keys.secret_key))
    finally:
        await store.close()
    return 0


async def _users(settings: Settings, ns: argparse.Namespace) -> int:
    store = make_store(settings.store)
    await store.open()
    try:
        email = ns.email.strip().lower()
        account = await store.set_account_budget(email, round(ns.monthly_usd * NANO_PER_USD))
    finally:
        await store.close()
    if account is None:
        sys.stderr.write(f"wattfare: no account with email {email!r}\n")
        return 1
    _print_json({"email": account.email, "monthly_budget_usd": account.budget_nano / NANO_PER_USD})
    return 0


async def _rotate_kek(settings: Settings) -> int:
    from gateway.funding.funder import record_of, sealed_of
    from gateway.funding.vault import Vault, VaultError

    if not settings.funding.keyring:
        sys.stderr.write(f"wattfare: ${settings.funding.kek_env} holds no key-encryption key\n")
        return 2
    vault = Vault(settings.funding.keyring)
    store = make_store(settings.store)
    await store.open()
    rewrapped = current = failed = 0
    try:
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
    finally:
        await store.close()
    _print_json({
        "active_kek": vault.active_id, "rewrapped": rewrapped, "already_current": current,
        "failed": failed,
    })
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    if ns.command == "fake-upstream":
        from gateway.fake_upstream.settings import serve as serve_fake
        from gateway.fake_upstream.settings import settings_from_args

        try:
            fake_settings = settings_from_args(ns)
        except ValueError as exc:
            sys.stderr.write(f"wattfare: {exc}\n")
            return 2
        serve_fake(host=ns.host, port=ns.port, settings=fake_settings)
        return 0
    if ns.command == "funding" and ns.funding_command == "new-kek":
        from gateway.funding.vault import new_kek

        try:
            sys.stdout.write(new_kek(ns.id) + "\n")
        except ValueError as exc:
            sys.stderr.write(f"wattfare: {exc}\n")
            return 2
        return 0
    try:
        settings = load_settings(ns.config)
    except ConfigError as exc:
        sys.stderr.write(f"wattfare: config error: {exc}\n")
        return 2
    if ns.command == "serve":
        workers = ns.workers if ns.workers is not None else settings.server.workers
        if workers < 1:
            sys.stderr.write("wattfare: --workers must be at least 1\n")
            return 2
        from gateway.server import serve

        serve(settings, workers=workers)
        return 0
    if ns.command == "apps":
        return asyncio.run(_apps(settings, ns))
    if ns.command == "users":
        return asyncio.run(_users(settings, ns))
    if ns.command == "funding":
        return asyncio.run(_rotate_kek(settings))
    from gateway.demo import run_demo

    return run_demo(
        settings, port=ns.port, upstream_port=ns.upstream_port, once=ns.once,
        sample_port=ns.sample_port,
    )


if __name__ == "__main__":
    raise SystemExit(main())
