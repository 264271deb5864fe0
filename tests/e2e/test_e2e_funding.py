"""User-funded requests end to end, over real processes: a person connects OpenRouter
(the simulated upstream's ``/auth`` page and code exchange, PKCE S256), their app's
requests are billed to their own key and not the operator's, the upstream's 402/403/401
on that key become ``funding_unavailable`` and a dashboard notice, and the key is in no
log, page, response or readable copy of the database."""

from __future__ import annotations

import asyncio
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import openai
import pytest

from gateway.config import parse_keyring
from gateway.funding.funder import record_of, sealed_of
from gateway.funding.vault import Vault, VaultError, new_kek
from gateway.store.sqlite import SQLiteStore
from gateway.tokens import mint_session_token

from .harness import (
    KEK,
    MODEL,
    OPERATOR_KEY,
    AppKeys,
    FakeUpstream,
    Gateway,
    GatewayConfig,
    assert_consistent,
    chat_body,
    iter_events,
    query,
    wait_until,
)

pytestmark = pytest.mark.e2e

ORIGIN = "http://127.0.0.1:5999"
PASSWORD = "a long passphrase of several words"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
REQUEST = re.compile(r'name="request" value="([^"]+)"')


@pytest.fixture(scope="module")
def gateway_config(fake: FakeUpstream) -> GatewayConfig:
    # Checkpoints every 0.2 s, so a hold records what its stream used before a crash.
    return GatewayConfig(
        checkpoint_interval_s=0.2,
        extra=f'[funding]\nmodes = ["user"]\nopenrouter_auth_url = "{fake.root}/auth"\n',
    )


@pytest.fixture(scope="module")
def live_app(gateway: Gateway) -> AppKeys:
    return gateway.create_app("Writer", live=True, origins=(ORIGIN,))


@dataclass
class Person:
    """One person's browser (a cookie jar) on the gateway and the simulated OpenRouter."""

    gateway: Gateway
    fake: FakeUpstream
    email: str = field(default_factory=lambda: f"p-{uuid.uuid4().hex[:8]}@example.com")
    openrouter_id: str = field(default_factory=lambda: "user_" + uuid.uuid4().hex[:20])
    web: httpx.Client = field(init=False)
    pages: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.web = httpx.Client(base_url=self.gateway.url, timeout=20)

    def page(self, path: str) -> str:
        response = self.web.get(path)
        self.pages.append(response.text)
        return response.text

    def csrf(self, path: str = "/dashboard") -> str:
        match = CSRF.search(self.page(path))
        assert match is not None
        return match.group(1)

    def sign_up(self) -> None:
        """Create the account, then sign in (sign-up alone signs nobody in)."""
        for path in ("/signup", "/signin"):
            done = self.web.post(path, data={"csrf": self.csrf(path), "email": self.email,
                                             "password": PASSWORD})
            assert done.status_code == 303, done.text
        assert self.web.get("/dashboard").status_code == 200

    def start_connect(self, next_url: str = "/dashboard") -> str:
        """POST the dashboard's Connect form: the OpenRouter /auth URL it redirects to."""
        started = self.web.post("/funding/openrouter",
                                data={"csrf": self.csrf(), "next": next_url})
        assert started.status_code == 303, started.text
        location = started.headers["location"]
        assert location.startswith(self.fake.root + "/auth?")
        return location

    def authorize(self, auth_url: str, *, limit: str = "") -> str:
        """Approve on OpenRouter's page: the callback URL it sends the browser to."""
        with httpx.Client(timeout=20) as openrouter:
            page = openrouter.get(auth_url)
            assert page.status_code == 200, page.text
            request = REQUEST.search(page.text)
            assert request is not None
            decided = openrouter.post(
                f"{self.fake.root}/auth/decision",
                data={"request": request.group(1), "account": self.openrouter_id,
                      "limit": limit, "decision": "approve"},
            )
        assert decided.status_code in (302, 303), decided.text
        callback: str = decided.headers["location"]
        assert callback.startswith(self.gateway.url + "/funding/openrouter/callback/")
        return callback

    def connect_openrouter(self) -> None:
        done = self.web.get(self.authorize(self.start_connect()))
        assert done.status_code == 303, done.text
        assert done.headers["location"] == "/dashboard?notice=funding_connected"

    def approve(self, app: AppKeys, user_id: str, *, cap: str = "5") -> None:
        token = mint_session_token(app.secret_key, user_id, monthly_usd=float(cap)).token
        made = httpx.post(f"{self.gateway.url}/v1/connect", timeout=10,
                          headers={"Authorization": f"Bearer {token}", "Origin": ORIGIN})
        assert made.status_code == 200, made.text
        path = made.json()["url"][len(self.gateway.url):]
        done = self.web.post(path, data={"csrf": self.csrf(path), "decision": "approve",
                                         "cap": cap, "proof": made.json()["proof"]})
        assert 'data-state="approved"' in done.text, done.text
        self.pages.append(done.text)


