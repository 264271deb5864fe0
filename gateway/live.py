"""The streams open in this process, by connection, so a revocation can cut them.

A revocation made in this process flags its streams at once; one made in another
process (another worker, the dashboard) arrives through the store's event table, which
the app's lifespan polls. The relay reads its flag once per event: an attribute load.
"""

from __future__ import annotations

ConnectionKey = tuple[str, str]


class StreamFlag:
    """Per-stream flag, set when its connection is revoked."""

    __slots__ = ("revoked",)

    def __init__(self) -> None:
        self.revoked = False


class LiveStreams:
    def __init__(self) -> None:
        # A list per connection, not a set: a connection rarely has more than a few
        # streams open, and a one-item list is a quarter of a one-item set's size.
        self._by_connection: dict[ConnectionKey, list[StreamFlag]] = {}
        self.count = 0

    def open(self, key: ConnectionKey) -> StreamFlag:
        flag = StreamFlag()
        flags = self._by_connection.get(key)
        if flags is None:
            self._by_connection[key] = [flag]
        else:
            flags.append(flag)
        self.count += 1
        return flag

    def close(self, key: ConnectionKey, flag: StreamFlag) -> None:
        flags = self._by_connection.get(key)
        if flags is None:
            return
        for i, open_flag in enumerate(flags):
            if open_flag is flag:
                del flags[i]
                self.count -= 1
                if not flags:
                    del self._by_connection[key]
                return

    def revoke(self, key: ConnectionKey) -> int:
        """Flag every open stream of ``key``; returns how many."""
        flags = self._by_connection.get(key, ())
        for flag in flags:
            flag.revoked = True
        return len(flags)
