"""Password hashing with Argon2id (argon2-cffi), and the choice of new passwords with
zxcvbn, both off the event loop.

Hashing costs tens of milliseconds and 64 MiB by design (the library's RFC 9106
"low memory" profile), so it runs in a worker thread. Signing in as an unknown email
still verifies against a fixed hash, so the response time does not tell which emails
have accounts.

A new password must score at least :data:`MIN_SCORE` with zxcvbn (Dropbox's estimator).
zxcvbn rather than a shipped list of common passwords: its own lists are the most
common passwords of the big breach corpora, and it also catches what a list cannot
(repeats like "aaaaaaaa", keyboard walks, dates, l33t spellings, the person's own
email), and says why in words a person can act on. Only the first
:data:`SCORED_LENGTH` characters are scored (zxcvbn's own bound on its running time).
"""

from __future__ import annotations

import asyncio
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

MIN_LENGTH = 8
MAX_LENGTH = 256
# zxcvbn's 3: "safely unguessable", about 10^8 guesses or more.
MIN_SCORE = 3
SCORED_LENGTH = 72


class Passwords:
    """Hash and verify passwords; one per process."""

    def __init__(self, hasher: PasswordHasher | None = None) -> None:
        self._hasher = hasher or PasswordHasher()
        self._dummy = self._hasher.hash("not a password of anyone")

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        """True if ``password`` matches ``stored``; ``None`` (no such account) costs
        the same time and is False."""
        return await asyncio.to_thread(self._verify, stored, password)

    def _verify(self, stored: str | None, password: str) -> bool:
        try:
            self._hasher.verify(stored or self._dummy, password)
        except (VerificationError, InvalidHashError):
            return False
        return stored is not None


async def password_problem(password: str, *, email: str | None = None) -> str | None:
    """Why a new password is refused, or None."""
    if len(password) < MIN_LENGTH:
        return f"Use at least {MIN_LENGTH} characters."
    if len(password) > MAX_LENGTH:
        return f"Use at most {MAX_LENGTH} characters."
    return await asyncio.to_thread(_guessable, password, email)


def _guessable(password: str, email: str | None) -> str | None:
    # Imported on first use: its word lists cost start-up time and memory that a process
    # serving only the API never needs.
    from zxcvbn import zxcvbn

    inputs = [email, email.partition("@")[0]] if email else []
    verdict: dict[str, Any] = zxcvbn(password[:SCORED_LENGTH], user_inputs=inputs)
    if verdict["score"] >= MIN_SCORE:
        return None
    feedback = verdict.get("feedback") or {}
    why = str(feedback.get("warning") or "This password is easy to guess.").rstrip(".")
    hints = " ".join(str(h) for h in feedback.get("suggestions") or [])
    return f"Choose a harder password: {why}. {hints}".strip()
