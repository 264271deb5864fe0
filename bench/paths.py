"""The paths under test and how each is started: one process each, on loopback.

- ``direct``: the client straight to the simulated upstream.
- ``floor-<client>``: :mod:`bench.floor_proxy`, the bare Starlette passthrough, with one
  of its HTTP clients; ``asgi-aiohttp``: the same relay in plain ASGI, no framework.
- ``gateway`` / ``gateway-w2``: ``wattfare serve`` with one or two workers, auth and
  metering on, on the SQLite store.
- ``gateway-pg`` / ``gateway-pg2``: ``wattfare serve`` on the PostgreSQL store, one node,
  or two nodes on one database with the load generator spreading requests over both. The
  database is a throwaway cluster of the path's own (:mod:`bench.pgserver`, with the
  durability the SQLite path has), so that its CPU per request is reported too.
- ``litellm``: the LiteLLM proxy (see :mod:`bench.litellm_path`).

A path that cannot be started is kept, marked unavailable with the reason, so the rest of
the run goes on.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import starlette

from bench import litellm_path
from bench.floor_proxy import CLIENT_KINDS
from bench.pgserver import BENCH_SETTINGS, start_cluster
from bench.procs import (
    LOOPBACK,
    LineChannel,
    Proc,
    ProcGroup,
    StartError,
    free_port,
    start,
    stop_loadgen,
)

MODEL = "openai/gpt-4o-mini"
UPSTREAM_KEY = "sk-or-bench"
REPO = Path(__file__).resolve().parent.parent

ALL_PATHS: tuple[str, ...] = (
    "direct",
    *(f"floor-{kind}" for kind in CLIENT_KINDS),
    "asgi-aiohttp",
    "gateway",
    "gateway-w2",
    "gateway-pg",
    "gateway-pg2",
    "litellm",
)
PG_PATHS = ("gateway-pg", "gateway-pg2")
PROXIED = tuple(p for p in ALL_PATHS if p != "direct")


@dataclass
class Endpoint:
    """One path: where to send requests, with what headers, and the process behind it."""

    name: str
    url: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    user_header: str | None = None
    proc: Proc | None = None
    ready_url: str = ""
    available: bool = True
    reason: str = ""
    version: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def fail(self, reason: str) -> None:
        self.available = False
        self.reason = reason.strip().replace("\n", " | ")[:600]
        if self.proc is not None:
            self.proc.stop()

    def describe(self) -> dict[str, Any]:
        return {
            "available": self.available,
            "reason": self.reason,
            "version": self.version,
            "pid": self.proc.pid if self.proc is not None else None,
        }


_CLI = "import sys; from gateway.cli import main; sys.exit(main())"


def wattfare_argv() -> list[str]:
    """How to run the project's CLI with the interpreter that runs the bench."""
    script = Path(sys.executable).with_name("wattfare")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", _CLI]


def start_upstream(*, work: Path, env: dict[str, str]) -> tuple[Proc, str]:
    """Start the simulated upstream; return it, ready, and its base URL."""
    port = free_port()
    if importlib.util.find_spec("gateway.cli") is not None:
        argv = [*wattfare_argv(), "fake-upstream", "--host", LOOPBACK, "--port", str(port)]
    else:
        # Before the CLI exists, serve the simulated upstream's module directly.
        argv = [sys.executable, "-c",
                "import sys; from gateway.fake_upstream.settings import "
                "FakeUpstreamSettings, serve; "
                "serve(host=sys.argv[1], port=int(sys.argv[2]), settings=FakeUpstreamSettings())",
                LOOPBACK, str(port)]
    proc = start(
        "upstream",
        argv,
        log_dir=work,
        env=env,
        cwd=work,
        port=port,
    )
    base = f"http://{LOOPBACK}:{port}/api/v1"
    proc.wait_http(f"{base}/models", timeout_s=30)
    return proc, base


def start_floor(name: str, *, upstream_base: str, work: Path, env: dict[str, str]) -> Endpoint:
    """``floor-<client>`` (Starlette) or ``asgi-<client>`` (plain ASGI)."""
    port = free_port()
    prefix, _, kind = name.partition("-")
    framework = "asgi" if prefix == "asgi" else "starlette"
    proc = start(
        name,
        [sys.executable, "-m", "bench.floor_proxy", "--upstream", upstream_base,
         "--port", str(port), "--client", kind, "--framework", framework],
        log_dir=work,
        env=env,
        cwd=REPO,
        port=port,
    )
    base = f"http://{LOOPBACK}:{port}"
    version = "plain ASGI" if framework == "asgi" else f"Starlette {starlette.__version__}"
    return Endpoint(
        name=name, url=f"{base}/v1/chat/completions", proc=proc, ready_url=f"{base}/",
        version=version,
    )


