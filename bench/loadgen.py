"""The load generator: its own process, an aiohttp client on uvloop.

Driven by JSON lines on stdin, it answers with JSON lines on stdout, so one process serves
a whole run and its start-up cost is paid once:

    {"op": "run", ...}    constant-concurrency or fixed-rate load  -> {"ok", "result"}
    {"op": "fetch", ...}  one request, the whole body returned     -> {"ok", "status", "text"}
    {"op": "hold", ...}   open streams step by step and keep them open; after each step
                          -> {"event": "level", "open": n}, then waits for
                          {"op": "continue"} or {"op": "release"}  -> {"ok", "result"}
    {"op": "quit"}

Per request it measures the time to the response headers (TTFB), to the first chunk that
carries content, every gap between reads of the body, and the total. Every loop is
bounded by a request count and by time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import uvloop

from bench.stats import summarize

_CONTENT = re.compile(rb'"content":\s*"(?!")')
_DONE = b"data: [DONE]"
_MAX_GAPS = 2_000_000


@dataclass(slots=True)
class Samples:
    ttfb: list[float] = field(default_factory=list)
    first_content: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    # The gaps split: before a read that carries ``[DONE]`` (the end of the stream,
    # which a metering proxy may hold until its charge is committed) and all others.
    chunk_gaps: list[float] = field(default_factory=list)
    done_waits: list[float] = field(default_factory=list)
    nbytes: list[int] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    ok: int = 0
    started: int = 0

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def outcome(self, kind: str) -> None:
        self.outcomes[kind] = self.outcomes.get(kind, 0) + 1


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    headers: dict[str, str]
    body: bytes
    stream: bool
    user_header: str | None
    user_prefix: str
    user_pool: int
    # Several nodes of one path: request ``seq`` goes to ``urls[seq % len(urls)]``.
    urls: tuple[str, ...] = ()

    def url_for(self, seq: int) -> str:
        return self.urls[seq % len(self.urls)] if self.urls else self.url

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Target:
        body = spec["body"]
        return cls(
            url=spec["url"],
            headers={"Content-Type": "application/json", **spec.get("headers", {})},
            body=json.dumps(body, separators=(",", ":")).encode(),
            stream=bool(body.get("stream", False)),
            user_header=spec.get("user_header"),
            user_prefix=spec.get("user_prefix", "bench-user-"),
            user_pool=max(1, int(spec.get("user_pool", 1))),
            urls=tuple(spec.get("urls") or ()),
        )

    def headers_for(self, seq: int) -> dict[str, str]:
        if self.user_header is None:
            return self.headers
        return {**self.headers, self.user_header: f"{self.user_prefix}{seq % self.user_pool}"}


def _classify(status: int, body: bytes) -> str:
    if status == 402:
        return "rejected_402"
    if status != 200:
        return f"status_{status}"
    if b"spend_cap_reached" in body:
        return "cap_event_done" if body.rstrip().endswith(_DONE) else "cap_event_no_done"
    return "completed" if body.rstrip().endswith(_DONE) else "no_done"


async def one_request(
    session: aiohttp.ClientSession, target: Target, seq: int, samples: Samples, *, classify: bool
) -> None:
    """Send one request and record its timings into ``samples``."""
    samples.started += 1
    t0 = time.perf_counter()
    gaps: list[float] = []
    done_wait = -1.0
    first_content = -1.0
    nbytes = 0
    tail = b""
    kept: list[bytes] = []
    try:
        async with session.post(
            target.url_for(seq), data=target.body, headers=target.headers_for(seq)
        ) as resp:
            ttfb = time.perf_counter() - t0
            last = -1.0
            async for data in resp.content.iter_any():
                now = time.perf_counter()
                if last >= 0:
                    if _DONE in data:
                        done_wait = now - last
                    else:
                        gaps.append(now - last)
                last = now
                nbytes += len(data)
                if first_content < 0 and (not target.stream or _CONTENT.search(data)):
                    first_content = now - t0
                tail = (tail + data)[-64:]
                if classify:
                    kept.append(data)
            status = resp.status
    except asyncio.CancelledError:
        samples.error("cut")
        raise
    except (TimeoutError, aiohttp.ClientError, OSError) as exc:
        samples.error(f"exception:{type(exc).__name__}")
        return
    total = time.perf_counter() - t0
    if classify:
        samples.outcome(_classify(status, b"".join(kept)))
    if status != 200:
        samples.error(f"status_{status}")
        return
    if target.stream and not tail.rstrip().endswith(_DONE):
        samples.error("no_done")
        return
    samples.ok += 1
    samples.ttfb.append(ttfb)
    samples.first_content.append(first_content if first_content >= 0 else total)
    samples.total.append(total)
    samples.nbytes.append(nbytes)
    if len(samples.gaps) < _MAX_GAPS:
        samples.chunk_gaps.extend(gaps)
        samples.gaps.extend(gaps)
        if done_wait >= 0:
            samples.done_waits.append(done_wait)
            samples.gaps.append(done_wait)


def _session(limit: int, timeout_s: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=0),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        auto_decompress=False,
    )


async def run_load(spec: dict[str, Any]) -> dict[str, Any]:
    """Constant concurrency (``mode="concurrency"``) or fixed rate (``mode="rate"``)."""
    target = Target.from_spec(spec)
    mode = spec.get("mode", "concurrency")
    max_requests = int(spec["max_requests"])
    duration_s = float(spec["duration_s"])
    hard_timeout_s = float(spec.get("hard_timeout_s", duration_s * 4 + 10))
    classify = bool(spec.get("classify", False))
    seq_base = int(spec.get("seq_base", 0))
    samples = Samples()
    counter = iter(range(max_requests))
    t0 = time.perf_counter()
    deadline = t0 + duration_s
    sched_lag = 0.0
    async with _session(0, hard_timeout_s) as session:

        async def worker() -> None:
            for seq in counter:
                if time.perf_counter() >= deadline:
                    return
                await one_request(session, target, seq_base + seq, samples, classify=classify)

        async def paced() -> None:
            nonlocal sched_lag
            interval = 1.0 / float(spec["rate"])
            cap = int(spec.get("max_in_flight", 4096))
            tasks: set[asyncio.Task[None]] = set()
            for seq in counter:
                due = t0 + seq * interval
                if due >= deadline:
                    break
                delay = due - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    sched_lag = max(sched_lag, -delay)
                if len(tasks) >= cap:
                    samples.error("dropped_in_flight_cap")
                    continue
                task = asyncio.ensure_future(
                    one_request(session, target, seq_base + seq, samples, classify=classify)
                )
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks)

        async def constant() -> None:
            await asyncio.gather(*(worker() for _ in range(int(spec["concurrency"]))))

        main = asyncio.ensure_future(paced() if mode == "rate" else constant())
        done, _ = await asyncio.wait({main}, timeout=hard_timeout_s)
        if not done:
            main.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await main
        elapsed = time.perf_counter() - t0
    return {
        "mode": mode,
        "requests": samples.started,
        "ok": samples.ok,
        "errors": samples.errors,
        "outcomes": samples.outcomes,
        "elapsed_s": elapsed,
        "rps": samples.ok / elapsed if elapsed > 0 else 0.0,
        "sched_lag_ms": sched_lag * 1000,
        "ttfb_ms": summarize(samples.ttfb, fine=bool(spec.get("fine", False))),
        "first_content_ms": summarize(samples.first_content),
        "total_ms": summarize(samples.total),
        "gap_ms": summarize(samples.gaps),
        "chunk_gap_ms": summarize(samples.chunk_gaps),
        "done_wait_ms": summarize(samples.done_waits),
        "bytes": {
            "min": min(samples.nbytes, default=0),
            "max": max(samples.nbytes, default=0),
        },
    }


async def fetch(spec: dict[str, Any]) -> dict[str, Any]:
    target = Target.from_spec(spec)
    async with _session(1, float(spec.get("timeout_s", 30))) as session, session.post(
        target.url_for(int(spec.get("seq", 0))), data=target.body,
        headers=target.headers_for(int(spec.get("seq", 0)))
    ) as resp:
        raw = await resp.read()
        return {"status": resp.status, "text": raw.decode("utf-8", "replace")}


async def hold(spec: dict[str, Any], commands: asyncio.Queue[dict[str, Any]]) -> dict[str, Any]:
    """Open streams in steps and keep them open until released; see the module doc."""
    target = Target.from_spec(spec)
    steps = [int(s) for s in spec["steps"]]
    ready_timeout_s = float(spec.get("ready_timeout_s", 20))
    ready = 0
    open_now = 0
    ended_early = 0
    errors: dict[str, int] = {}
    ready_event = asyncio.Event()

    async def one(session: aiohttp.ClientSession, seq: int) -> None:
        nonlocal ready, open_now, ended_early
        try:
            async with session.post(
                target.url_for(seq), data=target.body, headers=target.headers_for(seq)
            ) as resp:
                if resp.status != 200:
                    errors[f"status_{resp.status}"] = errors.get(f"status_{resp.status}", 0) + 1
                    return
                counted = False
                async for data in resp.content.iter_any():
                    if not counted and _CONTENT.search(data):
                        counted = True
                        ready += 1
                        open_now += 1
                        ready_event.set()
                ended_early += 1
                if counted:
                    open_now -= 1
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            kind = f"exception:{type(exc).__name__}"
            errors[kind] = errors.get(kind, 0) + 1

    tasks: list[asyncio.Task[None]] = []
    levels: list[dict[str, Any]] = []
    async with _session(0, float(spec.get("timeout_s", 120))) as session:
        try:
            for step in steps:
                while len(tasks) < step:
                    tasks.append(asyncio.ensure_future(one(session, len(tasks))))
                give_up = time.perf_counter() + ready_timeout_s
                while ready < step and time.perf_counter() < give_up:
                    ready_event.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(ready_event.wait(), 0.25)
                level = {"event": "level", "open": open_now, "wanted": step}
                levels.append(level)
                _emit(level)
                command = await asyncio.wait_for(commands.get(), timeout=300)
                if command.get("op") != "continue":
                    break
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    return {"levels": levels, "errors": errors, "ended_early": ended_early}


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def serve() -> None:
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def read_stdin() -> None:
        # A plain blocking reader thread: the commands are few, and stdin stays open for
        # as long as the process lives, whatever the event loop does. os.read on the raw
        # descriptor, not sys.stdin: a daemon thread blocked inside a buffered reader
        # makes the interpreter abort at exit.
        pending = b""
        while chunk := os.read(0, 1 << 16):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                if line.strip():
                    loop.call_soon_threadsafe(commands.put_nowait, json.loads(line))
        loop.call_soon_threadsafe(commands.put_nowait, {"op": "quit"})

    threading.Thread(target=read_stdin, name="stdin", daemon=True).start()
    while True:
        command = await commands.get()
        op = command.get("op")
        try:
            if op == "quit":
                break
            if op == "run":
                _emit({"ok": True, "result": await run_load(command)})
            elif op == "fetch":
                _emit({"ok": True, **await fetch(command)})
            elif op == "hold":
                _emit({"ok": True, "result": await hold(command, commands)})
            else:
                _emit({"ok": False, "error": f"unknown op {op!r}"})
        except Exception as exc:  # the one boundary: report, keep serving
            _emit({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


def main() -> None:
    uvloop.run(serve())


if __name__ == "__main__":
    main()
