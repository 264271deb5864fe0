"""Money on any upstream, cell by cell: {openrouter, openai} × {streamed, not} ×
{completes, stopped at the cap, client leaves, upstream error mid-stream, no usage} ×
{compact, spaced JSON}.

In every cell: the charge equals the upstream's own bill to the nano-USD (or is marked
``estimate`` where the upstream keeps no record of it), the user's settled total stays
within the cap, the upstream billed no more than the cap allowed (the gateway bounded
``max_tokens`` by the hold: the operator's excess is 0), and no hold is left (the suite's
invariant, checked after every test).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from gateway.tokens import mint_session_token

from .harness import (
    AppKeys,
    FakeUpstream,
    Gateway,
    GatewayConfig,
    assert_consistent,
    chat_body,
    fake_cost_nano,
    fake_prompt_tokens,
    is_content,
    iter_events,
    ledger,
    settled_nano,
    wait_until,
)

NANO = 1_000_000_000
KEY = "sk-or-v1-e2e"  # the operator's key the harness gives every gateway
PROMPT = "what does money cost"
CHUNKS = 30
KINDS = ("openrouter", "openai")
SCENARIOS = ("completes", "cap", "client_leaves", "upstream_error", "no_usage")
ENCODINGS = ("compact", "spaced")


@pytest.fixture(scope="module")
def gateways(
    tmp_path_factory: pytest.TempPathFactory, fake: FakeUpstream
) -> Iterator[dict[str, tuple[Gateway, AppKeys]]]:
    started: dict[str, tuple[Gateway, AppKeys]] = {}
    try:
        for kind in KINDS:
            gw = Gateway(
                workdir=tmp_path_factory.mktemp(f"gateway-{kind}"),
                upstream_api=fake.api if kind == "openrouter" else f"{fake.root}/v1",
                config=GatewayConfig(upstream_kind=kind, idle_timeout_s=3.0),
            )
            gw.start()
            started[kind] = (gw, gw.create_app("matrix"))
        yield started
    finally:
        for gw, _ in started.values():
            gw.stop()
    for gw, _ in started.values():
        assert "Traceback" not in gw.stderr(), gw.stderr()[-8000:]


def billed(fake: FakeUpstream) -> int:
    doc = httpx.get(f"{fake.root}/_fake/ledger", params={"key": KEY}, timeout=5).json()
    total: int = doc["billed_nano_usd"]
    return total


def request(
    gw: Gateway, app: AppKeys, user_id: str, *, stream: bool, scenario: str, encoding: str,
    cap_nano: int,
) -> None:
    token = mint_session_token(app.secret_key, user_id, monthly_usd=cap_nano / NANO).token
    headers = {"Authorization": f"Bearer {token}"}
    knobs: dict[str, Any] = {"chunks": CHUNKS, "gap_ms": 10, "encoding": encoding,
                             "generation_delay_ms": 200}
    if scenario == "upstream_error":
        knobs.update(fault="mid_stream_error", fault_after=4)
    elif scenario == "no_usage":
        knobs["fault"] = "no_usage"
    elif scenario == "client_leaves":
        if stream:
            knobs["gap_ms"] = 50  # still streaming when the client leaves
        else:
            knobs["ttft_ms"] = 800
    body = chat_body(PROMPT, stream=stream, **knobs)
    if stream:
        body["stream_options"] = {"include_usage": True}
    url = gw.url + "/v1/chat/completions"
    if scenario == "client_leaves":
        if stream:
            with httpx.stream("POST", url, json=body, headers=headers, timeout=10) as response:
                assert response.status_code == 200
                seen = 0
                for _, event in iter_events(response):
                    seen += is_content(event)
                    if seen == 4:
                        break  # the client leaves mid-stream
        else:
            with contextlib.suppress(httpx.ReadTimeout):
                httpx.post(url, json=body, headers=headers,
                           timeout=httpx.Timeout(10, read=0.2))
        return
    response = httpx.post(url, json=body, headers=headers, timeout=15)
    if scenario == "upstream_error" and not stream:
        assert response.status_code == 502, response.text
        return
    assert response.status_code == 200, response.text
    if stream:
        assert response.content.endswith(b"data: [DONE]\n\n")
        if scenario == "cap":
            assert b'"spend_cap_reached"' in response.content


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("stream", [pytest.param(True, id="stream"),
                                    pytest.param(False, id="json")])
@pytest.mark.parametrize("kind", KINDS)
def test_the_charge_is_the_upstreams_bill(
    gateways: dict[str, tuple[Gateway, AppKeys]], fake: FakeUpstream, user_id: str,
    kind: str, stream: bool, scenario: str, encoding: str,
) -> None:
    gw, app = gateways[kind]
    prompt = fake_prompt_tokens(PROMPT)
    # "cap": room for the prompt and 10 tokens of the 30 the upstream would send.
    cap = (fake_cost_nano(prompt_tokens=prompt * 4 + 40, completion_tokens=10)
           if scenario == "cap" else NANO)
    before = billed(fake)
    request(gw, app, user_id, stream=stream, scenario=scenario, encoding=encoding,
            cap_nano=cap)
    assert wait_until(lambda: fake.in_flight() == 0, timeout=5)
    assert wait_until(lambda: len(ledger(gw.db, user_id)) == 1, timeout=5)
    assert_consistent(gw.db, timeout=20)  # look-ups of the upstream's record included
    bill = billed(fake) - before
    [row] = ledger(gw.db, user_id)
    where = (kind, stream, scenario, encoding, row)

    assert row.operator_nano == 0, where
    assert bill <= cap, where  # the upstream was never asked for more than the hold
    assert settled_nano(gw.db, user_id) == row.cost_nano <= cap, where
    if row.cost_source == "estimate":
        # Only where the upstream keeps no record and reported no usage; the estimate
        # is an upper bound of what it billed.
        assert kind == "openai" and scenario != "completes", where
        assert bill <= row.cost_nano, where
    else:
        assert row.cost_nano == bill, where
        reported = "upstream" if kind == "openrouter" else "tokens"
        if scenario == "completes" or (scenario == "cap" and not stream):
            assert row.cost_source == reported, where
        elif scenario == "cap":
            # Stopped at the bound lowered to fit (the upstream's usage), or cut a little
            # earlier by the running estimate, an upper bound (the upstream's record).
            assert row.cost_source in (reported, "generation"), where
        elif kind == "openrouter" and (stream or scenario == "no_usage"):
            assert row.cost_source == "generation", where
    if scenario == "cap":
        assert row.status == ("cut_cap" if stream else "ok"), where
        assert row.completion_tokens < CHUNKS, where
