"""A simulated upstream, for tests, benchmarks and the demo (these machines are offline).

Run it with `wattfare fake-upstream` or `python -m gateway.fake_upstream --port N`. One
server speaks two dialects, chosen by the base URL a client is given:
- OpenRouter: `http://HOST:PORT/api/v1`, like `https://openrouter.ai/api/v1`;
- OpenAI-compatible (OpenAI, vLLM, Ollama): `http://HOST:PORT/v1` (`openai_wire.py`).

Paths:
- `POST /api/v1/chat/completions`, `POST /v1/chat/completions`: streamed (SSE) or not. On
  `/api/v1` any bearer key unless the server requires one (`--require-key`); on `/v1` no
  key is needed unless the server requires one. A body may carry `"fake": {...}` knobs
  (`knobs.py`): timing, faults, the JSON encoding (`encoding.py`), reasoning tokens, the
  abort behaviour, the `/generation` delay. Server-wide defaults are the flags
  (`--help`); `--model-encoding MODEL=ENCODING` gives one model its own JSON encoding.
- `GET /api/v1/models` (prices, no key needed, as at OpenRouter); `GET /v1/models`
  (OpenAI's `{"object": "list", "data": [{"id", "object", "created", "owned_by"}]}`).
- `GET /api/v1/generation?id=gen-…`: `{"data": {...}}` of the last 10,000 generations,
  404 until `generation_delay_ms` after each ends (`generations.py`), and 404 to a key of
  another account than the one billed (a person's issued keys are that person's account;
  any other key is an account of its own).
- `GET /api/v1/key`: the calling key's limit and usage (`accounts.py`).
- `GET /auth?callback_url=…&code_challenge=…&code_challenge_method=S256`, its form's
  `POST /auth/decision`, and `POST /api/v1/auth/keys`: the OAuth PKCE flow that issues a
  key billed to a person's own credits (`oauth.py`).
- Test-only, not OpenRouter's: `GET /_fake/ledger[?key=K]` (what each key and person was
  billed, nano-USD, and how many generation look-ups each key made),
  `GET /_fake/ledger?id=ID` (one generation's bill, on either dialect, readable at once:
  `{"id", "key", "billed_nano_usd"}`), `POST /_fake/person` and
  `POST /_fake/key` (credits, limits, revoked keys; `admin.py`);
  `GET /api/v1/_last_request` and `GET /v1/_last_request` (the lowercase headers and JSON
  body of the most recent chat request, to check what a proxy forwarded); `GET /healthz`
  (`{"status": "ok", "in_flight": <open chat requests>}`).
- Anything else: 404 `{"error": {"message": "Not Found", "code": 404}}`.

Billing follows OpenRouter's documentation: a stream aborted on a provider that supports
cancellation is billed for what was generated; on one that does not (the catalog's Google,
Mistral and Groq models, or the `cancellable: false` knob), and for any non-streamed
request, the generation runs to its end and is billed in full. An aborted stream gets no
usage chunk. Hidden reasoning tokens are billed as completion tokens and count within
`max_tokens`; no generation passes `max_tokens` (or, on `/v1`, `max_completion_tokens`,
which supersedes it) or the model's largest completion, except by the `extra_reasoning`
fault. `/v1` requests are billed at the catalog's prices too (the ledger's figure for an
upstream whose usage has tokens only).

The wire format, as OpenRouter documents it (openrouter.ai/docs: streaming, errors,
usage accounting, models) and as recorded real responses show it:
- Streams are `text/event-stream` with LF-only framing, `data: <json>\\n\\n` per event, and
  the `X-Generation-Id: gen-<unix>-<20 chars>` response header (also on JSON responses).
  OpenRouter sends SSE comments `: OPENROUTER PROCESSING` to keep slow starts alive; the
  fake sends one at once and then every `comment_interval_ms` while it waits for the
  first token. The stream ends with `data: [DONE]`.
- Chunks: `{"id", "object": "chat.completion.chunk", "created", "model", "provider",
  "system_fingerprint", "choices": [{"index": 0, "delta": {"role": "assistant",
  "content": …}, "finish_reason": null, "native_finish_reason": null, "logprobs": null}]}`.
  Recorded OpenRouter streams repeat `role: "assistant"` in every delta, so the fake does.
  The last content-free chunk carries `finish_reason` `"stop"` or `"length"` and the same
  `native_finish_reason`.
- Usage is always included now: the docs call `usage: {include: true}` and
  `stream_options.include_usage` deprecated no-ops. The trailing chunk has `usage` =
  `{prompt_tokens, completion_tokens, total_tokens, cost (USD, a JSON number), is_byok,
  prompt_tokens_details {cached_tokens, cache_write_tokens, audio_tokens, video_tokens},
  cost_details {upstream_inference_cost, upstream_inference_prompt_cost,
  upstream_inference_completions_cost}, completion_tokens_details {reasoning_tokens,
  image_tokens, audio_tokens}}` and, by default, `choices: []` (OpenAI's form). Recent
  recorded OpenRouter streams instead repeat the finish choice in that chunk; the knob
  `usage_with_choice` produces that form.
- Errors before a response starts: HTTP status = `error.code`, body
  `{"error": {"message", "code": <int>, "metadata"?: {...}}}`; 429 carries `Retry-After`.
  Wording from recorded responses: no key → 401 "No cookie auth credentials found" (older
  responses said "No auth credentials found"); wrong key → 401 "User not found."; unknown
  model → 400 "<model> is not a valid model ID"; no messages → 400 `Input required:
  specify "prompt" or "messages"`; a body that is not JSON → 400 "Input must have at
  least 1 token."; unknown generation → 404 "Generation <id> not found".
- Errors after a stream started stay HTTP 200 and arrive as one chunk with a top-level
  `error: {"code", "message"}` and `choices: [{"index": 0, "delta": {"content": ""},
  "finish_reason": "error"}]`; the docs show `code` both as an int (502) and as a string
  ("server_error"). The fake then sends `[DONE]` and no usage.
- Non-streamed: `{"id", "object": "chat.completion", "created", "model", "provider",
  "system_fingerprint", "choices": [{"logprobs", "finish_reason", "native_finish_reason",
  "index", "message": {"role", "content", "refusal", "reasoning"}}], "usage": {...}}`.
- Models: `{"data": [{"id", "canonical_slug", "hugging_face_id", "name", "created",
  "description", "context_length", "architecture", "pricing", "top_provider",
  "per_request_limits", "supported_parameters", "default_parameters"}]}` with prices in
  USD per token as strings; `openrouter/auto` is listed at "-1" and bills the model it
  routes to (the fake routes it to `openai/gpt-4o-mini` and reports that model).

The fake tokenizer and cost rule are documented in `wire.py`.
"""

from __future__ import annotations

from gateway.fake_upstream.app import create_app
from gateway.fake_upstream.catalog import MODELS, Model, Pricing, price_of
from gateway.fake_upstream.knobs import FAULTS
from gateway.fake_upstream.settings import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    FakeUpstreamSettings,
    add_arguments,
    serve,
    settings_from_args,
)

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "FAULTS",
    "MODELS",
    "FakeUpstreamSettings",
    "Model",
    "Pricing",
    "add_arguments",
    "create_app",
    "price_of",
    "serve",
    "settings_from_args",
]
