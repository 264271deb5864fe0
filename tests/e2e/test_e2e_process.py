"""The gateway as a process: killed mid-stream and restarted on the same database, and
refusing to start on a bad configuration."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .harness import (
    AppKeys,
    BackgroundStream,
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
    query,
    secret_headers,
    settled_nano,
    wait_until,
)

pytestmark = pytest.mark.e2e

CHAT = "/v1/chat/completions"


@pytest.fixture(scope="module")
def gateway_config() -> GatewayConfig:
    # Checkpoints every 0.2 s, so a hold records what its stream used before the crash.
    return GatewayConfig(checkpoint_interval_s=0.2)


def hold_used(db: Path, user_id: str) -> int | None:
    rows = query(db, "SELECT used_nano FROM holds WHERE user_id = ?", (user_id,))
    return None if not rows else int(rows[0][0])


def test_sigkill_mid_stream_is_reconciled_at_start_up(
    gateway: Gateway, fake: FakeUpstream, app: AppKeys, user_id: str
) -> None:
    headers = secret_headers(app, user_id)
    done = httpx.post(gateway.url + CHAT, json=chat_body("before", stream=False),
                      headers=headers, timeout=20)
    assert done.status_code == 200
    assert_consistent(gateway.db)
    [before] = ledger(gateway.db, user_id)
    assert before.cost_nano > 0

    body = chat_body("hi", chunks=100, gap_ms=100)  # 10 s: still running when killed
    seen = b""
    with httpx.stream("POST", gateway.url + CHAT, json=body, headers=headers,
                      timeout=20) as response:
        assert response.status_code == 200
        events = iter_events(response)
        for _, event in events:
            seen += event + b"\n\n"
            used = hold_used(gateway.db, user_id)
            if used and seen.count(b'"content":"tok "') >= 5:
                break
        else:
            pytest.fail("the stream ended before a checkpoint was recorded")
        gateway.stop(kill=True)
        with pytest.raises(httpx.TransportError):
            seen += b"".join(event + b"\n\n" for _, event in events)
    assert b"data: [DONE]" not in seen
    assert gateway.process is not None and gateway.process.returncode == -9

    # The dead process's hold is still there, with its last checkpoint.
    used = hold_used(gateway.db, user_id)
    assert used is not None and used > 0

    gateway.start()  # same database, fresh process
    assert_consistent(gateway.db, timeout=20)
    rows = ledger(gateway.db, user_id)
    assert [r.status for r in rows] == ["ok", "reconciled"]
    assert rows[0] == before  # the settled charge survived the crash
    # The hold kept the generation's id: reconciliation charged the upstream's record of
    # what the generation cost, not the (over-counting) checkpoint.
    generated = rows[1].completion_tokens
    true_cost = fake_cost_nano(prompt_tokens=fake_prompt_tokens("hi"),
                               completion_tokens=generated)
    assert generated >= 5
    assert (rows[1].cost_nano, rows[1].cost_source, rows[1].error_code) == (
        true_cost, "generation", "process_lost",
    )
    assert settled_nano(gateway.db, user_id) == before.cost_nano + true_cost
    assert wait_until(lambda: fake.in_flight() == 0, timeout=5)
    metrics = httpx.get(gateway.url + "/metrics", timeout=10).text
    assert 'wattfare_generation_lookups_total{result="found"} 1.0' in metrics

    # The restarted gateway serves the same user on.
    again = httpx.post(gateway.url + CHAT, json=chat_body("after", stream=False),
                       headers=headers, timeout=20)
    assert again.status_code == 200
    assert_consistent(gateway.db)


def test_sigterm_lets_open_streams_finish(
    gateway: Gateway, fake: FakeUpstream, app: AppKeys, user_id: str
) -> None:
    """A graceful stop drains: the open stream runs to its end and is settled, and the
    process leaves no hold (nor its instance row) behind."""
    body = chat_body("hi", chunks=15, gap_ms=100)
    received = b""
    with httpx.stream("POST", gateway.url + CHAT, json=body,
                      headers=secret_headers(app, user_id), timeout=20) as response:
        assert response.status_code == 200
        for _, event in iter_events(response):
            received += event + b"\n\n"
            if received.count(b'"content":"tok "') == 3:
                assert gateway.process is not None
                os.kill(gateway.process.pid, signal.SIGTERM)
    assert received.count(b'"content":"tok "') == 15
    assert received.endswith(b"data: [DONE]\n\n")
    assert gateway.process is not None
    gateway.process.wait(timeout=15)
    # The log is written out to its last line before the process dies of the signal.
    log_lines = gateway.log.read_text().splitlines()
    assert "Finished server process" in log_lines[-1]

    assert_consistent(gateway.db, timeout=0)
    [row] = ledger(gateway.db, user_id)
    assert row.status == "ok" and row.cost_source == "upstream"
    assert query(gateway.db, "SELECT COUNT(*) FROM instances") == [(0,)]
    gateway.start()  # for the module's other tests


def test_revocation_from_another_process_cuts_the_stream(
    gateway: Gateway,
    fake: FakeUpstream,
    app: AppKeys,
    user_id: str,
    tmp_path: Path,
) -> None:
    """Two gateways on one database. The second starts while the first streams (its
    start-up reconciliation must leave a live process's hold alone), then revokes the
    connection; the first learns it from the store and cuts its stream."""
    headers = secret_headers(app, user_id)
    stream = BackgroundStream(gateway.url + CHAT, headers=headers,
                              body=chat_body("hi", chunks=80, gap_ms=300))
    other = Gateway(workdir=tmp_path, upstream_api=fake.api, config=gateway.config,
                    database=gateway.db)
    try:
        assert stream.wait_for_content(2, timeout=10)
        other.start()
        assert query(gateway.db, "SELECT COUNT(*) FROM holds WHERE user_id = ?",
                     (user_id,)) == [(1,)]
        deleted = httpx.delete(other.url + "/v1/connection", headers=headers, timeout=10)
        revoked_at = time.monotonic()
        assert deleted.status_code == 200 and deleted.json()["status"] == "revoked"
    finally:
        stream.join(timeout=30)
        other.stop()
    assert "Traceback" not in other.stderr(), other.stderr()

    # The first process polls the store's revocations every 0.25 s: the cut comes
    # within that and one 300 ms chunk.
    after = stream.after(revoked_at)
    assert sum(is_content(e) for e in after) <= 2
    error_at, error = next((at, e) for at, e in stream.events if b'"error"' in e)
    assert b'"code":"connection_revoked"' in error
    assert error_at - revoked_at < 0.25 + 0.3 + 0.5
    assert after[-1] == b"data: [DONE]"
    assert_consistent(gateway.db)
    [row] = ledger(gateway.db, user_id)
    assert (row.status, row.error_code) == ("cut_revoked", "connection_revoked")
    assert row.cost_nano > 0


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        pytest.param('[upstream]\nidle_timeout_s = "soon"\n', "upstream.idle_timeout_s",
                     id="wrong-type"),
        pytest.param("[upstream]\nfirst_byte_timeout_s = 0\n", "upstream.first_byte_timeout_s",
                     id="zero-timeout"),
        pytest.param("[server]\nport = 70000\n", "server.port", id="port-out-of-range"),
        pytest.param('[upstream]\nbase_url = "ftp://example.test"\n', "upstream.base_url",
                     id="not-http"),
        pytest.param('[store]\nbackend = "mongodb"\n', "store.backend", id="unknown-backend"),
        pytest.param("[metering]\ndefault_monthly_usd = -1\n", "metering.default_monthly_usd",
                     id="negative-cap"),
        pytest.param("[server]\nprot = 8080\n", "server.prot", id="unknown-key"),
        pytest.param("[sever]\nport = 8080\n", "sever", id="unknown-section"),
        pytest.param("[server\nport = 8080\n", "invalid TOML", id="not-toml"),
    ],
)
def test_config_error_stops_start_up(tmp_path: Path, toml: str, key: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    completed = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(config)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert completed.returncode == 2
    assert completed.stdout == ""
    lines = completed.stderr.splitlines()
    assert len(lines) == 1, completed.stderr
    assert key in lines[0]


def test_missing_config_file_stops_start_up(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.toml"
    completed = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "serve", "--config", str(missing)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert completed.returncode == 2
    [line] = completed.stderr.splitlines()
    assert str(missing) in line and "not found" in line
