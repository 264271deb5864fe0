"""How one request went and what it cost, as the relay hands it to settlement."""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import GatewayError


@dataclass(slots=True)
class Outcome:
    """Becomes the ledger row. ``cost_source`` says where ``cost_nano`` came from:
    ``upstream`` (the upstream's reported cost), ``tokens`` (tokens × price),
    ``estimate`` (the gateway's own upper bound: nothing better was had yet)."""

    model: str
    cost_nano: int = 0
    cost_source: str = "estimate"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # "ok", "cut_cap", "cut_revoked", "client_disconnected", "upstream_error",
    # "upstream_timeout", "failed"
    status: str = "ok"
    http_status: int = 200
    error_code: str | None = None
    generation_id: str | None = None
    # No usage was reported: the cost is the estimate, and the upstream's own record of
    # the generation (where it keeps one) is looked up after the request.
    estimate_only: bool = False
    # The stream reached the bound the gateway lowered to fit the cap.
    hit_lowered_bound: bool = False
    # A non-streamed answer, delivered once its charge is committed.
    body: bytes = b""
    # A non-streamed request the upstream answered with an error after it had started
    # (and may have billed): the client gets this error once the charge is settled.
    error: GatewayError | None = None

    def set_cost(
        self, *, cost: int, source: str, prompt_tokens: int, completion_tokens: int
    ) -> None:
        self.cost_nano = cost
        self.cost_source = source
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens
