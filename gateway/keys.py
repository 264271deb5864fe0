"""API keys: their format, generation and parsing.

A secret key is an Ed25519 private key: ``sk_test_`` or ``sk_live_`` followed by the
32-byte seed in unpadded base64url. The publishable key is the public half of that key
pair, ``pk_test_``/``pk_live_`` followed by the 32-byte public key in unpadded base64url.
Deriving one from the other lets the server SDK mint session tokens from the secret key
alone, with no network call; it also means that rolling the secret key issues a new
publishable key.

The gateway stores the public key (inside the publishable key) and a SHA-256 hash of the
secret key, never the secret key itself.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

Mode = Literal["test", "live"]

# 32 bytes in unpadded base64url is exactly 43 characters.
PUBLISHABLE_KEY_RE = re.compile(r"^pk_(test|live)_[A-Za-z0-9_-]{43}$")
SECRET_KEY_RE = re.compile(r"^sk_(test|live)_[A-Za-z0-9_-]{43}$")


class KeyFormatError(ValueError):
    """A string that is not a well-formed key of the expected kind."""


@dataclass(frozen=True, slots=True)
class KeyPair:
    mode: Mode
    publishable_key: str
    secret_key: str


def b64url_encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise KeyFormatError("not base64url") from exc


def _public_raw(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def generate_key_pair(mode: Mode) -> KeyPair:
    """A fresh key pair for an app in ``mode``."""
    seed = secrets.token_bytes(32)
    private = Ed25519PrivateKey.from_private_bytes(seed)
    return KeyPair(
        mode=mode,
        publishable_key=f"pk_{mode}_{b64url_encode(_public_raw(private))}",
        secret_key=f"sk_{mode}_{b64url_encode(seed)}",
    )


def _key_parts(
    key: str, pattern: re.Pattern[str], kind: str, prefix: str, holds: str
) -> tuple[Mode, bytes]:
    """The mode and the 32 raw bytes of a ``<prefix>_<mode>_<base64url>`` key."""
    match = pattern.match(key)
    if match is None:
        raise KeyFormatError(f"not a {kind} ({prefix}_test_… or {prefix}_live_…)")
    raw = b64url_decode(key[8:])
    if len(raw) != 32:
        raise KeyFormatError(f"a {kind} holds a 32-byte {holds}")
    mode: Mode = "test" if match.group(1) == "test" else "live"
    return mode, raw


def parse_secret_key(secret_key: str) -> tuple[Mode, Ed25519PrivateKey]:
    """The mode and private key inside a secret key; raises KeyFormatError."""
    mode, seed = _key_parts(secret_key, SECRET_KEY_RE, "secret key", "sk", "seed")
    return mode, Ed25519PrivateKey.from_private_bytes(seed)


def publishable_key_for(secret_key: str) -> str:
    """The publishable key that belongs to ``secret_key``."""
    mode, private = parse_secret_key(secret_key)
    return f"pk_{mode}_{b64url_encode(_public_raw(private))}"


def parse_publishable_key(publishable_key: str) -> tuple[Mode, Ed25519PublicKey]:
    """The mode and public key inside a publishable key; raises KeyFormatError."""
    mode, raw = _key_parts(publishable_key, PUBLISHABLE_KEY_RE, "publishable key", "pk",
                           "public key")
    return mode, Ed25519PublicKey.from_public_bytes(raw)


def secret_key_hash(secret_key: str) -> bytes:
    """What the store keeps of a secret key: its SHA-256 digest."""
    return hashlib.sha256(secret_key.encode("utf-8")).digest()
