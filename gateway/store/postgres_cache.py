"""What a PostgreSQL node last saw of each connection's money rows, so that a money step
can usually skip reading them first.

A step's plpgsql function checks the values it is handed against the locked rows anyway,
and returns the real ones when they differ (another node, or another request, changed
them): a stale entry costs one round trip more, never money. After each step the entry
is brought up to date with what the step wrote. Only a step's *admission* may not rest on
an entry: a refusal is always decided again on values read afresh.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

# Connections remembered per node, and open holds of its own requests.
MAX_CONNECTIONS = 20_000
MAX_HOLDS = 100_000

# A connection's snapshot, as wattfare_reserve() compares it:
# (key_version, app_status, cap, status, account_id, settled, held, budget, a_settled, a_held)
Snapshot = tuple[Any, ...]
Key = tuple[str, str, str]  # (app_id, user_id, period)


class Snapshots:
    def __init__(self) -> None:
        self._rows: OrderedDict[Key, Snapshot] = OrderedDict()
        # hold id -> (its connection's key, its amount), for this node's own holds
        self._holds: dict[str, tuple[Key, int]] = {}
        self.period: str | None = None  # the database's month, as last seen

    def get(self, key: Key) -> Snapshot | None:
        row = self._rows.get(key)
        if row is not None:
            self._rows.move_to_end(key)
        return row

    def put(self, key: Key, row: Snapshot) -> None:
        self._rows[key] = row
        self._rows.move_to_end(key)
        while len(self._rows) > MAX_CONNECTIONS:
            self._rows.popitem(last=False)

    def forget(self, key: Key) -> None:
        self._rows.pop(key, None)

    def held(self, key: Key, delta: int, *, settled: int = 0) -> None:
        """This node changed the connection's (and its account's) totals."""
        row = self._rows.get(key)
        if row is None:
            return
        out = list(row)
        out[5] += settled
        out[6] = max(0, out[6] + delta)
        if out[4] is not None and out[8] is not None and out[9] is not None:
            out[8] += settled
            out[9] = max(0, out[9] + delta)
        self._rows[key] = tuple(out)

    def hold(self, hold_id: str) -> tuple[Key, int] | None:
        return self._holds.get(hold_id)

    def keep_hold(self, hold_id: str, key: Key, amount: int) -> None:
        if len(self._holds) >= MAX_HOLDS:
            self._holds.clear()  # only a shortcut: the steps read what they miss
        self._holds[hold_id] = (key, amount)

    def drop_hold(self, hold_id: str) -> None:
        self._holds.pop(hold_id, None)

    # The other steps compare parts of the snapshot.

    @staticmethod
    def for_extend(row: Snapshot) -> tuple[Any, ...]:
        """(cap, status, settled, held, budget, a_settled, a_held)"""
        return (row[2], row[3], row[5], row[6], row[7], row[8], row[9])

    @staticmethod
    def for_settle(row: Snapshot, amount: int) -> tuple[Any, ...]:
        """(amount, cap, settled, held, budget, a_settled, a_held)"""
        return (amount, row[2] or 0, row[5], row[6], row[7], row[8], row[9])

    def merge(self, key: Key, found: tuple[Any, ...], *, status: Any = ...) -> None:
        """Take what a step's function found, (cap, settled, held, budget, a_settled,
        a_held) with the status when it says one, into the snapshot."""
        row = self._rows.get(key)
        if row is None:
            return
        cap, settled, held, budget, a_settled, a_held = found
        out = list(row)
        out[2], out[5], out[6], out[7], out[8], out[9] = (cap, settled, held, budget,
                                                           a_settled, a_held)
        if status is not ...:
            out[3] = status
        self._rows[key] = tuple(out)
