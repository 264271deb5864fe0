"""Byte-level SSE helpers: the token bound of a chunk."""

from __future__ import annotations

import orjson
import pytest

from gateway.sse import token_bound


def chunk(delta: dict[str, object]) -> bytes:
    return orjson.dumps({"id": "gen-1", "choices": [{"index": 0, "delta": delta}]})


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        pytest.param(chunk({"content": "tok "}), 4, id="plain"),
        pytest.param(chunk({"content": ""}), 0, id="empty"),
        pytest.param(chunk({"content": None}), 0, id="null"),
        pytest.param(chunk({"content": 'say "hi"'}), len(b'say \\"hi\\"'), id="escaped-quotes"),
        pytest.param(chunk({"content": "back\\slash"}), len(b"back\\\\slash"), id="backslash"),
        pytest.param(chunk({"content": "é"}), 2, id="utf8"),
        pytest.param(
            chunk({"reasoning": "think", "content": "ok"}), 7, id="reasoning-and-content"
        ),
        pytest.param(
            chunk({"tool_calls": [{"function": {"arguments": '{"a":1}'}}]}),
            len(b'{\\"a\\":1}'),
            id="tool-arguments",
        ),
    ],
)
def test_token_bound_counts_text_bytes(payload: bytes, expected: int) -> None:
    assert token_bound(payload) == expected


def test_token_bound_is_an_upper_bound_on_bytes_of_text() -> None:
    text = "The quick brown fox — jumps over 13 lazy dogs.\n\t\"ok\""
    assert token_bound(chunk({"content": text})) >= len(text.encode())
