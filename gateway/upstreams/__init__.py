"""Every configured upstream, over one shared transport, and the routing of a model to
the upstream that serves it.

``[upstream]`` is the default: it serves every model no other upstream claims. Each
``[upstreams.NAME]`` lists the model ids (or ``fnmatch`` patterns such as ``"local/*"``)
routed to it; the first that matches wins, in the order of the file. ``GET /v1/models``
lists the models of all of them that the gateway can price.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Any

import httpx
import orjson

from gateway.config import UpstreamSettings
from gateway.errors import ModelNotFound
from gateway.upstreams.base import Generation, Model, Upstream, Usage
from gateway.upstreams.openai import OpenAICompatible
from gateway.upstreams.openrouter import OpenRouter

__all__ = ["Generation", "Model", "Upstream", "Upstreams", "Usage", "make_transport"]

KINDS: dict[str, type[Upstream]] = {"openrouter": OpenRouter, "openai": OpenAICompatible}


def make_transport(settings: UpstreamSettings) -> httpx.AsyncBaseTransport:
    """The one transport every upstream request goes over.

    By default aiohttp's (through ``httpx-aiohttp``, with the shorter per-request path of
    :mod:`gateway.transport`): httpx's own connection pool scans every pooled connection
    per request, so its throughput falls as concurrency rises (bench/ measures both).
    Chat completions go straight to this transport with a request built by the upstream:
    the client's own pipeline (cookie jar, auth flow, redirects, event hooks) is what a
    proxy must not have, and skipping it saves CPU per request.
    """
    limits = httpx.Limits(
        max_connections=settings.max_connections,
        max_keepalive_connections=settings.max_connections,
        keepalive_expiry=30.0,
    )
    if settings.transport == "aiohttp":
        from gateway.transport import FastAiohttpTransport

        return FastAiohttpTransport(limits=limits)
    return httpx.AsyncHTTPTransport(limits=limits)


@dataclass(frozen=True, slots=True)
class Route:
    """Where a chat request goes, and what its model costs there."""

    upstream: Upstream
    model: Model


class Upstreams:
    """The upstreams of one gateway (the default first) and the one shared client."""

    def __init__(
        self, settings: tuple[UpstreamSettings, ...], *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.transport = transport or make_transport(settings[0])
        self.client = httpx.AsyncClient(transport=self.transport, follow_redirects=False)
        self.all = [KINDS[s.kind](s, transport=self.transport, client=self.client)
                    for s in settings]
        self.default = self.all[0]

    def upstream_for(self, model_id: str) -> Upstream:
        for upstream in self.all[1:]:
            if any(fnmatch.fnmatchcase(model_id, p) for p in upstream.settings.models):
                return upstream
        return self.default

    def by_name(self, name: str) -> Upstream | None:
        return next((u for u in self.all if u.name == name), None)

    async def route(self, model_id: str, *, param: str = "model") -> Route:
        """The upstream and priced model for ``model_id``; ``model_not_found`` when no
        upstream offers it or the gateway cannot price it (never served free by
        accident)."""
        upstream = self.upstream_for(model_id)
        models = await upstream.models()
        model = models.get(model_id)
        if model is None and ":" in model_id:  # ``model:variant`` is priced as ``model``
            base = models.get(model_id.rsplit(":", 1)[0])
            if base is not None:
                model = Model(model_id, base.price, base.max_completion_tokens, base.entry)
        if model is None:
            raise ModelNotFound(f"The model '{model_id}' is not offered.", param=param)
        if model.price is None:
            raise ModelNotFound(
                f"The model '{model_id}' has no price: the gateway serves no model it cannot "
                f"meter (set one in [{_section(upstream)}.prices]).",
                param=param,
            )
        return Route(upstream, model)

    async def listing(self) -> list[dict[str, Any]]:
        """The models the gateway can serve, each the upstream's own entry (with a
        ``pricing`` object, as OpenRouter's list has, where the upstream gave none)."""
        entries: list[dict[str, Any]] = []
        seen: set[str] = set()
        for upstream in self.all:
            for model in (await upstream.models()).values():
                if model.price is None or model.id in seen or self.upstream_for(
                    model.id
                ) is not upstream:
                    continue
                seen.add(model.id)
                entry = model.entry
                if "pricing" not in entry:
                    entry = {**entry, "pricing": model.price.as_pricing()}
                entries.append(entry)
        return entries

    async def listing_body(self) -> bytes:
        return orjson.dumps({"data": await self.listing()})

    async def aclose(self) -> None:
        for upstream in self.all:
            await upstream.aclose()
        await self.client.aclose()


def _section(upstream: Upstream) -> str:
    return "upstream" if upstream.name == "default" else f"upstreams.{upstream.name}"
