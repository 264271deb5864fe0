"""What the simulated upstream's tests share: starting it, requests, reading SSE."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
from e2e.harness import free_port, stop_process, wait_healthy

KEY = "sk-or-v1-test"
COMMENT = b": OPENROUTER PROCESSING"
DONE = b"data: [DONE]"
MINI = "openai/gpt-4o-mini"
MINI_PROMPT, MINI_COMPLETION = Decimal("0.00000015"), Decimal("0.0000006")
# "hello world" is 11 UTF-8 bytes: ceil(11 / 4) + 3 for the one message.
HELLO_PROMPT_TOKENS = 6


@dataclass(frozen=True)
class Upstream:
    """A running fake-upstream process."""

    port: int
    process: subprocess.Popen[bytes]

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api(self) -> str:
        return f"{self.root}/api/v1"

    @property
    def openai(self) -> str:
        return f"{self.root}/v1"


def start_upstream(log: Path, *extra: str) -> Iterator[Upstream]:
    port = free_port()
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway.fake_upstream", "--port", str(port), *extra],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", process, log, "fake upstream")
        yield Upstream(port=port, process=process)
    finally:
        stop_process(process)


def chat(*, stream: bool = True, model: str = MINI, **fake: Any) -> Any:
    """A chat request body for "hello world", with `fake` knobs."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "hello world"}],
        "stream": stream,
    }
    if fake:
        body["fake"] = fake
    return body


def events(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\n\n"), raw[-80:]
    return raw[:-2].split(b"\n\n")


def data(event: bytes) -> Any:
    assert event.startswith(b"data: "), event
    return json.loads(event[6:], parse_float=Decimal)


def stream(client: httpx.Client, body: Any) -> tuple[httpx.Response, list[bytes]]:
    with client.stream("POST", "/chat/completions", json=body) as response:
        raw = response.read()
    return response, events(raw)


def read_into(response: httpx.Response, received: bytearray) -> None:
    for part in response.iter_raw():
        received += part


def leave_after_first_content(client: httpx.Client, body: Any) -> str:
    """Stream `body`, leave at the first content chunk; the generation id."""
    with client.stream("POST", "/chat/completions", json=body) as response:
        generation_id: str = response.headers.get("x-generation-id", "")
        for part in response.iter_raw():
            if b'"content":"tok "' in part:
                break
    return generation_id


def wait_idle(upstream: Upstream) -> None:
    deadline = time.monotonic() + 10
    while httpx.get(f"{upstream.root}/healthz", timeout=5).json()["in_flight"] != 0:
        assert time.monotonic() < deadline, "a request stayed open after its client left"
        time.sleep(0.05)


def generation(client: httpx.Client, generation_id: str) -> Any:
    """The `/generation` record (asserting it is readable now)."""
    found = client.get("/generation", params={"id": generation_id})
    assert found.status_code == 200, found.text
    return json.loads(found.content, parse_float=Decimal)["data"]


def billed_nano(root: str, key: str) -> int:
    """What the fake's ledger says `key` was billed, in nano-USD."""
    entry = httpx.get(f"{root}/_fake/ledger", params={"key": key}, timeout=5).json()
    value: int = entry["billed_nano_usd"]
    return value


def nano(usd: Decimal) -> int:
    scaled = usd * 1_000_000_000
    assert scaled == scaled.to_integral_value()
    return int(scaled)
