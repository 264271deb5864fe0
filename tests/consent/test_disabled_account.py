"""An account the operator disabled (``wattfare accounts disable``): signed out at once,
its sign-in refused, its connections revoked; enabled again, it signs in."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main

from .helpers import PASSWORD, Env, csrf_of, sign_up


def _cli(env: Env, tmp_path: Path, *args: str) -> None:
    config = tmp_path / "cli.toml"
    config.write_text(f'[store]\npath = "{env.db}"\n')
    assert main([*args, "--config", str(config)]) == 0


def _sign_in(env: Env) -> int:
    page = env.client.get("/signin")
    response = env.client.post(
        "/signin", data={"csrf": csrf_of(page.text), "email": "ada@example.com",
                         "password": PASSWORD},
        follow_redirects=False,
    )
    return response.status_code


def test_a_disabled_account_is_signed_out_and_cannot_sign_in(
    env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sign_up(env.client)
    assert env.client.get("/dashboard").status_code == 200
    _cli(env, tmp_path, "accounts", "disable", "ada@example.com")
    response = env.client.get("/dashboard", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/signin")
    env.client.cookies.clear()
    page = env.client.get("/signin")
    refused = env.client.post(
        "/signin", data={"csrf": csrf_of(page.text), "email": "ada@example.com",
                         "password": PASSWORD},
    )
    assert refused.status_code == 403
    assert "This account is disabled" in refused.text
    assert env.sql("SELECT COUNT(*) FROM web_sessions") == [(0,)]

    _cli(env, tmp_path, "accounts", "enable", "ada@example.com")
    env.client.cookies.clear()
    assert _sign_in(env) == 303
    capsys.readouterr()
