"""The production files: the image's build step works as CI runs it, the replicas'
settings validate, and the proxy is set up for streams and slow clients."""

from __future__ import annotations

import asyncio
import re
import subprocess
import uuid
from pathlib import Path

import asyncpg
import httpx
import pytest
from e2e.harness import free_port, stop_process, wait_healthy

from gateway.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


async def _sql(url: str, sql: str) -> None:
    con = await asyncpg.connect(url)
    try:
        await con.execute(sql)
    finally:
        await con.close()


def test_the_image_builds_with_the_install_script_and_runs_unprivileged() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    runs = re.findall(r"^RUN (.+)$", dockerfile, flags=re.MULTILINE)
    assert "sh deploy/install.sh /opt/wattfare" in runs
    assert re.search(r"^USER wattfare$", dockerfile, flags=re.MULTILINE)
    assert 'ENTRYPOINT ["wattfare"]' in dockerfile


def test_the_replicas_settings_validate() -> None:
    settings = load_settings(DEPLOY / "wattfare.toml",
                             environ={"WATTFARE_DATABASE_URL": "postgresql://u:p@db/w",
                                      "OPENROUTER_API_KEY": "k"})
    assert settings.store.backend == "postgres"
    assert settings.server.host == "0.0.0.0"  # noqa: S104 (inside the container's network)
    compose = (DEPLOY / "compose.yaml").read_text()
    assert compose.count("*gateway") == 2 and "postgres:15" in compose
    assert "/etc/wattfare/wattfare.toml" in compose


def test_the_proxy_passes_streams_and_cuts_slow_clients() -> None:
    conf = (DEPLOY / "nginx.conf").read_text()
    for directive in ("proxy_buffering off;", "proxy_request_buffering off;",
                      "client_header_timeout", "client_body_timeout", "client_max_body_size",
                      "proxy_read_timeout", "server gateway-1:8787", "server gateway-2:8787"):
        assert directive in conf, directive


@pytest.mark.e2e
def test_the_install_step_gives_a_gateway_that_serves(tmp_path: Path, pg_url: str) -> None:
    """What the Dockerfile runs, run here: a fresh environment from the package alone,
    then ``wattfare serve`` on PostgreSQL with the replicas' settings (on loopback)."""
    target = tmp_path / "venv"
    subprocess.run(["sh", str(DEPLOY / "install.sh"), str(target)], check=True, timeout=600)
    port = free_port()
    config = tmp_path / "wattfare.toml"
    config.write_text(
        (DEPLOY / "wattfare.toml").read_text()
        .replace('host = "0.0.0.0"', 'host = "127.0.0.1"')
        .replace("port = 8787", f"port = {port}")
    )
    log = tmp_path / "serve.log"
    schema = "deploy_" + uuid.uuid4().hex[:10]
    asyncio.run(_sql(pg_url, f'CREATE SCHEMA "{schema}"'))
    separator = "&" if "?" in pg_url else "?"
    env = {"PATH": "/usr/bin:/bin", "OPENROUTER_API_KEY": "sk-or-v1-deploy",
           "WATTFARE_DATABASE_URL": f"{pg_url}{separator}search_path={schema}"}
    with log.open("wb") as stderr:
        process = subprocess.Popen([str(target / "bin" / "wattfare"), "serve", "--config",
                                    str(config)], stdout=subprocess.DEVNULL, stderr=stderr,
                                   env=env)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/healthz", process, log, "installed gateway")
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    finally:
        stop_process(process)
        asyncio.run(_sql(pg_url, f'DROP SCHEMA "{schema}" CASCADE'))
