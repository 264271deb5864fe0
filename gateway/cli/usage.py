"""``wattfare usage``: who spent what, on which app, with which model, by month.

The report sums the ledger (one row per admitted request) in integer nano-USD, so its
totals are the ledger's to the nano-dollar: ``charged`` is what users' caps paid,
``upstream`` what the upstream reported, ``operator`` the part beyond the cap that the
operator bore. The ledger is read in slices of ``BATCH_ROWS`` rows; a report of more than
one slice shows its progress on stderr.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from gateway.cli.common import config_arg, fail, opened_store, print_json, usd_number, usd_text
from gateway.config import Settings
from gateway.store.base import UsageQuery, UsageSum

BATCH_ROWS = 50_000
PROGRESS_EVERY_S = 0.5
DIMENSIONS = ("month", "app", "user", "model")
SUMS = (
    "requests", "prompt_tokens", "completion_tokens", "cost_nano", "upstream_cost_nano",
    "operator_nano",
)


def _month(text: str) -> str:
    if re.fullmatch(r"\d{4}-(0[1-9]|1[0-2])", text) is None:
        raise argparse.ArgumentTypeError("a month is YYYY-MM (UTC)")
    return text


def _dimensions(text: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in DIMENSIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"group by one or more of {','.join(DIMENSIONS)} (comma-separated)"
        )
    return names


def add_parser(commands: Any) -> None:
    usage = commands.add_parser(
        "usage", help="spend and tokens from the ledger, by month, app, user and model"
    )
    usage.add_argument("--month", type=_month, help="only this UTC month (YYYY-MM)")
    usage.add_argument("--app", help="only this app (id or name)")
    usage.add_argument("--user", help="only this user id (the app's own)")
    usage.add_argument("--model", help="only this model")
    usage.add_argument(
        "--by", type=_dimensions, default=DIMENSIONS, metavar="DIMS",
        help="what to group by: month,app,user,model (default: all four)",
    )
    usage.add_argument(
        "--format", choices=("table", "csv", "json"), default="table",
        help="output format (default: table)",
    )
    config_arg(usage)


@dataclass(slots=True)
class _Sums:
    values: list[int] = field(default_factory=lambda: [0] * len(SUMS))

    def add(self, row: UsageSum) -> None:
        for i, name in enumerate(SUMS):
            self.values[i] += getattr(row, name)

    def as_dict(self) -> dict[str, int]:
        return dict(zip(SUMS, self.values, strict=True))


class _Progress:
    """``read N of M ledger rows`` on stderr, at most every ``PROGRESS_EVERY_S``."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.shown = total > BATCH_ROWS
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def update(self, read: int, *, final: bool = False) -> None:
        if not self.shown:
            return
        now = time.monotonic()
        if not final and now - self._last < PROGRESS_EVERY_S:
            return
        self._last = now
        total = max(self.total, read)
        line = f"wattfare: usage: {read:,} of {total:,} ledger rows read ({read * 100 // total}%)"
        end = "\n" if final or not self.tty else ""
        sys.stderr.write(("\r" if self.tty else "") + line + end)
        sys.stderr.flush()


