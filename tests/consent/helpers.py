"""Helpers for the consent layer's tests: a gateway app on a fresh database, in-process."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from starlette.testclient import TestClient

from gateway.app import Gateway, create_app
from gateway.config import Settings, settings_from_mapping
from gateway.consent.passwords import Passwords
from gateway.consent.web import ConsentState
from gateway.store.base import NewApp
from gateway.store.sqlite import SQLiteStore
from gateway.tokens import mint_session_token

PUBLIC = "http://testserver"
APP_ORIGIN = "http://app.localhost:5173"
OTHER_ORIGIN = "http://other.localhost:5174"


@dataclass
class Env:
    client: TestClient
    gateway: Gateway
    live: NewApp
    test: NewApp
    other: NewApp
    db: str

    def token(self, user: str = "u1", *, app: NewApp | None = None, cap: float | None = 5.0) -> str:
        return mint_session_token((app or self.live).keys.secret_key, user, monthly_usd=cap).token

    def sql(self, query: str, *args: object) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.db, timeout=5) as db:
            return db.execute(query, args).fetchall()


def make_settings(
    db: str, *, funding: dict[str, object] | None = None,
    environ: dict[str, str] | None = None, **consent: object,
) -> Settings:
    return settings_from_mapping(
        {
            "server": {"public_url": PUBLIC, "access_log": False},
            "store": {"path": db},
            "consent": consent,
            "funding": funding or {},
        },
        environ=environ or {},
    )


async def _apps(db: str) -> tuple[NewApp, NewApp, NewApp]:
    store = SQLiteStore(db)
    await store.open()
    try:
        live = await store.create_app(name="Shop", mode="live", origins=(APP_ORIGIN,))
        test = await store.create_app(name="Sandbox", mode="test", origins=(APP_ORIGIN,))
        other = await store.create_app(name="Other", mode="live", origins=(OTHER_ORIGIN,))
    finally:
        await store.close()
    return live, test, other


def start(
    tmp_path: Path, *, funding: dict[str, object] | None = None,
    environ: dict[str, str] | None = None, **consent: object,
) -> Iterator[Env]:
    db = str(tmp_path / "wattfare.db")
    live, test, other = asyncio.run(_apps(db))
    gateway = create_app(make_settings(db, funding=funding, environ=environ, **consent))
    with TestClient(gateway, base_url=PUBLIC) as client:
        state = gateway.router.state.consent
        assert isinstance(state, ConsentState)
        # The library's default profile costs 64 MiB per hash; tests use a cheap one.
        state.passwords = Passwords(PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
        yield Env(client=client, gateway=gateway, live=live, test=test, other=other, db=db)


CSRF_RE = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = CSRF_RE.search(html)
    assert match is not None, "no CSRF field on the page"
    return match.group(1)


PASSWORD = "correct horse"


def sign_up(client: TestClient, email: str = "ada@example.com", password: str = PASSWORD) -> None:
    """Create the account, then sign in with it (sign-up alone signs nobody in)."""
    page = client.get("/signup")
    response = client.post(
        "/signup", data={"csrf": csrf_of(page.text), "email": email, "password": password},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    assert response.headers["location"].startswith("/signin?")
    sign_in(client, email, password)


def sign_in(client: TestClient, email: str = "ada@example.com", password: str = PASSWORD) -> None:
    page = client.get("/signin")
    response = client.post(
        "/signin", data={"csrf": csrf_of(page.text), "email": email, "password": password},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text


def start_consent(env: Env, *, user: str = "u1", cap: float | None = 5.0) -> str:
    return start_consent_with_proof(env, user=user, cap=cap)[0]


def start_consent_with_proof(
    env: Env, *, user: str = "u1", cap: float | None = 5.0
) -> tuple[str, str]:
    """The consent page's path, and the proof only the page that asked receives."""
    response = env.client.post(
        "/v1/connect", headers={"Authorization": f"Bearer {env.token(user, cap=cap)}",
                                "Origin": APP_ORIGIN},
    )
    assert response.status_code == 200, response.text
    url = response.json()["url"]
    assert url.startswith(PUBLIC + "/connect/")
    return str(url[len(PUBLIC):]), str(response.json()["proof"])

