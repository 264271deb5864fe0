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

# The keys whose values are generated text (every spelling of a chunk carries them under
# these names; a key written with escapes is caught by the check in ``token_bound``).
_TOKEN_KEYS: Final = (
    b'"content"', b'"reasoning"', b'"reasoning_content"', b'"arguments"', b'"refusal"',
    b'"text"', b'"name"', b'"summary"', b'"data"',
)
# JSON's insignificant whitespace.
_SPACE: Final = frozenset(b" \t\r\n")


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


def _value_at(buf: bytes, pos: int, stop: int) -> int:
    """Where the value after a key ending at ``pos`` starts (past ``:`` and whitespace);
    -1 when no ``:`` follows (the match was a value, not a key)."""
    while pos < stop and buf[pos] in _SPACE:
        pos += 1
    if pos >= stop or buf[pos] != 0x3A:  # ':'
        return -1
    pos += 1
    while pos < stop and buf[pos] in _SPACE:
        pos += 1
    return pos


def token_bound(buf: bytes, start: int = 0, stop: int | None = None) -> int:
    """An upper bound on the tokens the chunks in ``buf[start:stop]`` carry: the bytes of
    their text fields, whatever the JSON spelling (spaces, key order, escapes).

    Byte-level BPE tokens each decode to at least one byte, so the byte length of the
    generated text (escapes counted as written, which only over-counts) bounds the
    token count from above. Hidden reasoning tokens are the exception; the upstream's
    usage chunk reports them and settlement charges them. Over a run of whole events the
    bound is the sum of theirs: a key cannot straddle two well-formed events.

    A text value that is not a string (an array of parts) counts every byte from it to
    the end of the run. A key spelled with escapes (``"\\u0063ontent"``) would escape the
    byte search, so when a ``\\u`` escape stands anywhere but inside the text values
    found, every byte of the run counts: still a bound, and such upstreams are rare.
    """
    if stop is None:
        stop = len(buf)
    total = 0
    escapes_in_text = 0
    for key in _TOKEN_KEYS:
        pos = buf.find(key, start, stop)
        while pos != -1:
            value = _value_at(buf, pos + len(key), stop)
            if value == -1:
                pos = buf.find(key, pos + len(key), stop)
                continue
            if value < stop and buf[value] == 0x22:  # '"': a string
                end = _string_end(buf, value + 1, stop)
                total += end - value - 1
                escapes_in_text += buf.count(b"\\u", value + 1, end)
            elif value < stop and buf[value] in b"[{":
                return stop - start  # parts: everything from here on may be text
            else:
                end = value  # null, a number or a boolean: no text
            pos = buf.find(key, end, stop)
    if buf.count(b"\\u", start, stop) != escapes_in_text:
        return stop - start
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