async def run(settings: Settings, ns: argparse.Namespace) -> int:
    async with opened_store(settings) as store:
        app_id = None
        if ns.app is not None:
            app = await store.find_app(ns.app)
            if app is None:
                return fail(f"no app with id or name {ns.app!r}")
            app_id = app.id
        query = UsageQuery(period=ns.month, app_id=app_id, user_id=ns.user, model=ns.model)
        total = await store.usage_count(query)
        progress = _Progress(total)
        groups: dict[tuple[str, ...], _Sums] = {}
        read = after = 0
        # Bounded by the ledger's size; rows written meanwhile are read too.
        for _ in range(total // BATCH_ROWS + 1_000_000):
            page = await store.usage(query, after_id=after, limit=BATCH_ROWS)
            for row in page.rows:
                key = tuple(_key(row, name) for name in ns.by)
                groups.setdefault(key, _Sums()).add(row)
            read += page.scanned
            after = page.last_id
            if page.scanned < BATCH_ROWS:
                break
            progress.update(read)
        progress.update(read, final=True)
        names = {a.id: a.name for a in await store.list_apps()}
    _write(ns, groups, names)
    return 0


def _key(row: UsageSum, dimension: str) -> str:
    if dimension == "month":
        return row.period
    if dimension == "app":
        return row.app_id
    if dimension == "user":
        return row.user_id
    return row.model


def _write(
    ns: argparse.Namespace, groups: dict[tuple[str, ...], _Sums], names: dict[str, str]
) -> None:
    dims: tuple[str, ...] = ns.by

    def label(key: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(
            names.get(value, value) if dim == "app" else value
            for dim, value in zip(dims, key, strict=True)
        )

    ordered = sorted(groups.items(), key=lambda item: (label(item[0]), item[0]))
    totals = _Sums()
    for _, sums in ordered:
        for i, value in enumerate(sums.values):
            totals.values[i] += value
    if ns.format == "json":
        print_json({
            "filters": {
                "month": ns.month, "app": ns.app, "user": ns.user, "model": ns.model,
            },
            "group_by": list(dims),
            "rows": [_json_row(dims, key, names, sums) for key, sums in ordered],
            "totals": _money_fields(totals),
        })
    elif ns.format == "csv":
        _csv(dims, ordered, names, totals)
    else:
        _table(dims, [(label(key), sums) for key, sums in ordered], totals)


def _money_fields(sums: _Sums) -> dict[str, Any]:
    out: dict[str, Any] = sums.as_dict()
    for name in ("cost", "upstream_cost", "operator"):
        out[f"{name}_usd"] = usd_number(out[f"{name}_nano"])
    return out


def _json_row(
    dims: tuple[str, ...], key: tuple[str, ...], names: dict[str, str], sums: _Sums
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for dim, value in zip(dims, key, strict=True):
        if dim == "app":
            out["app_id"] = value
            out["app"] = names.get(value, value)
        else:
            out[dim] = value
    return {**out, **_money_fields(sums)}


def _csv(
    dims: tuple[str, ...],
    ordered: list[tuple[tuple[str, ...], _Sums]],
    names: dict[str, str],
    totals: _Sums,
) -> None:
    head = [c for d in dims for c in (("app_id", "app") if d == "app" else (d,))]
    money = ("cost", "upstream_cost", "operator")
    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow([*head, *SUMS[:3], *(f"{m}_{u}" for m in money for u in ("usd", "nano"))])

    def numbers(sums: _Sums) -> list[object]:
        d = sums.as_dict()
        return [
            d["requests"], d["prompt_tokens"], d["completion_tokens"],
            *(v for m in money for v in (usd_text(d[f"{m}_nano"]), d[f"{m}_nano"])),
        ]

    for key, sums in ordered:
        cells: list[object] = []
        for dim, value in zip(dims, key, strict=True):
            cells += [value, names.get(value, value)] if dim == "app" else [value]
        writer.writerow([*cells, *numbers(sums)])
    writer.writerow(["total", *([""] * (len(head) - 1)), *numbers(totals)])


def _table(
    dims: tuple[str, ...], rows: list[tuple[tuple[str, ...], _Sums]], totals: _Sums
) -> None:
    head = [*dims, "requests", "prompt tok", "completion tok", "charged USD", "operator USD"]

    def numbers(sums: _Sums) -> list[str]:
        d = sums.as_dict()
        return [
            f"{d['requests']:,}", f"{d['prompt_tokens']:,}", f"{d['completion_tokens']:,}",
            usd_text(d["cost_nano"]), usd_text(d["operator_nano"]),
        ]

    body = [[*key, *numbers(sums)] for key, sums in rows]
    total = ["total", *([""] * (len(dims) - 1)), *numbers(totals)]
    widths = [max(len(r[i]) for r in (head, *body, total)) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(w) if i < len(dims) else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [line(head), line(["-" * w for w in widths])]
    out += [line(r) for r in body]
    out += [line(["-" * w for w in widths]), line(total)]
    sys.stdout.write("\n".join(out) + "\n")
