"""Idle deadlines for every open stream of one event loop, on one loop timer."""

from __future__ import annotations

import asyncio
import math


class IdleTimers:
    """The idle deadlines of every stream of one event loop, on one loop timer.

    A stream stores the time of its latest chunk in its :class:`IdleTimer` (no timer
    work per chunk, and no timer object per stream). The one timer is due at the
    earliest deadline any stream could have: when it fires, it cancels the streams
    silent for their whole period and re-arms for the earliest deadline of the others.
    Chunks only move deadlines later, so the timer is never late; a stream that starts
    or shortens its period re-arms it earlier when needed.
    """

    __slots__ = ("due", "handle", "loop", "timers")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.timers: set[IdleTimer] = set()
        self.handle: asyncio.TimerHandle | None = None
        self.due = math.inf

    def add(self, timer: IdleTimer) -> None:
        self.timers.add(timer)
        self.arm(timer.last + timer.idle_s)

    def discard(self, timer: IdleTimer) -> None:
        self.timers.discard(timer)
        if not self.timers and self.handle is not None:
            self.handle.cancel()
            self.handle, self.due = None, math.inf

    def arm(self, due: float) -> None:
        if due < self.due:
            if self.handle is not None:
                self.handle.cancel()
            self.due = due
            self.handle = self.loop.call_at(due, self._sweep)

    def _sweep(self) -> None:
        self.handle, self.due = None, math.inf
        now = self.loop.time()
        silent: list[IdleTimer] = []
        soonest = math.inf
        for timer in self.timers:
            due = timer.last + timer.idle_s
            if now >= due:
                silent.append(timer)
            elif due < soonest:
                soonest = due
        for timer in silent:
            self.timers.discard(timer)
            timer.fired = True
            timer.task.cancel()
        if soonest < math.inf:
            self.arm(soonest)


class IdleTimer:
    """Cancels the stream's task once nothing has arrived for ``idle_s``: the relay
    stores the time of each chunk in ``last``; :class:`IdleTimers` does the rest."""

    __slots__ = ("fired", "idle_s", "last", "task", "timers")

    def __init__(self, timers: IdleTimers, idle_s: float) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.timers, self.task, self.idle_s = timers, task, idle_s
        self.fired = False
        self.last = timers.loop.time()
        timers.add(self)

    def shorten(self, idle_s: float) -> None:
        """From now on, give up after ``idle_s`` of silence."""
        self.idle_s = idle_s
        self.last = self.timers.loop.time()
        self.timers.arm(self.last + idle_s)

    def stop(self) -> None:
        self.timers.discard(self)


