"""The static files: the browser SDK (``/sdk/wattfare.js``) and the pages' stylesheet,
and the SDK's origin check (``/sdk/origin``).

Both files are read once when the app starts. ``static/wattfare.js`` is the build of the
npm package's ``wattfare/client`` (``js/src/client/index.ts``; ``npm run sdk`` in ``js/``
writes it, and the JS tests fail when the copy differs from a fresh build), committed so
that the Python package needs no Node.js. The SDK is public code meant to be imported by
any page as an ES module, and module scripts are fetched with CORS, so it is served with
``Access-Control-Allow-Origin: *`` (it carries no credentials and reads none).
"""

from __future__ import annotations

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.consent.web import consent_of, gateway_of
from gateway.errors import InvalidApiKey, InvalidRequest
from gateway.keys import PUBLISHABLE_KEY_RE

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


PUBLIC_JSON = {
    "Access-Control-Allow-Origin": "*",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}


async def origin_check(request: Request) -> Response:
    """``GET /sdk/origin?key=pk_…``: is the calling page's origin registered for that app?

    A browser hides why a request from an origin that no app registered fails: the CORS
    preflight is refused, and the page sees only a network error. The SDK asks here (a
    simple CORS request, readable by any page) to tell "origin not registered" from
    "gateway unreachable". It answers only for the ``Origin`` the browser sent, and an
    app's registered origins are no secret: every API answer to one names it.
    """
    key = request.query_params.get("key", "")
    if PUBLISHABLE_KEY_RE.match(key) is None:
        raise InvalidApiKey("'key' must be a publishable key.", headers=dict(PUBLIC_JSON))
    origin = (request.headers.get("origin") or "").lower()
    if not origin:
        raise InvalidRequest(
            "This check needs the browser's Origin header.", param="Origin",
            headers=dict(PUBLIC_JSON),
        )
    app = await gateway_of(request).store.app_by_publishable_key(key)
    if app is None or app.status != "active":
        raise InvalidApiKey("No active app has this publishable key.", headers=dict(PUBLIC_JSON))
    body = orjson.dumps({"origin": origin, "registered": origin in app.origins})
    return Response(body, media_type="application/json", headers=PUBLIC_JSON)


async def stylesheet(request: Request) -> Response:
    """``GET /static/wattfare.css``."""
    return Response(
        consent_of(request).assets["wattfare.css"],
        media_type="text/css; charset=utf-8",
        headers={"X-Content-Type-Options": "nosniff", "Cache-Control": CACHE},
    )
