"""`python -m gateway.fake_upstream [--host H] [--port N] [...]`: run the simulated upstream."""

from __future__ import annotations

import argparse

from gateway.fake_upstream.settings import add_arguments, serve, settings_from_args


def main(argv: list[str] | None = None) -> None:
    """Parse the flags and serve until interrupted."""
    parser = argparse.ArgumentParser(
        prog="python -m gateway.fake_upstream", description="A simulated OpenRouter."
    )
    add_arguments(parser)
    ns = parser.parse_args(argv)
    serve(host=ns.host, port=ns.port, settings=settings_from_args(ns))


if __name__ == "__main__":
    main()
