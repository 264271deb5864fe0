"""PKCE (RFC 7636) with S256, as OpenRouter's "Sign in with OpenRouter" takes it.

The verifier of an attempt is never stored: it is an HMAC, under the gateway's cookie
secret, of the attempt's random ``state`` and the browser session that started it. So a
fresh verifier comes with every attempt, a copy of the database holds none, and a
callback URL (``state`` and ``code``) replayed from another browser cannot be completed:
without that session the verifier cannot be derived, and without the verifier the code
is worthless at the token endpoint.
"""

from __future__ import annotations

import base64
import hashlib

from gateway.consent.signing import Signer


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def verifier_for(signer: Signer, *, state: str, session_id: str) -> str:
    """The attempt's code verifier: 43 characters of base64url (256 bits)."""
    return signer.mac("pkce-verifier", f"{state}\x00{session_id}")


def challenge_of(verifier: str) -> str:
    """``S256``: base64url(SHA-256(verifier)), unpadded."""
    return _b64(hashlib.sha256(verifier.encode("ascii")).digest())


def verifier_hash(verifier: str) -> bytes:
    """What an attempt keeps to check the re-derived verifier against."""
    return hashlib.sha256(b"pkce\x00" + verifier.encode("ascii")).digest()
