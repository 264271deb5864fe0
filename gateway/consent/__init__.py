"""The consent layer: end-user accounts, the hosted consent popup, the dashboard, the
browser SDK, and the browser-facing security around them.

``app.py`` mounts :func:`consent_routes`, wraps the whole app in :class:`BrowserGuard`
(CORS for the API), and makes the per-process :class:`ConsentState` in its lifespan with
:func:`open_consent`.
"""

from __future__ import annotations

from starlette.routing import Route

from gateway.consent import (
    accounts,
    assets,
    connect,
    dashboard,
    export,
    funding,
    profile,
)
from gateway.consent.cors import BrowserGuard
from gateway.consent.web import ConsentState, open_consent


def consent_routes() -> list[Route]:
    """The routes of the consent layer."""
    return [
        Route("/v1/connect", connect.start, methods=["POST"]),
        Route("/connect/{cid}", connect.page, methods=["GET", "POST"]),
        Route("/signin", accounts.signin, methods=["GET", "POST"]),
        Route("/signup", accounts.signup, methods=["GET", "POST"]),
        Route("/signout", accounts.signout, methods=["POST"]),
        Route("/dashboard", dashboard.dashboard, methods=["GET"]),
        Route("/dashboard/cap", dashboard.set_cap, methods=["POST"]),
        Route("/dashboard/budget", dashboard.set_budget, methods=["POST"]),
        Route("/dashboard/revoke", dashboard.confirm_revoke, methods=["GET"]),
        Route("/dashboard/revoke", dashboard.revoke, methods=["POST"]),
        Route("/dashboard/usage.csv", export.usage_csv, methods=["GET"]),
        Route("/account", profile.page, methods=["GET"]),
        Route("/account/password", profile.change_password, methods=["POST"]),
        Route("/account/signout-everywhere", profile.signout_everywhere, methods=["POST"]),
        Route("/account/delete", profile.delete_account, methods=["POST"]),
        Route("/funding/openrouter", funding.connect, methods=["POST"]),
        Route(
            "/funding/openrouter/callback/{state}", funding.callback, methods=["GET"]
        ),
        Route("/funding/disconnect", funding.disconnect, methods=["POST"]),
        Route("/sdk/wattfare.js", assets.sdk, methods=["GET"]),
        Route("/sdk/origin", assets.origin_check, methods=["GET"]),
        Route("/static/wattfare.css", assets.stylesheet, methods=["GET"]),
    ]


__all__ = ["BrowserGuard", "ConsentState", "consent_routes", "open_consent"]
