"""The JSON spellings the simulated upstream can write: one knob, four valid encodings.

Real upstreams differ in how they spell the same JSON, and a client that finds fields by
their bytes must cope with all of them:

| encoding | what it writes | who writes this way |
| --- | --- | --- |
| `compact` | no spaces, UTF-8 as is (`{"content":"é"}`) | OpenRouter, OpenAI, vLLM |
| `spaced` | `json.dumps`'s default: `", "`, `": "`, `\\u00e9` | Python's standard library |
| `escaped` | compact, non-ASCII as `\\u00e9`, `/` as `\\/` | PHP's `json_encode` |
| `reordered` | compact, every object's keys in reverse order | encoders of hash maps |

Every encoding is valid JSON that decodes to the same value. A stream is encoded once per
request (its content chunk is one `bytes` object sent N times), so a slower encoding costs
nothing per chunk.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from json.encoder import encode_basestring, encode_basestring_ascii
from typing import Any, Final, Literal, get_args

import orjson

__all__ = ["ENCODINGS", "Encoding", "Number", "dumps"]

Encoding = Literal["compact", "spaced", "escaped", "reordered"]
ENCODINGS: Final[frozenset[str]] = frozenset(get_args(Encoding))


class Number:
    """A JSON number written with exactly these characters (a cost such as `1.5e-7`).

    A plain class, not a dataclass: orjson would write a dataclass as an object.
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Number) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)

    def __repr__(self) -> str:
        return f"Number({self.text!r})"


def _fragment(value: object) -> orjson.Fragment:
    if isinstance(value, Number):
        return orjson.Fragment(value.text.encode())
    raise TypeError(f"cannot encode {type(value).__name__}")


def _escaped_string(text: str) -> str:
    return encode_basestring_ascii(text).replace("/", "\\/")


@dataclass(frozen=True, slots=True)
class _Style:
    item_sep: str
    key_sep: str
    string: Callable[[str], str]
    reverse: bool


_STYLES: Final[dict[str, _Style]] = {
    "spaced": _Style(", ", ": ", encode_basestring_ascii, reverse=False),
    "escaped": _Style(",", ":", _escaped_string, reverse=False),
    "reordered": _Style(",", ":", encode_basestring, reverse=True),
}


def _write(value: Any, style: _Style, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(style.string(value))
    elif value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, Number):
        out.append(value.text)
    elif isinstance(value, dict):
        items = list(value.items())
        if style.reverse:
            items.reverse()
        out.append("{")
        for i, (key, item) in enumerate(items):
            if i:
                out.append(style.item_sep)
            out.append(style.string(key))
            out.append(style.key_sep)
            _write(item, style, out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(style.item_sep)
            _write(item, style, out)
        out.append("]")
    else:
        raise TypeError(f"cannot encode {type(value).__name__}")


def dumps(value: Any, encoding: Encoding = "compact") -> bytes:
    """`value` (dicts, lists, str, int, bool, None, `Number`) as JSON in `encoding`."""
    if encoding == "compact":
        return orjson.dumps(value, default=_fragment)
    out: list[str] = []
    _write(value, _STYLES[encoding], out)
    return "".join(out).encode()
