"""A sample app on its own origin, for ``wattfare demo`` and the browser tests.

It is what an integrating app looks like: a page that imports the browser SDK from the
gateway and a backend endpoint (``/session``) that mints session tokens with the app's
secret key, which never leaves this process. Run it with::

    WATTFARE_SAMPLE_SECRET_KEY=sk_live_… python -m gateway.consent.sample_app \\
        --port 5173 --gateway http://127.0.0.1:8787

The page runs under a strict Content-Security-Policy of its own: its script is a static
file (``static/sample_app.js``) that reads its settings from the page and imports the SDK
from the gateway's origin, the only other origin the page may load from or connect to.

``/forge`` serves a page that posts a forged consent answer to whatever frames it: the
browser tests load it from a third origin to show the SDK ignores it.
"""

from __future__ import annotations

import argparse
import html
import os
import sys
from collections.abc import Sequence

import jinja2
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from gateway.consent.web import STATIC, TEMPLATES, origin_of
from gateway.keys import publishable_key_for
from gateway.tokens import mint_session_token, valid_user_id

SECRET_ENV = "WATTFARE_SAMPLE_SECRET_KEY"  # noqa: S105 (a variable name)
FORGE_PAGE = """<!doctype html><meta charset="utf-8"><title>Not the gateway</title>
<p>This page is on another origin and pretends to be the gateway.</p>
<script>
const consent = new URLSearchParams(location.search).get("consent");
const forged = {wattfare: "connect", consent, status: "connected",
  connection: {object: "connection", status: "connected", monthly_cap_usd: 1000000}};
(window.opener || window.parent).postMessage(forged, "*");
document.body.dataset.sent = "yes";
</script>"""


def sample_app(
    *, gateway_url: str, secret_key: str, name: str = "Acme Writer", monthly_usd: float = 5.0
) -> Starlette:
    """The sample app as an ASGI application."""
    publishable_key = publishable_key_for(secret_key)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=jinja2.select_autoescape(["html"])
    )
    page_html = env.get_template("sample_app.html").render(
        gateway=gateway_url.rstrip("/"), publishable_key=publishable_key, name=name,
        monthly_usd=monthly_usd,
    )

    gateway_origin = origin_of(gateway_url)
    page_headers = {
        "Cache-Control": "no-store",
        "Content-Security-Policy": (
            f"default-src 'none'; script-src 'self' {gateway_origin}; style-src 'self'; "
            f"connect-src 'self' {gateway_origin}; img-src 'self' data:; "
            "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
    }
    script = (STATIC / "sample_app.js").read_bytes()
    stylesheet = (STATIC / "sample_app.css").read_bytes()

    async def page(request: Request) -> Response:
        return HTMLResponse(page_html, headers=page_headers)

    async def app_js(request: Request) -> Response:
        return Response(script, media_type="text/javascript; charset=utf-8",
                        headers={"Cache-Control": "no-store"})

    async def app_css(request: Request) -> Response:
        return Response(stylesheet, media_type="text/css; charset=utf-8",
                        headers={"Cache-Control": "no-store"})

    async def session(request: Request) -> Response:
        # A real app would take the user id from its own login; the sample trusts the
        # query so a tester can be anyone.
        user = request.query_params.get("user", "demo-user")
        if not valid_user_id(user):
            return Response(b'{"error": "bad user"}', status_code=400)
        minted = mint_session_token(secret_key, user, monthly_usd=monthly_usd)
        body = {"token": minted.token, "expires_at": minted.expires_at}
        return Response(orjson.dumps(body), media_type="application/json",
                        headers={"Cache-Control": "no-store"})

    async def forge(request: Request) -> Response:
        return HTMLResponse(FORGE_PAGE)

    return Starlette(routes=[
        Route("/", page), Route("/app.js", app_js), Route("/app.css", app_css),
        Route("/session", session), Route("/forge", forge),
    ])


def main(argv: Sequence[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description="Wattfare's sample app page")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5173)
    parser.add_argument("--gateway", required=True, help="the gateway's public URL")
    parser.add_argument("--name", default="Acme Writer")
    parser.add_argument("--monthly-usd", type=float, default=5.0)
    ns = parser.parse_args(argv)
    secret_key = os.environ.get(SECRET_ENV, "")
    if not secret_key:
        sys.stderr.write(f"sample app: set {SECRET_ENV} to the app's secret key\n")
        return 2
    app = sample_app(gateway_url=ns.gateway, secret_key=secret_key, name=ns.name,
                     monthly_usd=ns.monthly_usd)
    print(f"Sample app: http://{ns.host}:{ns.port}/  ({html.escape(ns.name)})", flush=True)
    uvicorn.run(app, host=ns.host, port=ns.port, log_level="warning")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
