"""Incremental SSE handling on raw bytes, without building an object per event.

The relay forwards the upstream's bytes unchanged; it only needs, per event, a cheap upper
bound on the tokens it carries (and to notice the rare events it must read: the trailing
usage chunk, an error chunk, ``[DONE]``, which :mod:`gateway.relay` does with ``in``).
Everything here works on ``bytes`` with ``bytes.find`` and one compiled pattern, which
run in C; JSON is parsed only for those rare events.

Events are delimited by a blank line (``\\n\\n``), as OpenRouter sends them.
"""

from __future__ import annotations

import re
from typing import Final

DONE: Final = b"[DONE]"

# A text field and its value: a key whose value is generated text (every spelling of a
# chunk carries it under one of these names; a key written with escapes is caught by the
# check in ``token_bound``), then the value's first byte, or the whole of it when it is a
# string. One scan in C finds them all, whatever the spacing and key order; within a
# string only escaped quotes occur, so no key is ever found inside one. Possessive
# repeats: a string that does not close fails at once and matches as a lone ``"``.
_TEXT_FIELD: Final = re.compile(
    rb'"(?:content|reasoning|reasoning_content|arguments|refusal|text|name|summary|data)"'
    rb"[ \t\r\n]*+:[ \t\r\n]*+"
    rb'("[^"\\]*+(?:\\.[^"\\]*+)*+"|["\[{])',
    re.DOTALL,
)


# What the relay must read itself when it occurs in an event (found with ``bytes.find``;
# inside a JSON string a quote is escaped, so ``"usage"`` there is never a false hit).
RARE: Final = (b'"usage"', b'"error"', b"data: " + DONE)


def token_bound(buf: bytes, start: int = 0, stop: int | None = None) -> int:
    """An upper bound on the tokens the chunks in ``buf[start:stop]`` carry: the bytes of
    their text fields, whatever the JSON spelling (spaces, key order, escapes).

    Byte-level BPE tokens each decode to at least one byte, so the byte length of the
    generated text (escapes counted as written, which only over-counts) bounds the
    token count from above. Hidden reasoning tokens are the exception; the upstream's
    usage chunk reports them and settlement charges them. Over a run of whole events the
    bound is the sum of theirs: a key cannot straddle two well-formed events.

    A text value that is not a string (an array of parts), or a string that does not
    close, counts every byte of the run. A key spelled with escapes
    (``"\\u0063ontent"``) would escape the search, so when a ``\\u`` escape stands
    anywhere but inside the text values found, every byte of the run counts: still a
    bound, and such upstreams are rare.
    """
    if stop is None:
        stop = len(buf)
    values = _TEXT_FIELD.findall(buf, start, stop)
    total = -2 * len(values)  # each string's quotes
    for value in values:
        if len(value) == 1:
            return stop - start  # parts, or a string that does not close
        total += len(value)
    # A backslash first (one byte, found by memchr; most runs have none), then whether
    # every ``\\u`` of the run lies in the text values found.
    if buf.find(b"\\", start, stop) != -1:
        text = b"".join(values)
        if buf.count(b"\\", start, stop) != text.count(b"\\") and (
            buf.count(b"\\u", start, stop) != text.count(b"\\u")
        ):
            return stop - start
    return total


def first_rare(buf: bytes, stop: int, start: int = 0) -> int:
    """Where the first event holding one of :data:`RARE` starts in ``buf[start:stop]`` (a
    run of whole events); ``stop`` if none does."""
    first = stop
    for marker in RARE:
        at = buf.find(marker, start, first)
        if at != -1:
            first = at
    if first == stop:
        return stop
    before = buf.rfind(b"\n\n", start, first)
    return start if before == -1 else before + 2


def after_comments(buf: bytes, pos: int, stop: int) -> int:
    """Where the first event at or after ``pos`` that is not a comment starts, in
    ``buf[:stop]`` (whole events); comments (``: OPENROUTER PROCESSING``) come before the
    first token and carry none. ``stop`` when a comment does not end before it."""
    while pos < stop and buf.startswith(b":", pos):
        nxt = buf.find(b"\n\n", pos, stop)
        if nxt == -1:
            return stop
        pos = nxt + 2
    return pos


def template_of(buf: bytes, start: int, stop: int) -> tuple[bytes, bytes] | None:
    """The event starting at ``start`` as a template (the bytes before its text and the
    bytes after), when it is a plain data event whose text is one string, with no
    backslash outside it and none of :data:`RARE` in it; else None.

    Every event of a stream that is those same two byte strings around a text without
    quotes has the same JSON structure, so its one text field is that text and its bound
    is that text's length (what :func:`token_bound` finds in it): the meter counts such
    events by finding the end of their text (:meth:`gateway.relay.meter.Meter.scan`)."""
    end = buf.find(b"\n\n", start, stop)
    if end == -1 or not buf.startswith(b"data: {", start) or buf[end - 1] != 0x7D:
        return None
    end += 2
    if first_rare(buf, end, start) != end:
        return None
    fields = _TEXT_FIELD.finditer(buf, start, end)
    field = next(fields, None)
    if field is None or next(fields, None) is not None:
        return None
    value_start, value_end = field.span(1)
    if value_end - value_start < 2:  # parts, or a string that does not close
        return None
    if buf.find(b"\\", start, value_start) != -1 or buf.find(b"\\", value_end, end) != -1:
        return None
    return buf[start:value_start + 1], buf[value_end - 1:end]


def well_formed(buf: bytes, pos: int, stop: int) -> bool:
    """Whether every ``data:`` event in ``buf[pos:stop]`` (whole events) carries a JSON
    object, as far as its first and last bytes tell."""
    pos = after_comments(buf, pos, stop)
    if pos >= stop:
        return True  # comments only (or one not yet whole): no data event
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
