"""``wattfare funding new-kek`` and ``rotate-kek``: a key sealed under one KEK opens under
the next after rotation, and only under it once the old one is dropped."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.config import parse_keyring
from gateway.funding.funder import record_of, sealed_of
from gateway.funding.vault import Vault, VaultError
from gateway.store.base import FundingSource
from gateway.store.sqlite import SQLiteStore

SECRET = "sk-or-v1-" + "cd" * 32


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


async def _seed(db: str, vault: Vault) -> str:
    store = SQLiteStore(db)
    await store.open()
    try:
        account = await store.create_account(email="a@b.co", password_hash="x", budget_nano=1)
        draft = FundingSource(
            id="fs_1", account_id=account.id, provider="openrouter", label="OpenRouter",
            kek_id="", wrapped_key=b"", ciphertext=b"", created_at=int(time.time()),
        )
        sealed = vault.seal(SECRET, record=record_of(draft))
        await store.save_funding_source(
            FundingSource(
                id=draft.id, account_id=account.id, provider="openrouter", label="OpenRouter",
                kek_id=sealed.kek_id, wrapped_key=sealed.wrapped_key,
                ciphertext=sealed.ciphertext, created_at=draft.created_at,
            )
        )
        return account.id
    finally:
        await store.close()


async def _source(db: str, account_id: str) -> FundingSource:
    store = SQLiteStore(db)
    await store.open()
    try:
        found = await store.funding_source(account_id)
        assert found is not None
        return found
    finally:
        await store.close()


def test_rotate_kek(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, old, _ = run(capsys, "funding", "new-kek", "--id", "k1")
    assert code == 0 and old.startswith("k1:")
    _, new, _ = run(capsys, "funding", "new-kek", "--id", "k2")
    old, new = old.strip(), new.strip()
    cfg = tmp_path / "w.toml"
    cfg.write_text('[store]\npath = "w.db"\n[funding]\nmodes = ["user"]\n')
    db = str(tmp_path / "w.db")
    account_id = asyncio.run(_seed(db, Vault(parse_keyring(old))))

    monkeypatch.setenv("WATTFARE_FUNDING_KEK", f"{new},{old}")
    code, out, _ = run(capsys, "funding", "rotate-kek", "--config", str(cfg))
    assert code == 0
    assert json.loads(out) == {
        "active_kek": "k2", "rewrapped": 1, "already_current": 0, "failed": 0
    }
    code, out, _ = run(capsys, "funding", "rotate-kek", "--config", str(cfg))
    assert json.loads(out)["already_current"] == 1

    source = asyncio.run(_source(db, account_id))
    assert source.kek_id == "k2"
    assert Vault(parse_keyring(new)).open(sealed_of(source), record=record_of(source)) == SECRET
    with pytest.raises(VaultError):
        Vault(parse_keyring(old)).open(sealed_of(source), record=record_of(source))
    wal = Path(db + "-wal")
    raw = Path(db).read_bytes() + (wal.read_bytes() if wal.exists() else b"")
    assert SECRET.encode() not in raw


def test_rotate_kek_without_a_kek_is_a_config_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WATTFARE_FUNDING_KEK", raising=False)
    cfg = tmp_path / "w.toml"
    cfg.write_text('[store]\npath = "w.db"\n')
    code, _, err = run(capsys, "funding", "rotate-kek", "--config", str(cfg))
    assert code == 2 and "holds no key-encryption key" in err
