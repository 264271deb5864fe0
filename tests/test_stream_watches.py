"""What cancels a relayed stream: the upstream's silence (one loop timer for all streams)
and the client leaving."""

from __future__ import annotations

import asyncio

import pytest
from starlette.types import Message, Receive

from gateway.http import DisconnectWatch
from gateway.relay.idle import IdleTimer, IdleTimers

pytestmark = pytest.mark.asyncio


def _client() -> tuple[asyncio.Queue[Message], Receive]:
    """What the server's ``receive`` will hand over: the test puts the messages."""
    messages: asyncio.Queue[Message] = asyncio.Queue()
    return messages, messages.get


async def _stream(timers: IdleTimers, idle_s: float, *, chunk_every: float | None,
                  log: dict[str, float], name: str, started: float) -> None:
    """A stand-in for the relay: notes a chunk every ``chunk_every`` seconds (or never)
    and records when its idle timer cancelled it."""
    loop = asyncio.get_running_loop()
    idle = IdleTimer(timers, idle_s)
    try:
        while True:
            await asyncio.sleep(chunk_every if chunk_every is not None else 3600)
            idle.last = loop.time()
    except asyncio.CancelledError:
        assert idle.fired
        log[name] = loop.time() - started
        raise
    finally:
        idle.stop()


async def test_only_silent_streams_are_cut_each_after_its_own_period() -> None:
    loop = asyncio.get_running_loop()
    timers = IdleTimers(loop)
    log: dict[str, float] = {}
    started = loop.time()
    tasks = {
        name: asyncio.create_task(
            _stream(timers, idle_s, chunk_every=every, log=log, name=name, started=started)
        )
        for name, idle_s, every in [
            ("silent-short", 0.10, None),
            ("silent-long", 0.30, None),
            ("chatty", 0.10, 0.02),  # chunks well inside its period: never cut
        ]
    }
    await asyncio.sleep(0.6)
    assert tasks["silent-short"].cancelled() and tasks["silent-long"].cancelled()
    assert not tasks["chatty"].done()
    assert 0.09 <= log["silent-short"] < 0.25
    assert 0.29 <= log["silent-long"] < 0.5
    # Only the chatty stream is left, and the timer is armed for it.
    assert len(timers.timers) == 1 and timers.handle is not None

    tasks["chatty"].cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)
    # The last stream gone, no timer is left armed.
    assert not timers.timers and timers.handle is None


async def test_shortening_a_period_rearms_the_shared_timer_earlier() -> None:
    loop = asyncio.get_running_loop()
    timers = IdleTimers(loop)
    cut = asyncio.Event()

    async def stream() -> None:
        idle = IdleTimer(timers, 30.0)
        try:
            await asyncio.sleep(0.02)
            idle.shorten(0.05)  # as after [DONE]
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            assert idle.fired
            cut.set()
            raise
        finally:
            idle.stop()

    task = asyncio.create_task(stream())
    await asyncio.wait_for(cut.wait(), timeout=2)
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()


async def test_disconnect_watch_cancels_its_task_once_the_client_leaves() -> None:
    messages, receive = _client()

    gone = asyncio.Event()

    async def handler() -> None:
        watch = DisconnectWatch(receive)
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            assert watch.gone
            gone.set()
            raise
        finally:
            watch.close()

    task = asyncio.create_task(handler())
    await asyncio.sleep(0)
    # A message that is not a disconnect does not end the watch.
    await messages.put({"type": "http.request", "body": b"", "more_body": False})
    await asyncio.sleep(0.02)
    assert not task.done()
    await messages.put({"type": "http.disconnect"})
    await asyncio.wait_for(gone.wait(), timeout=2)
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()


async def test_disconnect_watch_disarmed_cancels_nothing() -> None:
    messages, receive = _client()

    async def handler() -> bool:
        watch = DisconnectWatch(receive)
        watch.armed = False  # e.g. while the settlement is written
        await messages.put({"type": "http.disconnect"})
        await asyncio.sleep(0.05)
        gone = watch.gone
        watch.close()
        return gone

    assert await handler() is True
