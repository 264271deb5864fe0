"""Server-wide settings of the simulated upstream, its command-line flags, and `serve`."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import math
from dataclasses import dataclass
from typing import get_args

from gateway.fake_upstream.catalog import find_model
from gateway.fake_upstream.encoding import Encoding

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "FakeUpstreamSettings",
    "add_arguments",
    "serve",
    "settings_from_args",
]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8788


@dataclass(frozen=True, slots=True)
class FakeUpstreamSettings:
    """Defaults for every request; a request's `fake` object overrides them one by one."""

    ttft_ms: float = 0
    gap_ms: float = 0
    chunks: int = 20
    require_key: str | None = None
    processing_comments: bool = True
    encoding: Encoding = "compact"
    generation_delay_ms: float = 1000.0
    default_credits_usd: float = 10.0
    model_encodings: tuple[tuple[str, Encoding], ...] = ()
    """Per-model JSON encodings, over `encoding` (a request's own knob still wins)."""

    def __post_init__(self) -> None:
        for name, value, limit in (
            ("ttft_ms", self.ttft_ms, 600_000),
            ("gap_ms", self.gap_ms, 60_000),
            ("chunks", self.chunks, 100_000),
            ("generation_delay_ms", self.generation_delay_ms, 600_000),
            ("default_credits_usd", self.default_credits_usd, 1_000_000),
        ):
            if not (math.isfinite(value) and 0 <= value <= limit):
                raise ValueError(f"{name} must be between 0 and {limit}, got {value!r}")
        if self.require_key == "":
            raise ValueError("require_key must not be empty")
        for encoding in (self.encoding, *(e for _, e in self.model_encodings)):
            if encoding not in get_args(Encoding):
                raise ValueError(f"encoding must be one of {', '.join(get_args(Encoding))}")
        for model_id, _ in self.model_encodings:
            if find_model(model_id) is None:
                raise ValueError(f"model_encodings: {model_id} is not in the catalog")


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative number: {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer: {text!r}")
    return value


def _model_encoding(text: str) -> tuple[str, str]:
    model_id, sep, encoding = text.rpartition("=")
    if not sep or not model_id or encoding not in get_args(Encoding):
        choices = ", ".join(get_args(Encoding))
        raise argparse.ArgumentTypeError(f"expected MODEL=ENCODING with one of {choices}: {text!r}")
    return model_id, encoding


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `fake-upstream` flags: --host, --port, --ttft-ms, --gap-ms, --chunks, ..."""
    parser.add_argument("--host", default=DEFAULT_HOST, help="bind address (default %(default)s)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default %(default)s)")
    parser.add_argument(
        "--ttft-ms",
        type=_non_negative_float,
        default=0.0,
        help="milliseconds before the first content chunk (default %(default)s)",
    )
    parser.add_argument(
        "--gap-ms",
        type=_non_negative_float,
        default=0.0,
        help="milliseconds between content chunks (default %(default)s)",
    )
    parser.add_argument(
        "--chunks",
        type=_non_negative_int,
        default=20,
        help="content chunks per completion (default %(default)s)",
    )
    parser.add_argument(
        "--require-key",
        default=None,
        metavar="KEY",
        help="accept only this bearer key; others get OpenRouter's 401",
    )
    parser.add_argument(
        "--no-processing-comments",
        dest="processing_comments",
        action="store_false",
        help="do not send ': OPENROUTER PROCESSING' comments",
    )
    parser.add_argument(
        "--encoding",
        choices=get_args(Encoding),
        default="compact",
        help="JSON spelling of chunks and bodies (default %(default)s)",
    )
    parser.add_argument(
        "--model-encoding",
        type=_model_encoding,
        action="append",
        default=[],
        metavar="MODEL=ENCODING",
        help="the JSON spelling of one model's responses (repeatable)",
    )
    parser.add_argument(
        "--generation-delay-ms",
        type=_non_negative_float,
        default=1000.0,
        help="how long GET /generation answers 404 after a generation ends "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--default-credits-usd",
        type=_non_negative_float,
        default=10.0,
        help="credits of a person first seen at sign-in (default %(default)s)",
    )


def settings_from_args(ns: argparse.Namespace) -> FakeUpstreamSettings:
    """Build the settings from flags parsed by a parser that `add_arguments` prepared."""
    return FakeUpstreamSettings(
        ttft_ms=ns.ttft_ms,
        gap_ms=ns.gap_ms,
        chunks=ns.chunks,
        require_key=ns.require_key,
        processing_comments=ns.processing_comments,
        encoding=ns.encoding,
        generation_delay_ms=ns.generation_delay_ms,
        default_credits_usd=ns.default_credits_usd,
        model_encodings=tuple(ns.model_encoding),
    )


class _DropIntendedAborts(logging.Filter):
    # The `reset` fault ends a response on purpose by returning before its last body
    # message; uvicorn reports that as an error, which would only be noise here.
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "ASGI callable returned without completing response."


def serve(*, host: str, port: int, settings: FakeUpstreamSettings) -> None:
    """Run the simulated upstream with uvicorn until interrupted."""
    import uvicorn

    from gateway.fake_upstream.app import create_app

    config = uvicorn.Config(
        create_app(settings),
        host=host,
        port=port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="on",
        server_header=False,
        # Idle keep-alive connections stay open longer than a client's pool keeps them
        # (the gateway's: 30 s), like the 75 s common in production servers; uvicorn's
        # default of 5 s races a client reusing a connection as the server closes it.
        timeout_keep_alive=75,
        # A `hang` request would otherwise hold a Ctrl-C for up to 600 s.
        timeout_graceful_shutdown=2,
    )
    logging.getLogger("uvicorn.error").addFilter(_DropIntendedAborts())
    uvicorn.Server(config).run()
