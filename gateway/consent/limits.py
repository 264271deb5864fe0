"""Counting attempts in a sliding window (sign-in and sign-up throttling).

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
