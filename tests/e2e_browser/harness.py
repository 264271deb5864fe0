"""Real processes for the browser tests: the simulated upstream, a gateway, and the
sample app served on other localhost origins. Loopback only; every wait is bounded."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from e2e.harness import free_port, stop_process, wait_healthy

from gateway.tokens import mint_session_token

SIGNIN_LIMIT = 3


def spawn(
    args: list[str], *, log: Path, health: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    with log.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, *args], stdout=err, stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    wait_healthy(health, process, log, " ".join(args))
    return process


@dataclass(frozen=True)
class AppKeys:
    app_id: str
    publishable_key: str
    secret_key: str


@dataclass
class Stack:
    """Gateway + simulated upstream + the sample app on two more origins."""

    workdir: Path
    gateway: str
    app: str  # the sample app, on its registered origin
    evil: str  # the same sample app on an origin registered only by another app
    acme: AppKeys
    db: Path
    config: Path
    processes: ExitStack = field(default_factory=ExitStack)

    def token(self, user: str, *, cap: float = 5.0) -> str:
        return mint_session_token(self.acme.secret_key, user, monthly_usd=cap).token

    def start_consent(self, user: str, *, origin: str | None = None) -> str:
        """A consent URL made through the API, as the SDK would."""
        response = httpx.post(
            f"{self.gateway}/v1/connect",
            headers={"Authorization": f"Bearer {self.token(user)}",
                     "Origin": origin or self.app},
            timeout=10,
        )
        response.raise_for_status()
        url: str = response.json()["url"]
        return url

    def sql(self, query: str, *args: object) -> list[tuple[object, ...]]:
        with sqlite3.connect(self.db, timeout=5) as db:
            rows = db.execute(query, args).fetchall()
        return rows


def _create_app(
    config: Path, name: str, origin: str, *, log: Path, kek: str | None = None
) -> AppKeys:
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "apps", "create", name, "--live",
         "--origin", origin, "--config", str(config)],
        capture_output=True, text=True, timeout=30, check=False,
        env={**os.environ, "WATTFARE_FUNDING_KEK": kek or ""},
    )
    if done.returncode != 0:
        raise RuntimeError(f"apps create failed: {done.stderr}")
    doc = json.loads(done.stdout)
    return AppKeys(doc["app_id"], doc["publishable_key"], doc["secret_key"])


def start_stack(workdir: Path, *, funding_kek: str | None = None) -> Stack:
    """With ``funding_kek``, people fund their own requests (``[funding] modes =
    ["user"]``), connecting OpenRouter through the simulated upstream's ``/auth``."""
    ports = {name: free_port() for name in ("upstream", "gateway", "app", "evil")}
    gateway = f"http://127.0.0.1:{ports['gateway']}"
    app = f"http://127.0.0.1:{ports['app']}"
    evil = f"http://127.0.0.1:{ports['evil']}"
    db = workdir / "wattfare.db"
    config = workdir / "wattfare.toml"
    config.write_text(
        "[server]\n"
        f"port = {ports['gateway']}\n"
        f'public_url = "{gateway}"\n'
        "[upstream]\n"
        f'base_url = "http://127.0.0.1:{ports["upstream"]}/api/v1"\n'
        'api_key_env = "WATTFARE_BROWSER_TEST_UPSTREAM_KEY"\n'
        "[store]\n"
        f'path = "{db}"\n'
        "[consent]\n"
        "default_budget_usd = 20\n"
        f"signin_attempts_per_email = {SIGNIN_LIMIT}\n"
        "attempt_window_s = 600\n"
    )
    if funding_kek is not None:
        with config.open("a") as file:
            file.write(
                '[funding]\nmodes = ["user"]\n'
                f'openrouter_auth_url = "http://127.0.0.1:{ports["upstream"]}/auth"\n'
            )
    acme = _create_app(config, "Acme Writer", app, log=workdir / "cli.log", kek=funding_kek)
    _create_app(config, "Other App", evil, log=workdir / "cli.log", kek=funding_kek)
    stack = Stack(workdir=workdir, gateway=gateway, app=app, evil=evil, acme=acme, db=db,
                  config=config)
    try:
        upstream = spawn(
            ["-m", "gateway.cli", "fake-upstream", "--port", str(ports["upstream"]),
             "--gap-ms", "30", "--chunks", "12"],
            log=workdir / "upstream.log",
            health=f"http://127.0.0.1:{ports['upstream']}/healthz",
        )
        stack.processes.callback(stop_process, upstream)
        server = spawn(
            ["-m", "gateway.cli", "serve", "--config", str(config)],
            log=workdir / "gateway.log", health=f"{gateway}/healthz",
            env={"WATTFARE_BROWSER_TEST_UPSTREAM_KEY": "sk-or-test",
                 "WATTFARE_FUNDING_KEK": funding_kek or ""},
        )
        stack.processes.callback(stop_process, server)
        for name, url in (("app", app), ("evil", evil)):
            sample = spawn(
                ["-m", "gateway.consent.sample_app", "--port", str(ports[name]),
                 "--gateway", gateway],
                log=workdir / f"{name}.log", health=f"{url}/session?user=health",
                env={"WATTFARE_SAMPLE_SECRET_KEY": acme.secret_key},
            )
            stack.processes.callback(stop_process, sample)
    except BaseException:
        stack.processes.close()
        raise
    return stack
