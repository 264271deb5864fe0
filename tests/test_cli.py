"""The command line: apps and keys, config errors, and the demo end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from e2e.harness import free_port, stop_process, wait_until

from gateway.cli import main
from gateway.keys import publishable_key_for


def config(tmp_path: Path) -> str:
    file = tmp_path / "w.toml"
    file.write_text('[store]\npath = "w.db"\n')
    return str(file)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_apps_create_list_roll(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(tmp_path)
    code, out, _ = run(capsys, "apps", "create", "shop", "--origin", "https://Shop.example",
                       "--config", cfg)
    assert code == 0
    created = json.loads(out)
    assert set(created) == {"app_id", "name", "mode", "publishable_key", "secret_key", "origins"}
    assert created["mode"] == "test"
    assert created["origins"] == ["https://shop.example"]
    assert publishable_key_for(created["secret_key"]) == created["publishable_key"]

    code, out, _ = run(capsys, "apps", "create", "bank", "--live", "--config", cfg)
    assert json.loads(out)["mode"] == "live"

    code, out, _ = run(capsys, "apps", "list", "--config", cfg)
    listed = json.loads(out)
    assert [a["name"] for a in listed] == ["shop", "bank"]
    assert all("secret_key" not in a for a in listed)

    code, out, _ = run(capsys, "apps", "roll-key", "shop", "--config", cfg)
    rolled = json.loads(out)
    assert rolled["app_id"] == created["app_id"]
    assert rolled["secret_key"] != created["secret_key"]

    code, _, err = run(capsys, "apps", "roll-key", "nope", "--config", cfg)
    assert code == 1
    assert "nope" in err
    code, _, err = run(capsys, "apps", "create", "shop", "--config", cfg)
    assert code == 1
    assert "already exists" in err


@pytest.mark.parametrize(
    "origin",
    [
        pytest.param("shop.example", id="no-scheme"),
        pytest.param("https://shop.example/path", id="path"),
        pytest.param("ftp://shop.example", id="scheme"),
    ],
)
def test_origins_are_checked(tmp_path: Path, origin: str) -> None:
    with pytest.raises(SystemExit):
        main(["apps", "create", "x", "--origin", origin, "--config", config(tmp_path)])


def test_config_error_is_one_line_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[upstream]\nidle_timeout_s = -1\n")
    code, _, err = run(capsys, "serve", "--config", str(bad))
    assert code == 2
    assert err.count("\n") == 1
    assert "upstream.idle_timeout_s" in err


@pytest.mark.e2e
def test_demo_once_streams_a_reply_and_its_cost(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "demo", "--once",
         "--port", str(free_port()), "--upstream-port", str(free_port())],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
        env={**os.environ, "TMPDIR": str(tmp)},
    )
    assert done.returncode == 0, done.stderr
    assert "from wattfare import Wattfare" in done.stdout
    assert "tok tok" in done.stdout
    assert "charged: $0.0000" in done.stdout
    assert "'status': 'connected'" in done.stdout
    assert "Warning" not in done.stderr, done.stderr
    assert list(tmp.iterdir()) == []  # its temporary folder went with it


@pytest.mark.e2e
def test_a_stopped_demo_removes_its_folder_and_its_upstream(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    port, upstream, sample = free_port(), free_port(), free_port()
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        demo = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "demo", "--port", str(port),
             "--upstream-port", str(upstream), "--sample-port", str(sample)],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
            env={**os.environ, "TMPDIR": str(tmp)},
        )
    try:
        assert wait_until(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), timeout=30)
        [folder] = tmp.iterdir()
        assert folder.name.startswith("wattfare-demo-")
        demo.send_signal(signal.SIGTERM)
        demo.wait(timeout=20)
    finally:
        stop_process(demo)
    assert demo.returncode == 128 + signal.SIGTERM, log.read_text()
    assert list(tmp.iterdir()) == []
    assert not _answers(f"http://127.0.0.1:{upstream}/healthz")


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def test_serve_believes_forwarded_headers_only_from_configured_peers() -> None:
    from gateway.config import settings_from_mapping
    from gateway.server import BoundedProtocol, uvicorn_options

    plain = uvicorn_options(settings_from_mapping({}, environ={}))
    assert plain["proxy_headers"] is False
    assert plain["http"] is BoundedProtocol
    behind = uvicorn_options(settings_from_mapping(
        {"server": {"forwarded_allow_ips": ["10.0.0.0/8", "127.0.0.1"]}}, environ={}
    ))
    assert behind["proxy_headers"] is True
    assert behind["forwarded_allow_ips"] == ["10.0.0.0/8", "127.0.0.1"]