@pytest.fixture
def person(gateway: Gateway, fake: FakeUpstream) -> Iterator[Person]:
    p = Person(gateway=gateway, fake=fake)
    try:
        yield p
    finally:
        p.web.close()


def sdk(gateway: Gateway, app: AppKeys, user_id: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=app.secret_key, max_retries=0,
                         timeout=20, default_headers={"Wattfare-User": user_id})


def stream(client: openai.OpenAI) -> str:
    text = ""
    for chunk in client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello"}], stream=True,
        max_tokens=40,
    ):
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
    return text


def fake_ledger(fake: FakeUpstream) -> dict[str, Any]:
    doc: dict[str, Any] = httpx.get(f"{fake.root}/_fake/ledger", timeout=5).json()
    return doc


def key_of(fake: FakeUpstream, openrouter_id: str) -> str:
    keys: list[str] = [
        k for k, v in fake_ledger(fake)["keys"].items() if v["user_id"] == openrouter_id
    ]
    assert len(keys) == 1, fake_ledger(fake)
    return keys[0]


def key_entry(fake: FakeUpstream, key: str) -> dict[str, Any]:
    entry: dict[str, Any] = httpx.get(f"{fake.root}/_fake/ledger", params={"key": key},
                                      timeout=5).json()
    return entry


def refused(client: openai.OpenAI, *, key: str | None = None) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        stream(client)
    assert caught.value.status_code == 403
    body = caught.value.body
    assert isinstance(body, dict) and body.get("code") == "funding_unavailable", body
    if key is not None:
        assert key not in caught.value.response.text
    return caught.value


def test_requests_are_billed_to_the_persons_own_key(
    gateway: Gateway, fake: FakeUpstream, live_app: AppKeys, person: Person, tmp_path: Path
) -> None:
    user = "u-" + uuid.uuid4().hex[:8]
    person.sign_up()
    person.connect_openrouter()
    assert "your own OpenRouter account" in person.page("/dashboard")
    person.approve(live_app, user)
    operator_before = fake_ledger(fake)["keys"].get(OPERATOR_KEY, {}).get("billed_nano_usd", 0)
    with sdk(gateway, live_app, user) as client:
        assert stream(client)
        connection = client.get("/connection", cast_to=httpx.Response)
    key = key_of(fake, person.openrouter_id)
    assert key not in connection.text
    entry = fake_ledger(fake)["keys"][key]
    assert entry["requests"] == 1 and entry["billed_nano_usd"] > 0
    operator_after = fake_ledger(fake)["keys"].get(OPERATOR_KEY, {}).get("billed_nano_usd", 0)
    assert operator_after == operator_before
    account_id = query(gateway.db, "SELECT id FROM accounts WHERE email = ?", (person.email,))[0][0]
    rows = query(gateway.db, "SELECT funded_by, cost_nano, status FROM ledger WHERE user_id = ?",
                 (user,))
    assert rows == [("account:" + account_id, entry["billed_nano_usd"], "ok")]

    # The key is in no page, no log, and no copy of the database that lacks the KEK.
    assert all(key not in page for page in person.pages)
    assert key not in gateway.stderr()
    copy = tmp_path / "copy.db"
    shutil.copy(gateway.db, copy)
    wal = Path(str(gateway.db) + "-wal")
    if wal.exists():
        shutil.copy(wal, str(copy) + "-wal")
    raw = copy.read_bytes() + (Path(str(copy) + "-wal").read_bytes()
                               if Path(str(copy) + "-wal").exists() else b"")
    assert key.encode() not in raw and key.encode()[-16:] not in raw
    assert asyncio.run(_open_copy(copy, account_id, new_kek("e2e"))) is None
    assert asyncio.run(_open_copy(copy, account_id, KEK)) == key


async def _open_copy(db: Path, account_id: str, kek: str) -> str | None:
    store = SQLiteStore(str(db))
    await store.open()
    try:
        source = await store.funding_source(account_id)
    finally:
        await store.close()
    assert source is not None
    try:
        return Vault(parse_keyring(kek)).open(sealed_of(source), record=record_of(source))
    except VaultError:
        return None


