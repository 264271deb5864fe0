"""The LiteLLM proxy as a comparison path: its own venv, no database, one worker.

``ensure_installed`` creates ``bench/.venv-litellm`` (gitignored) with a pinned
``litellm[proxy]`` the first time; ``start`` writes a config that routes the bench model to
the simulated upstream through LiteLLM's OpenRouter provider. Everything that could reach
off the machine is switched off: the model cost map is read from the package
(``LITELLM_LOCAL_MODEL_COST_MAP``), telemetry is off, and any proxy-aware client is
pointed at a closed loopback port, so a stray outbound call fails at once instead of
leaving the machine. The run also samples the process's sockets and reports any remote
address off loopback.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.procs import LOOPBACK, Proc, free_port, start

LITELLM_VERSION = "1.80.17"
BENCH_DIR = Path(__file__).resolve().parent
VENV = BENCH_DIR / ".venv-litellm"
MASTER_KEY = "sk-bench-litellm"
INSTALL_TIMEOUT_S = 900
_VERSION_SNIPPET = "import importlib.metadata as m; print(m.version('litellm'))"


def venv_python() -> Path:
    return VENV / "bin" / "python"


def installed_version() -> str | None:
    """The LiteLLM version in the bench venv, or None when it is not installed."""
    if not venv_python().exists():
        return None
    try:
        out = subprocess.run(
            [str(venv_python()), "-c", _VERSION_SNIPPET],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
    except (subprocess.SubprocessError, OSError):
        return None
    return out.stdout.strip() or None


def ensure_installed(*, log: Path) -> str:
    """Install the pinned LiteLLM into its venv if needed; return its version.

    Raises RuntimeError with the reason when it cannot be installed.
    """
    version = installed_version()
    if version == LITELLM_VERSION:
        return version
    try:
        with log.open("ab") as out:
            if not venv_python().exists():
                # The interpreter that runs the bench makes the venv: same Python version.
                subprocess.run(
                    [sys.executable, "-m", "venv", "--clear", str(VENV)],
                    stdout=out, stderr=subprocess.STDOUT, timeout=120, check=True,
                )
            subprocess.run(
                [str(venv_python()), "-m", "pip", "install", "--quiet",
                 "--disable-pip-version-check", f"litellm[proxy]=={LITELLM_VERSION}"],
                stdout=out, stderr=subprocess.STDOUT, timeout=INSTALL_TIMEOUT_S, check=True,
            )
    except (subprocess.SubprocessError, OSError) as exc:
        raise RuntimeError(f"pip install litellm[proxy]=={LITELLM_VERSION} failed: {exc}") from exc
    version = installed_version()
    if version is None:
        raise RuntimeError("litellm installed but cannot be imported")
    return version


def _config(*, model: str, upstream_base: str) -> str:
    # YAML is a superset of JSON: writing JSON spares a YAML dependency here.
    return json.dumps({
        "model_list": [{
            "model_name": model,
            "litellm_params": {
                "model": f"openrouter/{model}",
                "api_base": upstream_base,
                "api_key": "os.environ/OPENROUTER_API_KEY",
            },
        }],
        "litellm_settings": {"telemetry": False, "drop_params": False, "set_verbose": False},
        "general_settings": {"master_key": MASTER_KEY},
    }, indent=2)


def _log_config() -> str:
    # uvicorn's access log off, as it is for the gateway and the floor in this bench.
    return json.dumps({
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {
            "uvicorn.access": {"level": "WARNING"},
            "uvicorn.error": {"level": "WARNING"},
        },
    })


def offline_env(base: dict[str, str]) -> dict[str, str]:
    """The environment that keeps LiteLLM on loopback."""
    closed = f"http://{LOOPBACK}:9"
    return {
        **base,
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "LITELLM_MODE": "PRODUCTION",  # no .env loading
        "DISABLE_ADMIN_UI": "True",
        "NO_DOCS": "True",
        "NO_REDOC": "True",
        "HTTP_PROXY": closed,
        "HTTPS_PROXY": closed,
        "http_proxy": closed,
        "https_proxy": closed,
        "NO_PROXY": f"{LOOPBACK},localhost",
        "no_proxy": f"{LOOPBACK},localhost",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        # LiteLLM ends a stream whose last 100 chunks are identical ("the model is
        # repeating"); the simulated upstream's chunks are identical by design.
        "REPEATED_STREAMING_CHUNK_LIMIT": "1000000",
        # Its upstream pool defaults to 50 connections per host, which would queue the
        # open-streams scenario; the gateway's pool allows 1000.
        "AIOHTTP_CONNECTOR_LIMIT": "4096",
        "AIOHTTP_CONNECTOR_LIMIT_PER_HOST": "4096",
    }


def start_litellm(
    *, model: str, upstream_base: str, work: Path, env: dict[str, str]
) -> tuple[Proc, str]:
    """Start the proxy; return the process and its chat-completions URL (not yet ready)."""
    config = work / "litellm.yaml"
    config.write_text(_config(model=model, upstream_base=upstream_base))
    log_config = work / "litellm-logging.json"
    log_config.write_text(_log_config())
    port = free_port()
    litellm_bin = VENV / "bin" / "litellm"
    proc = start(
        "litellm",
        [str(litellm_bin), "--config", str(config), "--host", LOOPBACK, "--port", str(port),
         "--num_workers", "1", "--telemetry", "False", "--log_config", str(log_config)],
        log_dir=work,
        env=offline_env(env),
        cwd=work,
        port=port,
    )
    return proc, f"http://{LOOPBACK}:{port}"

