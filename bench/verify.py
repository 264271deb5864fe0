"""Did a proxied path relay the upstream's bytes unchanged?

The same request goes to the direct path and to the proxied one, one after the other. The
upstream gives every response its own ``id`` and ``created``, so those two fields are
masked before the bodies are compared byte for byte; nothing else is normalised. The
upstream's ``GET /_last_request`` also shows whether the per-request ``fake`` knobs
reached it through the proxy (a proxy that dropped them would be measured on other work).
"""

from __future__ import annotations

import json
import re
import urllib.request
from typing import Any

from bench.paths import Endpoint
from bench.procs import LineChannel

_ID = re.compile(r'"id":\s*"[^"]*"')
_CREATED = re.compile(r'"created":\s*\d+')


def mask(text: str) -> str:
    return _CREATED.sub('"created":0', _ID.sub('"id":"<id>"', text))


def first_difference(a: str, b: str, *, context: int = 80) -> str:
    """Where two texts part, with a little context from each; empty when equal."""
    if a == b:
        return ""
    i = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
    lo = max(0, i - context // 2)
    return (f"at byte {i} (lengths {len(a)} vs {len(b)}): "
            f"direct {a[lo:i + context]!r} / path {b[lo:i + context]!r}")


def _last_upstream_body(upstream_base: str) -> Any:
    with urllib.request.urlopen(f"{upstream_base}/_last_request", timeout=10) as resp:
        return json.loads(resp.read()).get("body")


def verify_path(
    channel: LineChannel,
    *,
    direct: Endpoint,
    path: Endpoint,
    bodies: dict[str, dict[str, Any]],
    upstream_base: str,
) -> dict[str, Any]:
    """Compare ``path`` with ``direct`` for each named request body."""
    out: dict[str, Any] = {}
    for shape, body in bodies.items():
        answers = []
        forwarded: Any = None
        for endpoint in (direct, path):
            answer = channel.call({
                "op": "fetch", "url": endpoint.url, "headers": endpoint.headers,
                "user_header": endpoint.user_header, "user_prefix": "verify-", "user_pool": 1,
                "body": body, "timeout_s": 30,
            }, timeout_s=40)
            answers.append(answer)
            if endpoint is path:
                forwarded = _last_upstream_body(upstream_base)
        (d, p) = answers
        diff = first_difference(mask(d["text"]), mask(p["text"]))
        knobs_ok = isinstance(forwarded, dict) and forwarded.get("fake") == body.get("fake")
        out[shape] = {
            "status": p["status"],
            "identical": d["status"] == p["status"] and not diff,
            "bytes_direct": len(d["text"]),
            "bytes_path": len(p["text"]),
            "difference": diff,
            "knobs_forwarded": knobs_ok,
        }
    return out
