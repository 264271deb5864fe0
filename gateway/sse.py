"""Incremental SSE handling on raw bytes, without building an object per event.

The relay forwards the upstream's bytes unchanged; it only needs, per event, a cheap upper
bound on the tokens it carries (and to notice the rare events it must read: the trailing
usage chunk, an error chunk, ``[DONE]``, which :mod:`gateway.relay` does with ``in``).
Everything here works on ``bytes`` with ``bytes.find``, which runs in C; JSON is parsed
only for those rare events.

Events are delimited by a blank line (``\\n\\n``), as OpenRouter sends them.
"""

from __future__ import annotations

from typing import Final

DONE: Final = b"[DONE]"

# The strings inside a chunk that carry generated tokens.
_TOKEN_KEYS: Final = (b'"content":"', b'"reasoning":"', b'"arguments":"', b'"refusal":"')


def _string_end(buf: bytes, start: int) -> int:
    """Index of the closing quote of a JSON string whose body starts at ``start``."""
    end = buf.find(b'"', start)
    while end != -1:
        backslashes = 0
        i = end - 1
        while i >= start and buf[i] == 0x5C:  # '\'
            backslashes += 1
            i -= 1
        if backslashes % 2 == 0:
            return end
        end = buf.find(b'"', end + 1)
    return len(buf)


def token_bound(payload: bytes) -> int:
    """An upper bound on the tokens one chunk carries: the bytes of its text fields.

    Byte-level BPE tokens each decode to at least one byte, so the byte length of the
    generated text (escapes counted as written, which only over-counts) bounds the
    token count from above. Hidden reasoning tokens are the exception; the upstream's
    usage chunk reports them and settlement charges them.
    """
    total = 0
    for key in _TOKEN_KEYS:
        pos = payload.find(key)
        while pos != -1:
            begin = pos + len(key)
            end = _string_end(payload, begin)
            total += end - begin
            pos = payload.find(key, end)
    return total
