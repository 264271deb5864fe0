"""What every hosted page shares: the consent state, rendering with security headers,
the signed-in account, forms and their CSRF check.

Every page is server-rendered and sent with a nonce-based Content-Security-Policy (no
inline script runs without the page's nonce), ``frame-ancestors 'none'`` and
``X-Frame-Options: DENY`` (no page can be framed, so none can be clickjacked),
``Referrer-Policy: no-referrer`` (consent ids never leak in a Referer) and
``Cache-Control: no-store``. Pages a person reaches inside the consent popup (sign-in,
sign-up, the consent page) send no Cross-Origin-Opener-Policy: ``same-origin`` would
sever the popup from the app that opened it, and the result could not be posted back.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from gateway.config import Settings
from gateway.consent.limits import AttemptLimiter, Backoff
from gateway.consent.passwords import Passwords
from gateway.consent.signing import Signer, new_token, token_hash
from gateway.money import nano_to_usd
from gateway.state import GatewayState
from gateway.store.base import Account, Store

FORM_LIMIT = 16 * 1024
TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


@dataclass(slots=True)
class ConsentState:
    """The hosted pages' own state, made by the app's lifespan (:func:`open_consent`)."""

    settings: Settings
    signer: Signer
    passwords: Passwords
    limiter: AttemptLimiter
    backoff: Backoff
    templates: jinja2.Environment
    secure: bool
    public_origin: str
    assets: dict[str, bytes]
    # Beyond 'self', where a form's redirect may lead (the funding provider's sign-in).
    form_targets: str = ""

    @property
    def session_cookie(self) -> str:
        # __Host- cookies must be Secure, host-only and for path /: a sibling subdomain
        # cannot plant one.
        return "__Host-wattfare_session" if self.secure else "wattfare_session"

    @property
    def pre_cookie(self) -> str:
        return "__Host-wattfare_pre" if self.secure else "wattfare_pre"


def usd(nano: int | None) -> str:
    """Money for people: cents when it is at least a cent, more digits below that."""
    if nano is None:
        return "-"
    value = nano_to_usd(nano)
    if value == 0 or abs(value) >= 0.01:
        return f"${value:,.2f}"
    return f"${value:.9f}".rstrip("0")  # nano-USD: nine places show any amount


def when(epoch_s: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(epoch_s))


def month(period: str) -> str:
    """``2026-11`` as ``November 2026``."""
    year, _, number = period.partition("-")
    return f"{time.strftime('%B', time.strptime(number, '%m'))} {year}"


def make_templates() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
    )
    env.filters["usd"] = usd
    env.filters["when"] = when
    env.filters["month"] = month
    env.filters["dollars"] = lambda nano: f"{nano_to_usd(nano):.2f}"
    return env


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.lower()}"


async def open_consent(settings: Settings, store: Store) -> ConsentState:
    """The consent state for one process; the cookie secret comes from the configured
    environment variable, else from the store (generated once, shared by workers)."""
    configured = settings.consent.cookie_secret
    secret = configured.encode() if configured else await store.secret("cookie_signing")
    public_url = settings.server.public_url
    return ConsentState(
        settings=settings,
        signer=Signer(secret),
        passwords=Passwords(),
        limiter=AttemptLimiter(window_s=settings.consent.attempt_window_s),
        backoff=Backoff(
            free=settings.consent.signin_attempts_per_email,
            max_wait_s=settings.consent.attempt_window_s,
        ),
        templates=make_templates(),
        secure=public_url.startswith("https://"),
        public_origin=origin_of(public_url),
        assets={p.name: p.read_bytes() for p in STATIC.iterdir() if p.is_file()},
        form_targets=(
            " " + origin_of(settings.funding.openrouter_auth_url) if settings.funding.user else ""
        ),
    )


def consent_of(request: Request) -> ConsentState:
    state = request.app.state.consent
    assert isinstance(state, ConsentState)
    return state


def gateway_of(request: Request) -> GatewayState:
    state = request.app.state.gateway
    assert isinstance(state, GatewayState)
    return state


async def session_of(request: Request) -> tuple[Account | None, str | None]:
    """The signed-in account and its session id, from the signed cookie."""
    if "wattfare.account" in request.scope:
        cached: tuple[Account | None, str | None] = request.scope["wattfare.account"]
        return cached
    consent = consent_of(request)
    sid = consent.signer.unsign("session", request.cookies.get(consent.session_cookie))
    account = None
    if sid is not None:
        account = await gateway_of(request).store.account_by_web_session(
            token_hash(sid), now=int(time.time())
        )
    found = (account, sid if account is not None else None)
    request.scope["wattfare.account"] = found
    return found


def security_headers(
    nonce: str, *, keep_opener: bool, form_targets: str = ""
) -> dict[str, str]:
    # form-action also governs where a form's redirect may go: "Connect OpenRouter"
    # posts to the gateway, which redirects to the provider (``form_targets``).
    headers = {
        "Content-Security-Policy": (
            f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'self'; "
            f"img-src 'self' data:; connect-src 'self'; form-action 'self'{form_targets}; "
            "base-uri 'none'; frame-ancestors 'none'"
        ),
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Cross-Origin-Resource-Policy": "same-origin",
        "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=()",
    }
    if not keep_opener:
        headers["Cross-Origin-Opener-Policy"] = "same-origin"
    return headers


async def render(
    request: Request,
    template: str,
    *,
    status: int = 200,
    keep_opener: bool = False,
    **context: Any,
) -> Response:
    """A page with its security headers, its nonce and a CSRF token for its forms."""
    consent = consent_of(request)
    account, sid = await session_of(request)
    new_pre: str | None = None
    if sid is not None:
        binding = "s:" + sid
    else:
        pre = consent.signer.unsign("pre", request.cookies.get(consent.pre_cookie))
        if pre is None:
            pre = new_pre = new_token()
        binding = "p:" + pre
    nonce = secrets.token_urlsafe(18)
    html = consent.templates.get_template(template).render(
        nonce=nonce,
        csrf=consent.signer.csrf_token(binding),
        account=account,
        signup_open=consent.settings.consent.signup_open,
        funding=consent.settings.funding,
        **context,
    )
    response = HTMLResponse(
        html, status_code=status,
        headers=security_headers(
            nonce, keep_opener=keep_opener, form_targets=consent.form_targets
        ),
    )
    if new_pre is not None:
        response.set_cookie(
            consent.pre_cookie, consent.signer.sign("pre", new_pre), httponly=True,
            samesite="lax", secure=consent.secure, path="/",
        )
    return response


def redirect(url: str) -> Response:
    nonce = secrets.token_urlsafe(18)
    return RedirectResponse(
        url, status_code=303, headers=security_headers(nonce, keep_opener=True)
    )


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (bounded); first value per name."""
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > FORM_LIMIT:
            return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return {}
    return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}