def test_a_user_funded_stream_killed_mid_way_is_reconciled_on_the_persons_key(
    gateway: Gateway, fake: FakeUpstream, live_app: AppKeys, person: Person
) -> None:
    """The gateway is killed (-9) mid-stream and restarted: its hold, reconciled by the
    new process, is charged the upstream's record of that generation, booked to the
    person, and the record is read with the person's key (the operator's cannot read a
    generation of the person's account)."""
    user = "u-" + uuid.uuid4().hex[:8]
    person.sign_up()
    person.connect_openrouter()
    person.approve(live_app, user)
    key = key_of(fake, person.openrouter_id)
    operator_before = key_entry(fake, OPERATOR_KEY)
    headers = {"Authorization": f"Bearer {live_app.secret_key}", "Wattfare-User": user}
    body = chat_body("hi", chunks=100, gap_ms=100)  # 10 s: still running when killed
    with httpx.stream("POST", gateway.url + "/v1/chat/completions", json=body,
                      headers=headers, timeout=20) as response:
        assert response.status_code == 200
        events = iter_events(response)
        seen = 0
        for _, event in events:
            seen += b'"content":"tok "' in event
            used = query(gateway.db, "SELECT used_nano FROM holds WHERE user_id = ?", (user,))
            if seen >= 5 and used and used[0][0] > 0:
                break
        else:
            pytest.fail("the stream ended before a checkpoint was recorded")
        gateway.stop(kill=True)
        with pytest.raises(httpx.TransportError):
            for _ in events:
                pass
    assert gateway.process is not None and gateway.process.returncode == -9
    account_id = query(gateway.db, "SELECT id FROM accounts WHERE email = ?",
                       (person.email,))[0][0]
    [(funded_by, generation_id)] = query(
        gateway.db, "SELECT funded_by, generation_id FROM holds WHERE user_id = ?", (user,)
    )
    assert funded_by == "account:" + account_id and generation_id

    gateway.start()  # same database, fresh process: it reconciles the dead one's hold
    assert_consistent(gateway.db, timeout=30)
    [(status, source, code, cost, booked_to, row_generation)] = query(
        gateway.db, "SELECT status, cost_source, error_code, cost_nano, funded_by, "
        "generation_id FROM ledger WHERE user_id = ?", (user,),
    )
    bill = httpx.get(f"{fake.root}/_fake/ledger", params={"id": generation_id},
                     timeout=5).json()
    assert bill["key"] == key  # the person's key paid for the generation
    assert (status, source, code, booked_to, row_generation) == (
        "reconciled", "generation", "process_lost", "account:" + account_id, generation_id
    )
    assert cost == bill["billed_nano_usd"] > 0
    entry = key_entry(fake, key)
    assert entry["requests"] == 1 and entry["lookups"] >= 1
    operator_after = key_entry(fake, OPERATOR_KEY)
    assert operator_after["billed_nano_usd"] == operator_before["billed_nano_usd"]
    assert operator_after["lookups"] == operator_before["lookups"]
    assert wait_until(lambda: fake.in_flight() == 0, timeout=5)


def test_the_upstreams_refusals_become_funding_unavailable(
    gateway: Gateway, fake: FakeUpstream, live_app: AppKeys, person: Person
) -> None:
    user = "u-" + uuid.uuid4().hex[:8]
    person.sign_up()
    person.connect_openrouter()
    person.approve(live_app, user)
    key = key_of(fake, person.openrouter_id)
    with sdk(gateway, live_app, user) as client:
        httpx.post(f"{fake.root}/_fake/person", timeout=5,
                   json={"user_id": person.openrouter_id, "credits_usd": 0}).raise_for_status()
        assert "out of credit" in refused(client, key=key).message
        assert "out of credit" in person.page("/dashboard")

        httpx.post(f"{fake.root}/_fake/person", timeout=5,
                   json={"user_id": person.openrouter_id, "credits_usd": 10}).raise_for_status()
        assert stream(client)
        assert "out of credit" not in person.page("/dashboard")  # cleared by a success

        httpx.post(f"{fake.root}/_fake/key", timeout=5,
                   json={"key": key, "limit_usd": 0.000000001}).raise_for_status()
        assert "spending limit" in refused(client, key=key).message
        assert "spending limit" in person.page("/dashboard")

        httpx.post(f"{fake.root}/_fake/key", timeout=5,
                   json={"key": key, "revoked": True}).raise_for_status()
        assert "revoked" in refused(client, key=key).message
        assert "no longer accepts the key" in person.page("/dashboard")

        # Reconnect: a new key, and the app works again at once.
        person.connect_openrouter()
        assert stream(client)
        # Disconnect: the stored key is deleted; the app is refused from the next request.
        done = person.web.post("/funding/disconnect", data={"csrf": person.csrf()})
        assert done.status_code == 303
        assert "not connected a funding source" in refused(client).message
    # The upstream's three refusals were relayed (a hold, released: rows costing
    # nothing); nobody to pay is refused before any hold, so it leaves no row.
    rows = query(gateway.db, "SELECT status, error_code, cost_nano FROM ledger "
                 "WHERE user_id = ? AND error_code = 'funding_unavailable'", (user,))
    assert len(rows) == 3 and all(r[2] == 0 for r in rows)
    assert query(gateway.db, "SELECT COUNT(*) FROM holds")[0][0] == 0
    assert key not in gateway.stderr()


