"""Throttling sign-in and sign-up: attempts in a sliding window (per client address),
and a doubling wait after repeated failures (per account and client address).

A limit keyed by the account alone would let anyone lock its owner out with a few wrong
guesses; keyed by account *and* client, a guesser slows down only itself, and with a
wait that doubles instead of a hard block, even a person who shares the guesser's
address is delayed, never shut out.

Counts live in the process: with several workers each counts its own, so an attacker
gets at most ``workers`` times the configured attempts per window. That is documented
rather than hidden; the Argon2 cost per attempt bounds the rate further.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

MAX_KEYS = 100_000


class AttemptLimiter:
    """``hit(key)`` records an attempt; ``blocked(key, limit)`` says if the window is full."""

    def __init__(
        self, *, window_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.window_s = window_s
        self._clock = clock
        self._hits: dict[str, deque[float]] = {}

    def _recent(self, key: str) -> deque[float] | None:
        hits = self._hits.get(key)
        if hits is None:
            return None
        horizon = self._clock() - self.window_s
        while hits and hits[0] <= horizon:
            hits.popleft()
        if not hits:
            del self._hits[key]
            return None
        return hits

    def blocked(self, key: str, limit: int) -> bool:
        hits = self._recent(key)
        return hits is not None and len(hits) >= limit

    def retry_after(self, key: str) -> float:
        """Seconds until the oldest counted attempt leaves the window."""
        hits = self._recent(key)
        if not hits:
            return 0.0
        return max(0.0, hits[0] + self.window_s - self._clock())

    def hit(self, key: str) -> None:
        if len(self._hits) >= MAX_KEYS and key not in self._hits:
            # Keep memory bounded under a flood of distinct keys: drop the stalest half.
            for stale in list(self._hits)[: MAX_KEYS // 2]:
                del self._hits[stale]
        self._hits.setdefault(key, deque()).append(self._clock())

    def reset(self, key: str) -> None:
        self._hits.pop(key, None)


class Backoff:
    """Failures per key; after ``free`` of them each further attempt waits twice as long
    as the one before (``first_wait_s``, twice that, … up to ``max_wait_s``). A success
    clears the key; a key with no failure for twice ``max_wait_s`` is forgotten."""

    def __init__(
        self,
        *,
        free: int,
        max_wait_s: float,
        first_wait_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free = free
        self.max_wait_s = max_wait_s
        self.first_wait_s = first_wait_s
        self._clock = clock
        self._failures: dict[str, tuple[int, float]] = {}  # key -> (count, last failure)

    def _entry(self, key: str) -> tuple[int, float] | None:
        entry = self._failures.get(key)
        if entry is not None and self._clock() - entry[1] > 2 * self.max_wait_s:
            del self._failures[key]
            return None
        return entry

    def wait_s(self, key: str) -> float:
        """Seconds before ``key`` may try again (0 if it may now)."""
        entry = self._entry(key)
        if entry is None or entry[0] < self.free:
            return 0.0
        count, last = entry
        wait = min(self.max_wait_s, self.first_wait_s * 2.0 ** (count - self.free))
        return max(0.0, last + wait - self._clock())

    def fail(self, key: str) -> None:
        if len(self._failures) >= MAX_KEYS and key not in self._failures:
            for stale in list(self._failures)[: MAX_KEYS // 2]:
                del self._failures[stale]
        entry = self._entry(key)
        self._failures[key] = ((entry[0] if entry else 0) + 1, self._clock())

    def reset(self, key: str) -> None:
        self._failures.pop(key, None)
