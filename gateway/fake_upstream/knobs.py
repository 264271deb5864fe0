"""Per-request behaviour: the `"fake": {...}` object a request body may carry.

Every knob is optional; server-wide defaults come from `FakeUpstreamSettings`. An unknown
knob or a value of the wrong type or out of range is a 400, so a typo in a test fails
loudly instead of silently testing the happy path.

| knob | type, range | meaning |
| --- | --- | --- |
| `ttft_ms` | number, 0–600000 | wait before the first content chunk |
| `gap_ms` | number, 0–60000 | wait between content chunks |
| `chunks` | int, 0–100000 | content chunks (one completion token each) before `stop` |
| `chunk_text` | str, ≤ 1000 chars | text of each content chunk (default `"tok "`) |
| `processing_comments` | bool | send `: OPENROUTER PROCESSING` comments (OpenRouter's paths only) |
| `comment_interval_ms` | number, 50–600000 | comment period while waiting for the first token |
| `fault` | one of `FAULTS` | the failure to simulate |
| `status` | int, 400–599 | HTTP status for `fault: "status"` (default 500) |
| `retry_after` | int, 0–86400 | `Retry-After` seconds on a 429 (default 1) |
| `message` | str | overrides the error message of `status` / `mid_stream_error` |
| `fault_after` | int, ≥ 0 | content chunks sent before a mid-stream fault (default 2) |
| `hidden_tokens` | int, ≥ 0 | unstreamed reasoning tokens for `extra_reasoning` (default 64) |
| `error_code` | int or str | `error.code` of the `mid_stream_error` chunk (default 502) |
| `usage_with_choice` | bool | usage chunk repeats the finish choice instead of `choices: []` |
| `encoding` | one of `ENCODINGS` | the JSON spelling of every chunk and body (see `encoding.py`) |
| `generation_delay_ms` | number, 0–600000 | how long `/generation` answers 404 after the end |
| `reasoning_tokens` | int, 0–1000000 | hidden reasoning tokens, within `max_tokens` (see catalog) |
| `cancellable` | bool | whether an abort stops the bill (default: the model's provider) |
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

from gateway.fake_upstream.encoding import ENCODINGS, Encoding

if TYPE_CHECKING:
    from gateway.fake_upstream.settings import FakeUpstreamSettings

__all__ = ["FAULTS", "Fault", "KnobError", "Knobs", "parse_knobs"]

Fault = Literal[
    "status",
    "reset",
    "hang",
    "hang_mid_stream",
    "malformed",
    "no_usage",
    "mid_stream_error",
    "usage_without_cost",
    "extra_reasoning",
]
FAULTS: Final[frozenset[str]] = frozenset(get_args(Fault))


class KnobError(ValueError):
    """A `fake` object the server cannot honour; the message names the knob."""


@dataclass(frozen=True, slots=True)
class Knobs:
    """The resolved behaviour of one chat completion request."""

    ttft_ms: float
    gap_ms: float
    chunks: int
    processing_comments: bool
    encoding: Encoding = "compact"
    generation_delay_ms: float = 1000.0
    reasoning_tokens: int | None = None
    cancellable: bool | None = None
    chunk_text: str = "tok "
    comment_interval_ms: float = 1000.0
    fault: Fault | None = None
    status: int = 500
    retry_after: int = 1
    message: str | None = None
    fault_after: int = 2
    hidden_tokens: int = 64
    error_code: int | str = 502
    usage_with_choice: bool = False


def _number(lo: float, hi: float) -> Callable[[object], float]:
    def check(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError("a number")
        if not lo <= value <= hi:
            raise ValueError(f"between {lo:g} and {hi:g}")
        return float(value)

    return check


def _integer(lo: int, hi: int) -> Callable[[object], int]:
    def check(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("an integer")
        if not lo <= value <= hi:
            raise ValueError(f"between {lo} and {hi}")
        return value

    return check


def _text(max_len: int) -> Callable[[object], str]:
    def check(value: object) -> str:
        if not isinstance(value, str) or len(value) > max_len:
            raise TypeError(f"a string of at most {max_len} characters")
        return value

    return check


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError("true or false")
    return value


def _fault(value: object) -> str:
    if value not in FAULTS:
        raise ValueError("one of " + ", ".join(sorted(FAULTS)))
    assert isinstance(value, str)
    return value


def _encoding(value: object) -> str:
    if value not in ENCODINGS:
        raise ValueError("one of " + ", ".join(sorted(ENCODINGS)))
    assert isinstance(value, str)
    return value


def _error_code(value: object) -> int | str:
    if isinstance(value, str):
        return _text(64)(value)
    return _integer(100, 599)(value)


_CHECKS: Final[Mapping[str, Callable[[object], Any]]] = {
    "ttft_ms": _number(0, 600_000),
    "gap_ms": _number(0, 60_000),
    "chunks": _integer(0, 100_000),
    "chunk_text": _text(1000),
    "processing_comments": _boolean,
    "encoding": _encoding,
    "generation_delay_ms": _number(0, 600_000),
    "reasoning_tokens": _integer(0, 1_000_000),
    "cancellable": _boolean,
    "comment_interval_ms": _number(50, 600_000),
    "fault": _fault,
    "status": _integer(400, 599),
    "retry_after": _integer(0, 86_400),
    "message": _text(1000),
    "fault_after": _integer(0, 100_000),
    "hidden_tokens": _integer(0, 10_000_000),
    "error_code": _error_code,
    "usage_with_choice": _boolean,
}
assert set(_CHECKS) == {f.name for f in fields(Knobs)}


def parse_knobs(raw: object, *, settings: FakeUpstreamSettings) -> Knobs:
    """Resolve a request's `fake` object (or None) over the server-wide defaults."""
    base = Knobs(
        ttft_ms=settings.ttft_ms,
        gap_ms=settings.gap_ms,
        chunks=settings.chunks,
        processing_comments=settings.processing_comments,
        encoding=settings.encoding,
        generation_delay_ms=settings.generation_delay_ms,
    )
    if raw is None:
        return base
    if not isinstance(raw, dict):
        raise KnobError("fake must be an object")
    changes: dict[str, Any] = {}
    for name, value in raw.items():
        check = _CHECKS.get(name)
        if check is None:
            raise KnobError(f"fake.{name} is not a known knob")
        try:
            changes[name] = check(value)
        except (TypeError, ValueError) as exc:
            raise KnobError(f"fake.{name} must be {exc}") from None
    return replace(base, **changes)