def gateway_available() -> str:
    """Empty when the gateway can be served, else why not."""
    for module in ("gateway.app", "gateway.cli"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:
            found = False
        if not found:
            return f"the gateway is not there yet: no module {module}"
    return ""


def _gateway_config(
    *, port: int, upstream_base: str, db: Path, metering: Mapping[str, float] | None = None,
    postgres: bool = False,
) -> str:
    extra = [f"{key} = {value}" for key, value in (metering or {}).items()]
    store = (['backend = "postgres"', 'url_env = "WATTFARE_DATABASE_URL"'] if postgres
             else ['backend = "sqlite"', f'path = "{db}"'])
    return "\n".join([
        "[server]",
        f'host = "{LOOPBACK}"',
        f"port = {port}",
        f'public_url = "http://{LOOPBACK}:{port}"',
        "access_log = false",
        "",
        "[upstream]",
        f'base_url = "{upstream_base}"',
        'api_key_env = "OPENROUTER_API_KEY"',
        "connect_timeout_s = 5",
        "first_byte_timeout_s = 60",
        "idle_timeout_s = 60",
        'transport = "aiohttp"',
        "",
        "[store]",
        *store,
        "",
        "[metering]",
        "default_monthly_usd = 1000000",
        *extra,
        "",
    ])


def start_gateway(
    name: str,
    *,
    workers: int,
    upstream_base: str,
    work: Path,
    env: dict[str, str],
    metering: Mapping[str, float] | None = None,
    database_url: str = "",
    nodes: int = 1,
    wrap: Sequence[str] = (),
) -> Endpoint:
    """Write a config, create a test-mode app, and start ``wattfare serve`` (``nodes`` of
    them on the PostgreSQL database at ``database_url``, if given; under ``wrap``, a
    command such as valgrind, if given)."""
    endpoint = Endpoint(name=name)
    missing = gateway_available()
    if missing:
        endpoint.fail(missing)
        return endpoint
    if database_url:
        env = {**env, "WATTFARE_DATABASE_URL": database_url}
    port = free_port()
    db = work / f"{name}.db"
    config = work / f"{name}.toml"
    config.write_text(
        _gateway_config(port=port, upstream_base=upstream_base, db=db, metering=metering,
                        postgres=bool(database_url))
    )
    try:
        created = subprocess.run(
            [*wattfare_argv(), "apps", "create", "bench", "--config", str(config)],
            capture_output=True, text=True, timeout=60, check=True, env=env, cwd=work,
        )
        app = json.loads(created.stdout)
        secret = str(app["secret_key"])
    except (subprocess.SubprocessError, OSError, ValueError, KeyError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        endpoint.fail(f"wattfare apps create failed: {exc} {detail}")
        return endpoint
    # Under a wrapper, the interpreter itself runs under it (not an entry script).
    cli = [*wrap, sys.executable, "-c", _CLI] if wrap else wattfare_argv()
    argv = [*cli, "serve", "--config", str(config)]
    if workers > 1:
        argv += ["--workers", str(workers)]
    endpoint.proc = start(name, argv, log_dir=work, env=env, cwd=work, port=port)
    base = f"http://{LOOPBACK}:{port}"
    endpoint.url = f"{base}/v1/chat/completions"
    endpoint.ready_url = f"{base}/healthz"
    members = [endpoint.proc]
    for n in range(1, nodes):  # more nodes: the same settings on ports of their own
        node_port = free_port()
        node_config = work / f"{name}-node{n + 1}.toml"
        node_config.write_text(config.read_text().replace(f"port = {port}",
                                                          f"port = {node_port}", 1))
        members.append(start(f"{name}-node{n + 1}",
                             [*wattfare_argv(), "serve", "--config", str(node_config)],
                             log_dir=work, env=env, cwd=work, port=node_port))
        endpoint.extra.setdefault("urls", [endpoint.url]).append(
            f"http://{LOOPBACK}:{node_port}/v1/chat/completions"
        )
    if nodes > 1:
        endpoint.proc = ProcGroup.of(name, members)
    endpoint.headers = {"Authorization": f"Bearer {secret}"}
    endpoint.user_header = "Wattfare-User"
    endpoint.extra.update({"db": str(db), "config": str(config), "secret_key": secret,
                           "app_id": app.get("app_id"), "base": base, "workers": workers,
                           "nodes": nodes})
    return endpoint


def start_pg_gateway(
    name: str, *, upstream_base: str, work: Path, env: dict[str, str], nodes: int
) -> Endpoint:
    """``nodes`` gateway nodes on a PostgreSQL cluster of their own, whose processes are
    stopped with them and whose CPU is counted apart (``extra["db_proc"]``)."""
    try:
        cluster = start_cluster(work / f"pg-{name}", settings=BENCH_SETTINGS)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        endpoint = Endpoint(name=name)
        endpoint.fail(f"no PostgreSQL server for the bench: {exc}")
        return endpoint
    database = Proc(name=f"{name}-postgres", popen=cluster.server, log_path=cluster.log)
    endpoint = start_gateway(name, workers=1, upstream_base=upstream_base, work=work, env=env,
                             database_url=cluster.url, nodes=nodes)
    members = [endpoint.proc] if endpoint.proc is not None else []
    if isinstance(endpoint.proc, ProcGroup):
        members = endpoint.proc.members
    endpoint.proc = ProcGroup.of(name, members, companions=[database])
    endpoint.extra["db_proc"] = database
    return endpoint


def start_litellm(
    *, upstream_base: str, work: Path, env: dict[str, str], install: bool
) -> Endpoint:
    endpoint = Endpoint(name="litellm")
    try:
        if install:
            endpoint.version = litellm_path.ensure_installed(log=work / "litellm-install.log")
        else:
            endpoint.version = litellm_path.installed_version() or ""
            if not endpoint.version:
                endpoint.fail("not installed (python -m bench setup installs it)")
                return endpoint
    except RuntimeError as exc:
        endpoint.fail(str(exc))
        return endpoint
    proc, base = litellm_path.start_litellm(
        model=MODEL, upstream_base=upstream_base, work=work, env=env
    )
    endpoint.proc = proc
    endpoint.url = f"{base}/v1/chat/completions"
    endpoint.ready_url = f"{base}/health/liveliness"
    endpoint.headers = {"Authorization": f"Bearer {litellm_path.MASTER_KEY}"}
    return endpoint


def start_paths(
    names: list[str], *, upstream_base: str, work: Path, env: dict[str, str], install: bool
) -> dict[str, Endpoint]:
    """Start every named path (processes first, then wait for all of them)."""
    endpoints: dict[str, Endpoint] = {}
    for name in names:
        if name == "direct":
            endpoints[name] = Endpoint(
                name=name, url=f"{upstream_base}/chat/completions",
                headers={"Authorization": f"Bearer {UPSTREAM_KEY}"},
            )
        elif name.startswith(("floor-", "asgi-")):
            endpoints[name] = start_floor(name, upstream_base=upstream_base, work=work, env=env)
        elif name in ("gateway", "gateway-w2"):
            workers = 2 if name == "gateway-w2" else 1
            endpoints[name] = start_gateway(
                name, workers=workers, upstream_base=upstream_base, work=work, env=env
            )
        elif name in PG_PATHS:
            endpoints[name] = start_pg_gateway(
                name, upstream_base=upstream_base, work=work, env=env,
                nodes=2 if name == "gateway-pg2" else 1,
            )
        elif name == "litellm":
            endpoints[name] = start_litellm(
                upstream_base=upstream_base, work=work, env=env, install=install
            )
        else:
            raise ValueError(f"unknown path {name!r}; known: {', '.join(ALL_PATHS)}")
    for endpoint in endpoints.values():
        if endpoint.available and endpoint.proc is not None:
            timeout = 120.0 if endpoint.name == "litellm" else 60.0
            try:
                endpoint.proc.wait_http(endpoint.ready_url, timeout_s=timeout)
            except StartError as exc:
                endpoint.fail(str(exc))
    return endpoints


def stop_all(procs: list[Proc]) -> None:
    for proc in procs:
        proc.stop()



def start_loadgen(work: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """The load generator, in its own process, spoken to over its stdin and stdout."""
    with (work / "loadgen.log").open("ab") as lg_log:
        return subprocess.Popen([sys.executable, "-m", "bench.loadgen"], cwd=REPO, env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=lg_log)


def bench_env() -> dict[str, str]:
    """The environment every process of a bench run gets."""
    env = {k: v for k, v in os.environ.items() if k != "WATTFARE_CONFIG"}
    env["OPENROUTER_API_KEY"] = UPSTREAM_KEY
    return env


@contextlib.contextmanager
def under_load(
    names: list[str], *, work: Path, env: dict[str, str]
) -> Iterator[tuple[str, dict[str, Endpoint], LineChannel]]:
    """The simulated upstream, the named paths and a load generator, for a small tool:
    (upstream base URL, endpoints, channel to the load generator). Endpoints added to
    the dict meanwhile are stopped with the rest."""
    upstream, base = start_upstream(work=work, env=env)
    endpoints: dict[str, Endpoint] = {}
    loadgen: subprocess.Popen[bytes] | None = None
    try:
        endpoints = start_paths(names, upstream_base=base, work=work, env=env, install=False)
        loadgen = start_loadgen(work, env)
        yield base, endpoints, LineChannel(loadgen)
    finally:
        if loadgen is not None:
            stop_loadgen(loadgen)
        for endpoint in endpoints.values():
            if endpoint.proc is not None:
                endpoint.proc.stop()
        upstream.stop()
