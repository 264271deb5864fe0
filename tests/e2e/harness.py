"""Real processes for the end-to-end tests: the simulated upstream, a uvicorn gateway, the
``wattfare`` command line, and read-only looks into the gateway's SQLite file.

Everything here talks to loopback only (or to the private network of
:mod:`tests.netns`, whose namespaces the tests make), and every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

import httpx

from gateway.fake_upstream import price_of
from gateway.funding.vault import new_kek

MODEL = "openai/gpt-4o-mini"
OPERATOR_KEY = "sk-or-v1-e2e"
# The key-encryption key of every e2e gateway's funding vault (fresh per run).
KEK = new_kek("e2e")
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
SETTLE_TIMEOUT_S = 5.0


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on at ``host`` right now (bound to 0, then released)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: Any, *, timeout: float, interval: float = 0.05) -> bool:
    """Poll ``check()`` until it is truthy or ``timeout`` seconds pass; its last verdict."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def stop_process(process: subprocess.Popen[bytes], *, kill: bool = False) -> None:
    """SIGTERM (or SIGKILL), then SIGKILL after a bounded wait; always reaps the child.

    Reaping matters: a zombie still answers ``kill(pid, 0)``, so a gateway restarted on
    the same database would take a SIGKILLed one for alive.
    """
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=STOP_TIMEOUT_S)


def wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path, what: str) -> None:
    """Poll ``url`` until it answers 200; stop the process and raise if it never does."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            raise RuntimeError(f"{what} did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)


# -- the simulated upstream -------------------------------------------------------------


@dataclass
class FakeUpstream:
    """A running ``gateway.fake_upstream`` process."""

    port: int
    process: subprocess.Popen[bytes]
    log: Path
    host: str = "127.0.0.1"

    @classmethod
    def start(cls, log: Path, *, host: str = "127.0.0.1") -> FakeUpstream:
        port = free_port(host)
        with log.open("wb") as stderr:
            process = subprocess.Popen(
                [sys.executable, "-m", "gateway.fake_upstream", "--host", host,
                 "--port", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        wait_healthy(f"http://{host}:{port}/healthz", process, log, "fake upstream")
        return cls(port=port, process=process, log=log, host=host)

    @property
    def root(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api(self) -> str:
        return f"{self.root}/api/v1"

    def in_flight(self) -> int:
        """Chat requests the fake is serving now."""
        doc = httpx.get(f"{self.root}/healthz", timeout=5).json()
        count: int = doc["in_flight"]
        return count

    def last_request(self) -> Any:
        """The JSON body of the last chat request the fake received (None if none)."""
        return httpx.get(f"{self.api}/_last_request", timeout=5).json()["body"]

    def stop(self) -> None:
        stop_process(self.process)


# -- the gateway ------------------------------------------------------------------------


@dataclass(frozen=True)
class GatewayConfig:
    """The TOML keys the tests vary; everything else keeps its default."""

    max_body_bytes: int = 2048
    first_byte_timeout_s: float = 2.0
    idle_timeout_s: float = 2.0
    default_monthly_usd: float = 10.0
    checkpoint_interval_s: float = 2.0
    transport: str = "aiohttp"
    server_extra: str = ""  # more [server] lines (and tables after them, e.g. [consent])
    # "openai": the fake's OpenAI-compatible dialect (its base URL ends in /v1), priced
    # by [upstream.prices] at the fake's own list prices.
    upstream_kind: str = "openrouter"
    extra: str = ""  # more TOML tables, appended as they are
    # A PostgreSQL URL: the gateway's store is that database (several may share it).
    database_url: str = ""
    lease_s: float = 20.0

    def store_toml(self, db: Path) -> str:
        if self.database_url:
            return f'[store]\nbackend = "postgres"\nlease_s = {self.lease_s}\n'
        return f'[store]\npath = "{db}"\n'

    def env(self) -> dict[str, str]:
        """The environment the gateway and its command line run with."""
        env = {**os.environ, "OPENROUTER_API_KEY": OPERATOR_KEY, "WATTFARE_FUNDING_KEK": KEK}
        env.pop("WATTFARE_CONFIG", None)
        if self.database_url:
            env["WATTFARE_DATABASE_URL"] = self.database_url
        return env

    def toml(self, *, port: int, upstream_api: str, db: Path, host: str = "127.0.0.1") -> str:
        return (
            "[server]\n"
            f'host = "{host}"\n'
            f"port = {port}\n"
            f'public_url = "http://{host}:{port}"\n'
            f"max_body_bytes = {self.max_body_bytes}\n"
            f"{self.server_extra}"
            "[upstream]\n"
            f'kind = "{self.upstream_kind}"\n'
            f'base_url = "{upstream_api}"\n'
            "connect_timeout_s = 2\n"
            f"first_byte_timeout_s = {self.first_byte_timeout_s}\n"
            f"idle_timeout_s = {self.idle_timeout_s}\n"
            f'transport = "{self.transport}"\n'
            + (_fake_prices() if self.upstream_kind == "openai" else "")
            + self.store_toml(db)
            + "[metering]\n"
            f"default_monthly_usd = {self.default_monthly_usd}\n"
            f"checkpoint_interval_s = {self.checkpoint_interval_s}\n"
            + self.extra
        )


def _fake_prices() -> str:
    """``[upstream.prices]`` at the simulated upstream's own list prices (USD per million
    tokens), for the models the tests use."""
    lines = ["[upstream.prices]"]
    for model in (MODEL,):
        prompt, completion = (Decimal(p) * 1_000_000 for p in price_of(model))
        lines.append(f'"{model}" = {{ prompt = {prompt}, completion = {completion} }}')
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class AppKeys:
    """What ``wattfare apps create`` printed."""

    app_id: str
    name: str
    mode: str
    publishable_key: str
    secret_key: str


def cli(
    *args: str, config: Path, timeout: float = 30, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``wattfare ARGS --config FILE`` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**(os.environ if env is None else env), "WATTFARE_FUNDING_KEK": KEK},
    )


def _keys(completed: subprocess.CompletedProcess[str]) -> AppKeys:
    if completed.returncode != 0:
        raise RuntimeError(f"wattfare apps failed: {completed.stderr}")
    doc = json.loads(completed.stdout)
    return AppKeys(
        app_id=doc["app_id"],
        name=doc["name"],
        mode=doc["mode"],
        publishable_key=doc["publishable_key"],
        secret_key=doc["secret_key"],
    )


@dataclass
class Gateway:
    """A ``wattfare serve`` process on its own port, database and stderr log.

    ``host`` is the address it listens on; ``launcher`` goes in front of its command (to
    run it in a network namespace of :mod:`tests.netns`, as a host of its own). The
    launcher must exec the command, so that the process's PID is the gateway's.
    """

    workdir: Path
    upstream_api: str
    config: GatewayConfig = field(default_factory=GatewayConfig)
    database: Path | None = None  # another gateway's, to run two processes on one store
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    host: str = "127.0.0.1"
    launcher: tuple[str, ...] = ()

    @property
    def config_path(self) -> Path:
        return self.workdir / "wattfare.toml"

    @property
    def db(self) -> Path:
        return self.database or self.workdir / "wattfare.db"

    @property
    def log(self) -> Path:
        return self.workdir / "gateway.stderr.log"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start (or restart, on a fresh port and the same database) the gateway."""
        # (In a namespace of its own any port is free: one free here will do.)
        self.port = free_port()
        self.config_path.write_text(
            self.config.toml(port=self.port, upstream_api=self.upstream_api, db=self.db,
                             host=self.host)
        )
        env = self.config.env()
        with self.log.open("ab") as stderr:
            self.process = subprocess.Popen(
                [*self.launcher, sys.executable, "-m", "gateway.cli", "serve", "--config",
                 str(self.config_path)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=env,
            )
        wait_healthy(f"{self.url}/healthz", self.process, self.log, "gateway")

    def stop(self, *, kill: bool = False) -> None:
        if self.process is not None:
            stop_process(self.process, kill=kill)

    def stderr(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def create_app(
        self, name: str, *, live: bool = False, origins: tuple[str, ...] = ()
    ) -> AppKeys:
        args = ["apps", "create", name, *(["--live"] if live else [])]
        for origin in origins:
            args += ["--origin", origin]
        return _keys(cli(*args, config=self.config_path, env=self.config.env()))

    def roll_key(self, app: str) -> AppKeys:
        return _keys(cli("apps", "roll-key", app, config=self.config_path,
                         env=self.config.env()))


# -- the store, read directly -----------------------------------------------------------


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on a read-only connection to the gateway's database."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


@dataclass(frozen=True)
class LedgerRow:
    request_id: str
    status: str
    http_status: int
    error_code: str | None
    cost_nano: int
    upstream_cost_nano: int
    operator_nano: int
    cost_source: str
    prompt_tokens: int
    completion_tokens: int


def ledger(db: Path, user_id: str) -> list[LedgerRow]:
    """The ledger rows of ``user_id`` (any app), oldest first."""
    rows = query(
        db,
        "SELECT request_id, status, http_status, error_code, cost_nano, upstream_cost_nano, "
        "operator_nano, cost_source, prompt_tokens, completion_tokens FROM ledger "
        "WHERE user_id = ? ORDER BY id",
        (user_id,),
    )
    return [LedgerRow(*row) for row in rows]


def settled_nano(db: Path, user_id: str) -> int:
    rows = query(db, "SELECT COALESCE(SUM(settled_nano), 0) FROM spend WHERE user_id = ?",
                 (user_id,))
    total: int = rows[0][0]
    return total


def holds_of(db: Path, user_id: str) -> int:
    count: int = query(db, "SELECT COUNT(*) FROM holds WHERE user_id = ?", (user_id,))[0][0]
    return count


def assert_consistent(db: Path, *, timeout: float = SETTLE_TIMEOUT_S) -> None:
    """Ledger and counters agree and no hold is left, for every connection and month.

    Settlement runs right after a stream's last bytes, so a client can finish reading a
    moment before its hold is gone: poll (bounded) until no hold is left, then check.
    """
    settled = wait_until(lambda: query(db, "SELECT COUNT(*) FROM holds")[0][0] == 0,
                         timeout=timeout)
    left = query(db, "SELECT id, user_id, amount_nano, used_nano FROM holds")
    assert settled, f"holds left after {timeout} s: {left}"
    rows = query(
        db,
        "SELECT s.app_id, s.user_id, s.period, s.settled_nano, s.held_nano, c.cap_nano, "
        "(SELECT COALESCE(SUM(l.cost_nano), 0) FROM ledger l WHERE l.app_id = s.app_id "
        " AND l.user_id = s.user_id AND l.period = s.period) "
        "FROM spend s LEFT JOIN connections c ON c.app_id = s.app_id AND c.user_id = s.user_id",
    )
    for app_id, user_id, period, settled_total, held, cap, ledger_total in rows:
        where = f"{app_id}/{user_id}/{period}"
        assert settled_total == ledger_total, (
            f"{where}: spend {settled_total} != ledger {ledger_total}"
        )
        assert held == 0, f"{where}: held_nano {held} with no hold left"
        assert cap is not None, f"{where}: spend without a connection"
        assert settled_total <= cap, f"{where}: settled {settled_total} > cap {cap}"
    orphans = query(
        db,
        "SELECT l.app_id, l.user_id, l.period, SUM(l.cost_nano) FROM ledger l "
        "LEFT JOIN spend s ON s.app_id = l.app_id AND s.user_id = l.user_id "
        "AND s.period = l.period WHERE s.app_id IS NULL GROUP BY 1, 2, 3 "
        "HAVING SUM(l.cost_nano) > 0",
    )
    assert not orphans, f"charged ledger rows without a spend row: {orphans}"


# -- prices and bytes -------------------------------------------------------------------

_NANO = Decimal(1_000_000_000)


def fake_cost_nano(*, prompt_tokens: int, completion_tokens: int, model: str = MODEL) -> int:
    """What the fake bills (its documented rule), in nano-USD rounded up as the gateway does."""
    prompt, completion = (Decimal(p) for p in price_of(model))
    usd = prompt * prompt_tokens + completion * completion_tokens
    return int((usd * _NANO).to_integral_value(rounding=ROUND_CEILING))


def fake_prompt_tokens(*contents: str) -> int:
    """The fake tokenizer: ceil(UTF-8 bytes / 4) + 3 per message."""
    size = sum(len(c.encode()) for c in contents)
    return -(-size // 4) + 3 * len(contents)


def events_of(raw: bytes) -> list[bytes]:
    """The SSE events of a body (comments included), without their blank-line ends."""
    return [e for e in raw.split(b"\n\n") if e]


def data_events(raw: bytes) -> list[Any]:
    """The JSON payloads of a body's ``data:`` events, in order (``[DONE]`` as a string)."""
    out: list[Any] = []
    for event in events_of(raw):
        if event.startswith(b"data: "):
            payload = event[6:]
            out.append("[DONE]" if payload == b"[DONE]" else json.loads(payload))
    return out


_ID = re.compile(rb'"id":"gen-[0-9]+-[A-Za-z0-9]{20}"')
_CREATED = re.compile(rb'"created":[0-9]+')


def without_ids(raw: bytes) -> bytes:
    """``raw`` with each generation id and timestamp blanked (they differ per request)."""
    return _CREATED.sub(b'"created":0', _ID.sub(b'"id":"gen"', raw))


def secret_headers(app: AppKeys, user_id: str) -> dict[str, str]:
    """Server-to-server credentials: the app's secret key, acting for ``user_id``."""
    return {"Authorization": f"Bearer {app.secret_key}", "Wattfare-User": user_id}


def chat_body(content: str, *, stream: bool = True, **fake: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "stream": stream,
    }
    if fake:
        body["fake"] = fake
    return body


def read_content(stream: Iterable[Any], into: list[str]) -> None:
    """Append the text of an ``openai`` chat stream's chunks to ``into`` as they come, so
    that what arrived before the SDK raised is still known afterwards."""
    for chunk in stream:
        into.extend(choice.delta.content or "" for choice in chunk.choices)


def iter_events(response: httpx.Response) -> Iterator[tuple[float, bytes]]:
    """Each complete SSE event of a streamed response, with the monotonic time it arrived."""
    pending = b""
    for chunk in response.iter_raw():
        now = time.monotonic()
        pending += chunk
        while (end := pending.find(b"\n\n")) != -1:
            event, pending = pending[:end], pending[end + 2:]
            yield now, event


def is_content(event: bytes) -> bool:
    """A chunk carrying generated text, in any JSON spelling."""
    if not event.startswith(b"data: {") or b"content" not in event:
        return False
    try:
        doc = json.loads(event[6:])
    except ValueError:
        return False
    choices = doc.get("choices") if isinstance(doc, dict) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return False
    return bool((choices[0].get("delta") or {}).get("content"))


class BackgroundStream:
    """A streamed chat completion read on its own thread, each event timestamped as it
    arrives, so the test can act (revoke, kill) while the stream runs and still tell
    what arrived before from what arrived after."""

    def __init__(self, url: str, *, body: dict[str, Any], headers: dict[str, str]) -> None:
        self.events: list[tuple[float, bytes]] = []
        self.status = 0
        self.error: BaseException | None = None
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(url, body, headers))
        self._thread.start()

    def _read(self, url: str, body: dict[str, Any], headers: dict[str, str]) -> None:
        try:
            with httpx.stream("POST", url, json=body, headers=headers, timeout=30) as response:
                self.status = response.status_code
                for at, event in iter_events(response):
                    with self._changed:
                        self.events.append((at, event))
                        self._changed.notify_all()
        except BaseException as exc:  # reported by join()
            self.error = exc
        finally:
            with self._changed:
                self._changed.notify_all()

    def wait_for_content(self, count: int, *, timeout: float) -> bool:
        """Wait until ``count`` content chunks have arrived (False if the stream ended or
        ``timeout`` passed first)."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while sum(is_content(e) for _, e in self.events) < count:
                left = deadline - time.monotonic()
                if left <= 0 or not self._thread.is_alive():
                    return False
                self._changed.wait(left)
            return True

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not end"
        if self.error is not None:
            raise self.error

    def after(self, moment: float) -> list[bytes]:
        return [event for at, event in self.events if at > moment]
