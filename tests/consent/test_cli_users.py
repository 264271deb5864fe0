"""``wattfare users budget EMAIL --monthly-usd N``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from gateway.cli import main
from gateway.store.sqlite import SQLiteStore


async def _account(db: str) -> None:
    store = SQLiteStore(db)
    await store.open()
    try:
        await store.create_account(email="ada@example.com", password_hash="h", budget_nano=1)
    finally:
        await store.close()


def test_sets_an_accounts_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "wattfare.toml"
    config.write_text('[store]\npath = "w.db"\n')
    asyncio.run(_account(str(tmp_path / "w.db")))
    assert main(["users", "budget", "Ada@Example.com", "--monthly-usd", "12.5",
                 "--config", str(config)]) == 0
    out = orjson.loads(capsys.readouterr().out)
    assert out == {"email": "ada@example.com", "monthly_budget_usd": 12.5}
    assert main(["users", "budget", "nobody@example.com", "--monthly-usd", "1",
                 "--config", str(config)]) == 1
    assert "no account" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["users", "budget", "ada@example.com", "--monthly-usd", "-3",
              "--config", str(config)])