async def form_ok(request: Request, form: dict[str, str]) -> bool:
    """A form post that came from one of the gateway's own pages: the Origin and
    Sec-Fetch-Site headers (when the browser sends them) say so, and the CSRF token
    matches the browser."""
    consent = consent_of(request)
    # Pages send Referrer-Policy: no-referrer, under which browsers send "Origin: null"
    # even for the pages' own forms; Sec-Fetch-Site still tells where a post came from.
    origin = request.headers.get("origin")
    if origin not in (None, "null") and origin.lower() != consent.public_origin:
        return False
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        return False
    _, sid = await session_of(request)
    if sid is not None:
        binding: str | None = "s:" + sid
    else:
        pre = consent.signer.unsign("pre", request.cookies.get(consent.pre_cookie))
        binding = None if pre is None else "p:" + pre
    return consent.signer.csrf_ok(binding, form.get("csrf"))


def safe_next(value: str | None, default: str = "/dashboard") -> str:
    """A same-site path to return to: never another host (no open redirect)."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    if any(ch in value for ch in "\r\n\t") or urlsplit(value).netloc:
        return default
    return value


def client_ip(request: Request) -> str:
    """The client's address: the socket's peer, or what a proxy named in ``[server]
    forwarded_allow_ips`` said (uvicorn rewrites the scope for those alone)."""
    return request.client.host if request.client is not None else "unknown"
