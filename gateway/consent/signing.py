"""Signed values for cookies and CSRF tokens: HMAC-SHA256 with the gateway's secret.

The browser session cookie is ``<session id>.<signature>``: the signature lets a forged
cookie be refused without a store lookup, and the store holds only a hash of the id, so
signing out ends the session for good. A CSRF token is an HMAC of what the browser is
bound to (its session id, or before sign-in a random ``pre`` cookie), with a purpose tag
so a token of one kind never passes as another.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class Signer:
    """HMAC helpers bound to one secret."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 32:
            raise ValueError("the signing secret must be at least 32 bytes")
        self._secret = secret

    def mac(self, purpose: str, value: str) -> str:
        data = purpose.encode() + b"\x00" + value.encode()
        return _b64(hmac.new(self._secret, data, hashlib.sha256).digest())

    def sign(self, purpose: str, value: str) -> str:
        """``value.signature``; ``value`` must not contain a dot."""
        return f"{value}.{self.mac(purpose, value)}"

    def unsign(self, purpose: str, signed: str | None) -> str | None:
        """The value if the signature is good, else None."""
        if not signed or signed.count(".") != 1:
            return None
        value, signature = signed.split(".")
        if not value or not hmac.compare_digest(signature, self.mac(purpose, value)):
            return None
        return value

    def csrf_token(self, binding: str) -> str:
        return self.mac("csrf", binding)

    def csrf_ok(self, binding: str | None, token: str | None) -> bool:
        if not binding or not token:
            return False
        return hmac.compare_digest(token, self.csrf_token(binding))


def new_token() -> str:
    """A fresh random id (256 bits, URL-safe, no dots)."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    """What the store keeps of a session or consent id."""
    return hashlib.sha256(token.encode()).digest()
