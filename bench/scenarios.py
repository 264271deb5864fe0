"""The scenarios of the standard and the quick suite.

Each scenario is run once per round on every path; rounds interleave the paths so that
drift on a shared machine hits them all alike. Counts and durations bound every scenario.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from bench.paths import MODEL

PROMPT = [{"role": "user", "content": "Write a short paragraph about loopback networking."}]


@dataclass(frozen=True, slots=True)
class Scenario:
    id: str
    title: str
    chunks: int = 20
    gap_ms: float = 0.0
    ttft_ms: float = 0.0
    stream: bool = True
    mode: str = "concurrency"  # or "rate"
    concurrency: int = 1
    rate: float = 0.0
    duration_s: float = 2.0
    max_requests: int = 1_000_000
    fine: bool = False  # keep the fine TTFB distribution (for the chart)
    # Paths not run in this scenario, and why (shown under the report's tables): a path
    # that cannot finish a request there only spends the run's time on timeouts.
    skip: tuple[str, ...] = ()
    skip_reason: str = ""

    def body(self) -> dict[str, Any]:
        return request_body(
            chunks=self.chunks, gap_ms=self.gap_ms, ttft_ms=self.ttft_ms, stream=self.stream
        )

    def spec(self) -> dict[str, Any]:
        """The load generator's part of a ``run`` command."""
        return {
            "mode": self.mode,
            "concurrency": self.concurrency,
            "rate": self.rate,
            "duration_s": self.duration_s,
            "max_requests": self.max_requests,
            # A slow path still ends: in-flight requests are cut at this bound.
            "hard_timeout_s": self.duration_s + 10.0,
            "fine": self.fine,
            "body": self.body(),
        }

    def describe(self) -> dict[str, Any]:
        return {
            "id": self.id, "title": self.title, "chunks": self.chunks, "gap_ms": self.gap_ms,
            "ttft_ms": self.ttft_ms, "stream": self.stream, "mode": self.mode,
            "concurrency": self.concurrency, "rate": self.rate, "duration_s": self.duration_s,
            "max_requests": self.max_requests, "skip": list(self.skip),
            "skip_reason": self.skip_reason,
        }


def request_body(
    *, chunks: int, gap_ms: float = 0.0, ttft_ms: float = 0.0, stream: bool = True
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": PROMPT,
        "stream": stream,
        "fake": {"chunks": chunks, "gap_ms": gap_ms, "ttft_ms": ttft_ms},
    }
    if stream:
        # Every path relays the usage chunk, as a metering client asks for it (the
        # gateway drops it for a client that does not).
        body["stream_options"] = {"include_usage": True}
    return body


STANDARD: tuple[Scenario, ...] = (
    Scenario("c1", "20 chunks, C=1 (latency)", concurrency=1, duration_s=2.0,
             max_requests=1500, fine=True),
    Scenario("c32", "20 chunks, C=32", concurrency=32, duration_s=1.5),
    Scenario("c128", "20 chunks, C=128", concurrency=128, duration_s=1.5),
    Scenario("c512", "20 chunks, C=512", concurrency=512, duration_s=2.0,
             skip=("floor-httpx", "litellm"),
             skip_reason="both collapse at C=128 already (see that row); at C=512 each of "
                         "their runs took 12 s, 10 of them waiting out the cut-off, and "
                         "LiteLLM completed no request"),
    Scenario("long_c32", "500 chunks, C=32", chunks=500, concurrency=32, duration_s=2.0,
             skip=("litellm",),
             skip_reason="LiteLLM re-encodes every chunk: it completed 0-3 of these "
                         "requests a second, each run waiting out the 10 s cut-off"),
    Scenario("paced_c128", "20 chunks 10 ms apart, C=128", gap_ms=10.0, concurrency=128,
             duration_s=2.0),
    Scenario("nostream_c32", "non-streaming, C=32", stream=False, concurrency=32,
             duration_s=1.5),
    Scenario("rate200", "20 chunks at a fixed 200 req/s", mode="rate", rate=200.0,
             duration_s=1.0),
)

QUICK: tuple[Scenario, ...] = (
    Scenario("c1", "20 chunks, C=1 (latency)", concurrency=1, duration_s=0.4,
             max_requests=100, fine=True),
    Scenario("c32", "20 chunks, C=32", concurrency=32, duration_s=0.5),
    Scenario("paced_c32", "20 chunks 10 ms apart, C=32", gap_ms=10.0, concurrency=32,
             duration_s=0.5),
    Scenario("nostream_c32", "non-streaming, C=32", stream=False, concurrency=32,
             duration_s=0.4),
)


@dataclass(frozen=True, slots=True)
class Suite:
    name: str
    scenarios: tuple[Scenario, ...]
    rounds: int
    warmup_s: float
    hold_steps: tuple[int, ...]
    user_pool: int
    cap_streams: int
    # Waiting for a quiet machine before each round, and re-measuring a noisy cell once:
    # worth it for the standard suite, not for the quick one (which CI runs).
    quiet_wait_s: float = 0.0
    retry_budget: int = 0
    # The soak: requests sent to the gateway after the rounds (so the allocator has seen
    # the suite's high-water mark), its RSS read before and after. ``soak_warm`` first.
    soak_requests: int = 0
    soak_warm: int = 0

    def with_rounds(self, rounds: int | None) -> Suite:
        return self if rounds is None else replace(self, rounds=rounds)


SUITES: dict[str, Suite] = {
    "standard": Suite("standard", STANDARD, rounds=3, warmup_s=2.0,
                      hold_steps=(250, 500, 750, 1000), user_pool=1024, cap_streams=32,
                      quiet_wait_s=20.0, retry_budget=12, soak_requests=100_000,
                      soak_warm=10_000),
    "quick": Suite("quick", QUICK, rounds=2, warmup_s=0.5, hold_steps=(50, 100),
                   user_pool=64, cap_streams=32, soak_requests=500, soak_warm=100),
}

# Streams held open for the memory scenario: long enough to outlast the measurement,
# short enough to end by themselves if anything goes wrong (60 x 0.5 s = 30 s).
HOLD_BODY = request_body(chunks=60, gap_ms=500.0)


def soak_scenario(requests: int) -> Scenario:
    """``requests`` 20-chunk streams at C=32, bounded in time (a slow path reports how
    many it served)."""
    return Scenario("soak", f"soak: {requests:,} streams, C=32", concurrency=32,
                    duration_s=max(10.0, requests / 500), max_requests=requests)
