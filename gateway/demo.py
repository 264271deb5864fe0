"""``wattfare demo``: the whole thing on localhost, with nothing to configure.

Starts the simulated upstream (its own process), creates a test-mode app in a fresh
database under a temporary folder, prints a snippet that streams a reply through the
gateway with the server SDK, and serves the gateway until Ctrl-C. With ``--once`` it
runs the snippet itself and exits (0 if a reply and its cost arrived).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from types import FrameType

import httpx
import uvicorn
from starlette.types import ASGIApp

from gateway.app import create_app
from gateway.config import Settings
from gateway.consent.sample_app import sample_app
from gateway.store import make_store

SNIPPET = """\
from wattfare import Wattfare

wattfare = Wattfare(secret_key="{secret_key}", base_url="{base_url}")
client = wattfare.user("alice", monthly_usd=5).openai()
stream = client.chat.completions.create(
    model="openai/gpt-4o-mini",
    messages=[{{"role": "user", "content": "Say hello"}}],
    stream=True,
    stream_options={{"include_usage": True}},
)
for chunk in stream:
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
    if chunk.usage:
        print(f"\\ncharged: ${{getattr(chunk.usage, 'cost', 0):.9f}}")
print(client.with_options().get("/connection", cast_to=object))
"""


def _wait_healthy(url: str, *, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        time.sleep(0.1)
    return False


async def _create_demo_app(settings: Settings) -> str:
    store = make_store(settings.store)
    await store.open()
    try:
        created = await store.create_app(name="demo", mode="test", origins=())
    finally:
        await store.close()
    return created.keys.secret_key


async def _create_sample_app(settings: Settings, *, origin: str) -> str:
    """A live-mode app for the sample page: its users go through the consent popup."""
    store = make_store(settings.store)
    await store.open()
    try:
        created = await store.create_app(name="Acme Writer", mode="live", origins=(origin,))
    finally:
        await store.close()
    return created.keys.secret_key


NEXTJS_ORIGINS = ("http://localhost:3000", "http://127.0.0.1:3000")


async def _create_nextjs_app(settings: Settings) -> str:
    """A test-mode app for ``examples/nextjs`` (``npm start`` serves it on port 3000)."""
    store = make_store(settings.store)
    await store.open()
    try:
        created = await store.create_app(name="Next.js example", mode="test",
                                         origins=NEXTJS_ORIGINS)
    finally:
        await store.close()
    return created.keys.secret_key


class _SideServer(uvicorn.Server):
    """A second server in the same loop that leaves Ctrl-C to the gateway's."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _run_snippet(code: str) -> bool:
    namespace: dict[str, object] = {}
    exec(compile(code, "<demo snippet>", "exec"), namespace)  # noqa: S102 (our own snippet)
    return True


def run_demo(
    settings: Settings, *, port: int, upstream_port: int, once: bool, sample_port: int = 8789
) -> int:
    # The demo's database lives in a temporary folder that goes with the demo, however it
    # ends (--once, Ctrl-C, SIGTERM, an error).
    # SIGTERM's default action would end the process before any ``finally`` runs, and
    # uvicorn re-raises the signal once it has shut down: make it an exit instead.
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm) if main_thread else None
    folder = tempfile.mkdtemp(prefix="wattfare-demo-")
    try:
        return _run_demo_in(
            settings, folder=folder, port=port, upstream_port=upstream_port, once=once,
            sample_port=sample_port,
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        if main_thread:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _run_demo_in(
    settings: Settings, *, folder: str, port: int, upstream_port: int, once: bool,
    sample_port: int,
) -> int:
    host = "127.0.0.1"
    base_url = f"http://{host}:{port}"
    settings = replace(
        settings,
        server=replace(settings.server, host=host, port=port, public_url=base_url),
        upstream=replace(
            settings.upstream,
            base_url=f"http://{host}:{upstream_port}/api/v1",
            api_key="sk-or-demo",
        ),
        store=replace(settings.store, backend="sqlite", path=os.path.join(folder, "demo.db")),
    )
    fake = subprocess.Popen(  # noqa: S603 (our own interpreter and module)
        [sys.executable, "-m", "gateway.cli", "fake-upstream", "--host", host,
         "--port", str(upstream_port), "--gap-ms", "40", "--chunks", "12"],
    )
    try:
        if not _wait_healthy(f"http://{host}:{upstream_port}/healthz", seconds=15):
            sys.stderr.write(f"wattfare: the simulated upstream did not start on port "
                             f"{upstream_port} (is the port free?)\n")
            return 1
        secret_key = asyncio.run(_create_demo_app(settings))
        snippet = SNIPPET.format(secret_key=secret_key, base_url=base_url)
        print(f"Simulated upstream: http://{host}:{upstream_port}/api/v1")
        print(f"Gateway:            {base_url}  (database: {settings.store.path})")
        print("Test-mode app 'demo' created. In another shell (same Python environment), run:\n")
        print(snippet)
        sample = None
        if not once:
            sample_url = f"http://{host}:{sample_port}"
            sample = sample_app(
                gateway_url=base_url,
                secret_key=asyncio.run(_create_sample_app(settings, origin=sample_url)),
            )
            print(f"Sample app (live mode, on its own origin): {sample_url}/")
            print("  Click 'Connect AI budget', create an account in the popup, approve a cap,")
            print(f"  stream a reply, then see and revoke it at {base_url}/dashboard\n")
            nextjs_key = asyncio.run(_create_nextjs_app(settings))
            print("The Next.js example (test mode: consent approves itself), in another shell:")
            print("  (cd js && npm ci && npm run build)   # the wattfare package, once")
            print("  cd examples/nextjs && npm ci && npm run build")
            print(f"  WATTFARE_URL={base_url} WATTFARE_SECRET_KEY={nextjs_key} npm start")
            print(f"  then open {NEXTJS_ORIGINS[0]}/\n")
        sys.stdout.flush()
        return asyncio.run(_serve(
            settings, snippet=snippet if once else None, sample=sample, sample_port=sample_port
        ))
    finally:
        fake.terminate()
        try:
            fake.wait(timeout=10)
        except subprocess.TimeoutExpired:
            fake.kill()


async def _serve(
    settings: Settings, *, snippet: str | None, sample: ASGIApp | None = None,
    sample_port: int = 0,
) -> int:
    config = uvicorn.Config(
        create_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        access_log=False,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    if snippet is None:
        if sample is None:
            await server.serve()
            return 0
        side = _SideServer(uvicorn.Config(
            sample, host=settings.server.host, port=sample_port, access_log=False,
            log_level="warning",
        ))
        side_task = asyncio.create_task(side.serve())
        try:
            await server.serve()
        finally:
            side.should_exit = True
            await side_task
        return 0
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started or task.done():
            break
        await asyncio.sleep(0.05)
    if not server.started:
        sys.stderr.write("wattfare: the gateway did not start (is the port free?)\n")
        server.should_exit = True
        await task
        return 1
    print("Running the snippet:\n")
    try:
        ok = await asyncio.to_thread(_run_snippet, snippet)
    finally:
        server.should_exit = True
        await task
    return 0 if ok else 1
