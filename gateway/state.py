"""Everything a request handler needs, owned by the app's lifespan and handed over
explicitly (no module-level state)."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.auth import Authenticator
from gateway.config import Settings
from gateway.funding.funder import Funder
from gateway.live import LiveStreams
from gateway.observability import Metrics
from gateway.store.base import Store
from gateway.upstreams import Upstreams


@dataclass(slots=True)
class GatewayState:
    settings: Settings
    store: Store
    auth: Authenticator
    upstreams: Upstreams
    metrics: Metrics
    live: LiveStreams
    funder: Funder

    async def revoke(self, app_id: str, user_id: str) -> bool:
        """Revoke a connection and cut its open streams in this process at once (other
        processes learn of it from the store); False if there is no such connection."""
        if not await self.store.revoke(app_id, user_id):
            return False
        self.live.revoke((app_id, user_id))
        return True

    async def delete_account(self, account_id: str) -> int:
        """Delete an end user's account (see ``Store.delete_account``) and cut the open
        streams of its connections in this process at once; how many it revoked."""
        revoked = await self.store.delete_account(account_id)
        for key in revoked:
            self.live.revoke(key)
        return len(revoked)
