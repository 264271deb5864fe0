"""The operator's commands: apps show/disable/enable/delete/origins, accounts, usage,
``--version`` and ``--config`` on either side of the command."""

from __future__ import annotations

import asyncio
import calendar
import csv
import io
import json
import sqlite3
from dataclasses import replace
from pathlib import Path

import pytest
from store.helpers import hold_request, settlement

from gateway.cli import main, usage
from gateway.store.sqlite import SQLiteStore

Run = tuple[int, str, str]


@pytest.fixture
def cfg(tmp_path: Path) -> str:
    file = tmp_path / "w.toml"
    file.write_text(f'[store]\npath = "{tmp_path / "w.db"}"\n')
    return str(file)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_version_and_config_on_either_side(
    cfg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.startswith("wattfare 0.1.")
    assert run(capsys, "--config", cfg, "apps", "create", "shop")[0] == 0
    assert run(capsys, "apps", "--config", cfg, "create", "bank")[0] == 0
    code, out, _ = run(capsys, "apps", "list", "--config", cfg)
    assert [a["name"] for a in json.loads(out)] == ["shop", "bank"]
    code, out, _ = run(capsys, "--config", cfg, "usage", "--format", "json")
    assert code == 0 and json.loads(out)["rows"] == []


def test_apps_show_disable_enable_and_origins(
    cfg: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "apps", "create", "shop", "--origin", "https://a.example", "--config", cfg)
    code, out, _ = run(capsys, "apps", "origins", "add", "shop", "https://B.example",
                       "http://localhost:3000", "--config", cfg)
    assert code == 0
    assert json.loads(out)["origins"] == [
        "https://a.example", "https://b.example", "http://localhost:3000"]
    code, out, _ = run(capsys, "apps", "origins", "remove", "shop", "https://a.example",
                       "--config", cfg)
    assert json.loads(out)["origins"] == ["https://b.example", "http://localhost:3000"]
    with pytest.raises(SystemExit):
        main(["apps", "origins", "add", "shop", "not-an-origin", "--config", cfg])
    capsys.readouterr()

    code, out, err = run(capsys, "apps", "disable", "shop", "--config", cfg)
    assert code == 0 and json.loads(out)["status"] == "disabled"
    assert "refused at once" in err
    code, out, _ = run(capsys, "apps", "show", "shop", "--config", cfg)
    shown = json.loads(out)
    assert shown["status"] == "disabled"
    assert shown["connections"] == {"connected": 0, "revoked": 0}
    assert shown["ledger_rows"] == 0 and shown["requests_in_flight"] == 0
    assert "secret_key" not in shown
    code, out, _ = run(capsys, "apps", "enable", shown["app_id"], "--config", cfg)
    assert json.loads(out)["status"] == "active"
    for action in ("show", "disable", "enable", "delete"):
        code, _, err = run(capsys, "apps", action, "nope", "--config", cfg)
        assert code == 1 and "no app with id or name 'nope'" in err


def test_apps_delete_erases_an_unused_app_and_retires_one_with_a_ledger(
    cfg: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "apps", "create", "empty", "--config", cfg)
    code, out, _ = run(capsys, "apps", "delete", "empty", "--config", cfg)
    assert code == 0 and json.loads(out)["deleted"] == "erased"
    code, out, _ = run(capsys, "apps", "create", "shop", "--config", cfg)
    app_id = json.loads(out)["app_id"]
    asyncio.run(_charges(tmp_path / "w.db", app_id, [5, 6]))

    code, _, err = run(capsys, "apps", "delete", "shop", "--config", cfg)
    assert code == 1
    assert "2 ledger row(s)" in err and "--force" in err
    code, out, _ = run(capsys, "apps", "delete", "shop", "--force", "--config", cfg)
    assert json.loads(out) == {
        "app_id": app_id, "name": "shop", "deleted": "retired", "connections_revoked": 2,
        "ledger_kept": True,
    }
    assert json.loads(run(capsys, "apps", "list", "--config", cfg)[1]) == []
    [listed] = json.loads(run(capsys, "apps", "list", "--all", "--config", cfg)[1])
    assert listed["status"] == "deleted"
    code, _, err = run(capsys, "apps", "enable", "shop", "--config", cfg)
    assert code == 1 and "deleted" in err
    # Its spend is still in the report, under its name.
    report = json.loads(run(capsys, "usage", "--by", "app", "--format", "json",
                            "--config", cfg)[1])
    assert [(r["app"], r["cost_nano"]) for r in report["rows"]] == [("shop", 11)]


async def _charges(
    db: Path, app_id: str, costs: list[int], *, period: str = "2026-11", model: str = "m"
) -> None:
    """Charge ``costs`` to users ``user-0``… of the app, in ``period`` (the store's clock)."""
    year, month = map(int, period.split("-"))
    moment = calendar.timegm((year, month, 15, 12, 0, 0))
    store = SQLiteStore(str(db), clock=lambda: moment)
    await store.open()
    try:
        for i, cost in enumerate(costs):
            hold = await store.reserve(replace(
                hold_request(f"{app_id}", f"user-{i}", want=100, cap=10**9), model=model
            ))
            await store.settle(replace(settlement(hold.id, cost), model=model,
                                       prompt_tokens=3, completion_tokens=5))
    finally:
        await store.close()


async def _account_with_connection(db: Path, app_id: str) -> None:
    store = SQLiteStore(str(db))
    await store.open()
    try:
        account = await store.create_account(email="ada@example.com", password_hash="h",
                                             budget_nano=25 * 10**9)
        await store.create_consent(b"k" * 32, app_id=app_id, user_id="ada", cap_nano=10**9,
                                   origin="https://a.example", expires_at=2**40)
        await store.finish_consent(b"k" * 32, approve=True, account_id=account.id,
                                   cap_nano=10**9, now=1)
        await store.create_web_session(b"s" * 32, account_id=account.id, expires_at=2**40)
    finally:
        await store.close()


def test_accounts_list_show_disable_enable(
    cfg: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "apps", "create", "shop", "--live", "--origin",
                       "https://a.example", "--config", cfg)
    asyncio.run(_account_with_connection(tmp_path / "w.db", json.loads(out)["app_id"]))
    [listed] = json.loads(run(capsys, "accounts", "list", "--config", cfg)[1])
    assert (listed["email"], listed["status"], listed["monthly_budget_usd"],
            listed["connections"]) == ("ada@example.com", "active", 25.0, 1)
    code, out, _ = run(capsys, "accounts", "show", "Ada@Example.com", "--config", cfg)
    shown = json.loads(out)
    assert shown["this_month"]["remaining_usd"] == 25.0
    assert [(c["app_name"], c["status"], c["cap_usd"]) for c in shown["connections"]] == [
        ("shop", "connected", 1.0)]
    code, out, _ = run(capsys, "accounts", "disable", "ada@example.com", "--config", cfg)
    disabled = json.loads(out)
    assert (disabled["status"], disabled["connections_revoked"]) == ("disabled", 1)
    with sqlite3.connect(tmp_path / "w.db") as db:
        assert db.execute("SELECT COUNT(*) FROM web_sessions").fetchone()[0] == 0
    shown = json.loads(run(capsys, "accounts", "show", "ada@example.com", "--config", cfg)[1])
    assert [c["status"] for c in shown["connections"]] == ["revoked"]
    code, out, _ = run(capsys, "users", "enable", "ada@example.com", "--config", cfg)
    assert json.loads(out)["status"] == "active"
    code, _, err = run(capsys, "accounts", "disable", "nobody@example.com", "--config", cfg)
    assert code == 1 and "no account" in err


@pytest.fixture
def ledger(cfg: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    """Two apps, three users, two models, two months; costs with every digit in use."""
    ids = [json.loads(run(capsys, "apps", "create", n, "--config", cfg)[1])["app_id"]
           for n in ("shop", "bank")]
    db = tmp_path / "w.db"
    asyncio.run(_charges(db, ids[0], [123_456_789, 1, 999_999_999], period="2026-10"))
    asyncio.run(_charges(db, ids[0], [7, 31_415_926], period="2026-11", model="b"))
    asyncio.run(_charges(db, ids[1], [900_000_001, 0], period="2026-11"))
    return db


def _ledger_total(db: Path, where: str = "1 = 1") -> tuple[int, int, int]:
    with sqlite3.connect(db) as conn:
        row: tuple[int, int, int] = conn.execute(
            f"SELECT COUNT(*), SUM(prompt_tokens), SUM(cost_nano) FROM ledger WHERE {where}"  # noqa: S608
        ).fetchone()
        return row


def test_usage_as_json_csv_and_table_adds_up_to_the_ledger(
    cfg: str, ledger: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    requests, prompt, cost = _ledger_total(ledger)
    doc = json.loads(run(capsys, "usage", "--format", "json", "--config", cfg)[1])
    totals = doc["totals"]
    assert (totals["requests"], totals["prompt_tokens"], totals["cost_nano"]) == (
        requests, prompt, cost)
    assert sum(r["cost_nano"] for r in doc["rows"]) == cost
    assert round(totals["cost_usd"] * 10**9) == cost
    assert {tuple(r) for r in (
        (x["month"], x["app"], x["user"], x["model"]) for x in doc["rows"])} >= {
        ("2026-11", "bank", "user-0", "m"), ("2026-11", "shop", "user-1", "b")}

    rows = list(csv.DictReader(io.StringIO(run(capsys, "usage", "--format", "csv",
                                               "--config", cfg)[1])))
    *body, total = rows
    assert total["month"] == "total"
    assert sum(int(r["cost_nano"]) for r in body) == int(total["cost_nano"]) == cost
    assert total["cost_usd"] == f"{cost // 10**9}.{cost % 10**9:09d}"  # exact, all digits

    by_app = json.loads(run(capsys, "usage", "--by", "app", "--month", "2026-11",
                            "--format", "json", "--config", cfg)[1])
    assert [(r["app"], r["requests"], r["cost_nano"]) for r in by_app["rows"]] == [
        ("bank", 2, 900_000_001), ("shop", 2, 31_415_933)]
    assert by_app["totals"]["cost_nano"] == _ledger_total(ledger, "period = '2026-11'")[2]

    code, out, _ = run(capsys, "usage", "--by", "month,app", "--app", "shop", "--config", cfg)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["month", "app", "requests"]
    assert lines[2].split()[:3] == ["2026-10", "shop", "3"]
    assert lines[-1].split()[0] == "total"
    shop_cost = 123_456_789 + 1 + 999_999_999 + 7 + 31_415_926
    assert f"{shop_cost // 10**9}.{shop_cost % 10**9:09d}" in lines[-1]

    assert run(capsys, "usage", "--app", "nope", "--config", cfg)[0] == 1
    with pytest.raises(SystemExit):
        main(["usage", "--by", "colour", "--config", cfg])
    with pytest.raises(SystemExit):
        main(["usage", "--month", "2026-13", "--config", cfg])


def test_a_long_usage_report_shows_progress(
    cfg: str, ledger: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(usage, "BATCH_ROWS", 2)
    monkeypatch.setattr(usage, "PROGRESS_EVERY_S", 0.0)
    code, out, err = run(capsys, "usage", "--format", "json", "--config", cfg)
    assert code == 0
    assert json.loads(out)["totals"]["cost_nano"] == _ledger_total(ledger)[2]
    progress = err.splitlines()
    assert progress[0] == "wattfare: usage: 2 of 7 ledger rows read (28%)"
    assert progress[-1] == "wattfare: usage: 7 of 7 ledger rows read (100%)"
