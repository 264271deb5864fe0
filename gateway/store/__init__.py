"""Storage backends behind one protocol (:class:`gateway.store.base.Store`)."""

from __future__ import annotations

from gateway.config import StoreSettings
from gateway.store.base import (
    AccountStore,
    AppStore,
    ChatStore,
    MeteringStore,
    SecretStore,
    Store,
)
from gateway.store.sqlite import SQLiteStore


def make_store(settings: StoreSettings) -> Store:
    """The backend the settings name (not yet opened)."""
    if settings.backend == "sqlite":
        return SQLiteStore(settings.path, busy_timeout_ms=settings.busy_timeout_ms)
    if settings.backend == "postgres":
        from gateway.store.postgres import PostgresStore  # asyncpg only when it is used

        return PostgresStore(
            settings.url, min_size=settings.pool_min_size, max_size=settings.pool_max_size,
            lease_s=settings.lease_s,
        )
    raise ValueError(f"store.backend: unknown backend {settings.backend!r}")


__all__ = [
    "AccountStore",
    "AppStore",
    "ChatStore",
    "MeteringStore",
    "SQLiteStore",
    "SecretStore",
    "Store",
    "make_store",
]
