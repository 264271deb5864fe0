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


# What the relay must read itself when it occurs in an event (found with ``bytes.find``;
# inside a JSON string a quote is escaped, so ``"usage"`` there is never a false hit).
RARE: Final = (b'"usage"', b'"error"', b"data: " + DONE)


def _string_end(buf: bytes, start: int, stop: int) -> int:
    """Index of the closing quote of a JSON string whose body starts at ``start``
    (``stop`` when it does not close before ``stop``)."""
    end = buf.find(b'"', start, stop)
    while end != -1:
        backslashes = 0
        i = end - 1
        while i >= start and buf[i] == 0x5C:  # '\'
            backslashes += 1
            i -= 1
        if backslashes % 2 == 0:
            return end
        end = buf.find(b'"', end + 1, stop)
    return stop


def token_bound(buf: bytes, start: int = 0, stop: int | None = None) -> int:
    """An upper bound on the tokens the chunks in ``buf[start:stop]`` carry: the bytes of
    their text fields.

    Byte-level BPE tokens each decode to at least one byte, so the byte length of the
    generated text (escapes counted as written, which only over-counts) bounds the
    token count from above. Hidden reasoning tokens are the exception; the upstream's
    usage chunk reports them and settlement charges them. Over a run of whole events the
    bound is the sum of theirs: a raw key cannot straddle two well-formed events.
    """
    if stop is None:
        stop = len(buf)
    total = 0
    for key in _TOKEN_KEYS:
        pos = buf.find(key, start, stop)
        while pos != -1:
            begin = pos + len(key)
            end = _string_end(buf, begin, stop)
            total += end - begin
            pos = buf.find(key, end, stop)
    return total


def first_rare(buf: bytes, stop: int) -> int:
    """Where the first event holding one of :data:`RARE` starts in ``buf[:stop]`` (a run of
    whole events); ``stop`` if none does."""
    first = stop
    for marker in RARE:
        at = buf.find(marker, 0, first)
        if at != -1:
            first = at
    if first == stop:
        return stop
    before = buf.rfind(b"\n\n", 0, first)
    return 0 if before == -1 else before + 2


def well_formed(buf: bytes, pos: int, stop: int) -> bool:
    """Whether every ``data:`` event in ``buf[pos:stop]`` (whole events) carries a JSON
    object, as far as its first and last bytes tell."""
    # Comments (``: OPENROUTER PROCESSING``) come before the first token: step over them.
    while pos < stop and buf.startswith(b":", pos):
        nxt = buf.find(b"\n\n", pos, stop)
        if nxt == -1:
            return True  # not a whole event: nothing here is a data event
        pos = nxt + 2
    if pos >= stop:
        return True
    # The common run, data events only: every boundary between two events reads
    # ``}\n\ndata: {``. Two counts in C decide it; anything else goes event by event.
    if (
        buf.startswith(b"data: {", pos)
        and buf[stop - 3] == 0x7D
        and buf.count(b"}\n\ndata: {", pos, stop) == buf.count(b"\n\n", pos, stop) - 1
    ):
        return True
    find, startswith = buf.find, buf.startswith
    while pos < stop:
        nxt = find(b"\n\n", pos, stop)
        if startswith(b"data: ", pos) and (buf[pos + 6] != 0x7B or buf[nxt - 1] != 0x7D):
            return False
        pos = nxt + 2
    return True