def test_a_stolen_callback_url_is_useless(
    gateway: Gateway, fake: FakeUpstream, person: Person
) -> None:
    person.sign_up()
    callback = person.authorize(person.start_connect())
    thief = Person(gateway=gateway, fake=fake)
    try:
        thief.sign_up()
        replay = thief.web.get(callback)
        assert replay.status_code == 400
        # Nor can the code be exchanged without the verifier (which was never sent).
        code = parse_qs(urlsplit(callback).query)["code"][0]
        exchanged = httpx.post(f"{fake.api}/auth/keys", timeout=5,
                               json={"code": code, "code_challenge_method": "S256"})
        assert exchanged.status_code in (400, 403)
        assert "key" not in exchanged.json()
    finally:
        thief.web.close()
    account = query(gateway.db, "SELECT id FROM accounts WHERE email = ?", (thief.email,))
    assert query(gateway.db, "SELECT COUNT(*) FROM funding_sources WHERE account_id = ?",
                 (account[0][0],)) == [(0,)]


def test_a_code_from_another_attempt_fails_the_pkce_check(
    gateway: Gateway, fake: FakeUpstream, person: Person
) -> None:
    person.sign_up()
    first = person.authorize(person.start_connect())
    second = person.authorize(person.start_connect())
    # The second attempt's callback carrying the first attempt's code: the verifier the
    # gateway derives for the second attempt does not match the first's challenge.
    swapped = second.partition("?")[0] + "?" + first.partition("?")[2]
    done = person.web.get(swapped)
    assert done.status_code == 502 and "did not accept" in done.text
    account = query(gateway.db, "SELECT id FROM accounts WHERE email = ?", (person.email,))
    assert query(gateway.db, "SELECT COUNT(*) FROM funding_sources WHERE account_id = ?",
                 (account[0][0],)) == [(0,)]


def test_who_is_not_connected_hears_so_before_who_pays(
    gateway: Gateway, fake: FakeUpstream, live_app: AppKeys, person: Person
) -> None:
    """With people paying for themselves, a user the app never connected is told
    ``not_connected`` (the app's cue to ask for consent), and a revoked one
    ``connection_revoked``, not ``funding_unavailable``; neither leaves a hold or a row."""
    stranger = "u-" + uuid.uuid4().hex[:8]
    with sdk(gateway, live_app, stranger) as client, pytest.raises(
        openai.APIStatusError
    ) as caught:
        stream(client)
    assert (caught.value.status_code, caught.value.code) == (403, "not_connected")

    user = "u-" + uuid.uuid4().hex[:8]
    person.sign_up()
    person.connect_openrouter()
    person.approve(live_app, user)
    done = person.web.post("/funding/disconnect", data={"csrf": person.csrf()})
    assert done.status_code == 303  # connected, but no OpenRouter account to pay with
    with sdk(gateway, live_app, user) as client:
        assert "not connected a funding source" in refused(client).message
        gone = httpx.delete(f"{gateway.url}/v1/connection", timeout=10, headers={
            "Authorization": f"Bearer {live_app.secret_key}", "Wattfare-User": user})
        assert gone.status_code in (200, 204), gone.text
        with pytest.raises(openai.APIStatusError) as caught:
            stream(client)
        assert (caught.value.status_code, caught.value.code) == (403, "connection_revoked")
    assert query(gateway.db, "SELECT COUNT(*) FROM ledger WHERE user_id IN (?, ?)",
                 (stranger, user)) == [(0,)]
    assert query(gateway.db, "SELECT COUNT(*) FROM holds")[0][0] == 0
