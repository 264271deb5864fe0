"""The static files: the browser SDK (``/sdk/wattfare.js``) and the pages' stylesheet.

Both are read once when the app starts. The SDK is public code meant to be imported by
any page as an ES module, and module scripts are fetched with CORS, so it is served with
``Access-Control-Allow-Origin: *`` (it carries no credentials and reads none).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.consent.web import consent_of

CACHE = "public, max-age=300"


async def sdk(request: Request) -> Response:
    """``GET /sdk/wattfare.js``."""
    return Response(
        consent_of(request).assets["wattfare.js"],
        media_type="text/javascript; charset=utf-8",
        headers={
            "Access-Control-Allow-Origin": "*",
            "Cross-Origin-Resource-Policy": "cross-origin",
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": CACHE,
        },
    )


async def stylesheet(request: Request) -> Response:
    """``GET /static/wattfare.css``."""
    return Response(
        consent_of(request).assets["wattfare.css"],
        media_type="text/css; charset=utf-8",
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": CACHE},
    )
