"""Envelope encryption of the keys people connect, at rest.

Each stored key gets its own random 256-bit *data key*; the key is sealed with it
(AES-256-GCM), and the data key is *wrapped* (AES-256-GCM again) with a key-encryption
key (KEK) that never enters the database or the config file: it comes from the
environment variable named by ``funding.kek_env``, as ``id:base64url-key`` entries, the
active one first. A record remembers its KEK's id, so the KEK can be rotated: put the new
key first, keep the old one after it, run ``wattfare funding rotate-kek`` (which re-wraps
every data key under the new KEK), then drop the old one.

Both layers are bound, as associated data, to the record they belong to (its id and its
account), so a sealed key copied into another row, or another account, does not open.
A copy of the database alone yields nothing: without the KEK the data keys are noise.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

NONCE_BYTES = 12


class VaultError(Exception):
    """A sealed record that cannot be opened: unknown KEK id, or tampered with."""


@dataclass(frozen=True, slots=True)
class Sealed:
    """What the store keeps of one secret: no part of it is usable without the KEK."""

    kek_id: str
    wrapped_key: bytes  # nonce + AES-GCM(KEK, data key)
    ciphertext: bytes  # nonce + AES-GCM(data key, secret)


def new_kek(kek_id: str) -> str:
    """A fresh KEK entry for the environment variable: ``id:base64url``."""
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", kek_id):
        raise ValueError("a key id is 1-32 characters of A-Z, a-z, 0-9, _ and -")
    return f"{kek_id}:{base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip('=')}"


def _seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def _open(key: bytes, sealed: bytes, aad: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], aad)
    except (InvalidTag, ValueError):
        raise VaultError("a sealed record does not open (tampered with, or another KEK)") from None


class Vault:
    """Seals and opens secrets with the configured KEKs (``(id, key)``, active first)."""

    def __init__(self, keyring: tuple[tuple[str, bytes], ...]) -> None:
        if not keyring:
            raise ValueError("the vault needs at least one key-encryption key")
        self._keks = dict(keyring)
        self.active_id = keyring[0][0]

    @staticmethod
    def _aad(layer: bytes, record: str) -> bytes:
        return b"wattfare-funding\x00" + layer + b"\x00" + record.encode()

    def seal(self, secret: str, *, record: str) -> Sealed:
        data_key = AESGCM.generate_key(bit_length=256)
        ciphertext = _seal(data_key, secret.encode(), self._aad(b"secret", record))
        return Sealed(
            kek_id=self.active_id,
            wrapped_key=_seal(self._keks[self.active_id], data_key, self._aad(b"key", record)),
            ciphertext=ciphertext,
        )

    def _data_key(self, sealed: Sealed, record: str) -> bytes:
        kek = self._keks.get(sealed.kek_id)
        if kek is None:
            raise VaultError(f"no key-encryption key with id {sealed.kek_id!r} is configured")
        return _open(kek, sealed.wrapped_key, self._aad(b"key", record))

    def open(self, sealed: Sealed, *, record: str) -> str:
        data_key = self._data_key(sealed, record)
        return _open(data_key, sealed.ciphertext, self._aad(b"secret", record)).decode()

    def rewrap(self, sealed: Sealed, *, record: str) -> Sealed:
        """The same secret, its data key wrapped with the active KEK (the ciphertext is
        unchanged: only the small wrapped key is rewritten)."""
        data_key = self._data_key(sealed, record)
        return Sealed(
            kek_id=self.active_id,
            wrapped_key=_seal(self._keks[self.active_id], data_key, self._aad(b"key", record)),
            ciphertext=sealed.ciphertext,
        )
