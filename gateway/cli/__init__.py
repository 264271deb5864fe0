"""The ``wattfare`` command line.

``--config FILE`` is accepted before the command or after it; without it
``$WATTFARE_CONFIG``; without that, the built-in defaults. Each command group lives in
its own module: :mod:`gateway.cli.apps`, :mod:`gateway.cli.accounts`,
:mod:`gateway.cli.usage`, :mod:`gateway.cli.store`; ``serve`` runs :mod:`gateway.server`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from importlib import metadata

import gateway
from gateway.cli import accounts, apps, funding, store, usage
from gateway.cli.common import config_arg
from gateway.config import ConfigError, load_settings


def version() -> str:
    try:
        return metadata.version("wattfare")
    except metadata.PackageNotFoundError:  # run from a source tree, not installed
        return gateway.__version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wattfare", description="A consent layer and metered gateway for AI spend."
    )
    parser.add_argument("--version", action="version", version=f"wattfare {version()}")
    config_arg(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve_parser = commands.add_parser("serve", help="run the gateway")
    serve_parser.add_argument("--workers", type=int, default=None, help="worker processes")
    config_arg(serve_parser)

    apps.add_parser(commands)
    accounts.add_parser(commands)
    usage.add_parser(commands)
    funding.add_parser(commands)
    store.add_parser(commands)

    demo = commands.add_parser("demo", help="gateway + simulated upstream + a test app")
    demo.add_argument("--port", type=int, default=8787, help="gateway port")
    demo.add_argument("--upstream-port", type=int, default=8788, help="simulated upstream port")
    demo.add_argument(
        "--sample-port", type=int, default=8789, help="port of the sample app page"
    )
    demo.add_argument(
        "--once", action="store_true", help="run the printed snippet once, then exit"
    )
    config_arg(demo)

    from gateway.fake_upstream.settings import add_arguments

    fake = commands.add_parser("fake-upstream", help="the simulated OpenRouter")
    add_arguments(fake)
    config_arg(fake)
    return parser


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
        return funding.new_kek(ns)
    try:
        settings = load_settings(getattr(ns, "config", None))
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
        return asyncio.run(apps.run(settings, ns))
    if ns.command in ("accounts", "users"):
        return asyncio.run(accounts.run(settings, ns))
    if ns.command == "usage":
        return asyncio.run(usage.run(settings, ns))
    if ns.command == "funding":
        return asyncio.run(funding.rotate_kek(settings))
    if ns.command == "store":
        return asyncio.run(store.run(settings))
    from gateway.demo import run_demo

    return run_demo(
        settings, port=ns.port, upstream_port=ns.upstream_port, once=ns.once,
        sample_port=ns.sample_port,
    )


__all__ = ["build_parser", "main", "version"]
