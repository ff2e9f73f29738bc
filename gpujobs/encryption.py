"""Secrets at rest: the values the service must read back (webhook signing secrets) are stored encrypted.

Fernet (AES-128-CBC with an HMAC-SHA256 tag, from the ``cryptography`` package) is authenticated: a row
altered or copied from another deployment fails to decrypt instead of yielding a wrong secret. The key
comes from ``GPUJOBS_ENCRYPTION_KEY``, never from the database, so a dump, a backup or a replica reader
sees only ciphertext. ``GPUJOBS_ENCRYPTION_OLD_KEYS`` lists retired keys that may still decrypt: rotate
by making the new key current and the old one "old", run ``python -m gpujobs secrets rotate-key``, then
drop the old key. API keys are not here: they are never read back, so they stay SHA-256 digests.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from flask import current_app
from sqlalchemy import Text
from sqlalchemy.types import TypeDecorator

from gpujobs.exceptions import GpuJobsError


class EncryptionError(GpuJobsError):
    """No key is configured, or a stored value does not decrypt under any configured key."""


def new_key() -> str:
    """A fresh random key in the form ``GPUJOBS_ENCRYPTION_KEY`` expects (32 bytes, URL-safe base64)."""
    return Fernet.generate_key().decode()


def parse_key(raw: str) -> str:
    """Check that ``raw`` is a Fernet key (config parser); the message never echoes the value."""
    try:
        Fernet(raw.strip())
    except ValueError:
        raise ValueError("expected a key from `python -m gpujobs secrets new-key`") from None
    return raw.strip()


def parse_keys(raw: str) -> list[str]:
    """A comma-separated list of keys (config parser for the retired keys)."""
    return [parse_key(part) for part in raw.split(",") if part.strip()]


def cipher(key: str | None, old_keys: Sequence[str] = ()) -> MultiFernet:
    """Encrypts under ``key``; decrypts under it or any of ``old_keys``."""
    if not key:
        raise EncryptionError(
            "GPUJOBS_ENCRYPTION_KEY is not set: create one with `python -m gpujobs secrets new-key`"
        )
    return MultiFernet([Fernet(k) for k in (key, *old_keys)])


def app_cipher() -> MultiFernet:
    """The running app's cipher, from its configuration."""
    config = current_app.config
    return cipher(config.get("GPUJOBS_ENCRYPTION_KEY"), config.get("GPUJOBS_ENCRYPTION_OLD_KEYS") or ())


def encrypt(plain: str, box: MultiFernet) -> str:
    """The stored form of ``plain``."""
    return box.encrypt(plain.encode()).decode()


def decrypt(token: str, box: MultiFernet) -> str:
    """The plain value of a stored token; EncryptionError if no configured key opens it."""
    try:
        return box.decrypt(token.encode()).decode()
    except InvalidToken:
        raise EncryptionError(
            "a stored secret does not decrypt under GPUJOBS_ENCRYPTION_KEY or GPUJOBS_ENCRYPTION_OLD_KEYS"
        ) from None


class EncryptedText(TypeDecorator[str]):
    """A text column holding ciphertext: Python code reads and writes the plain value."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str | None:
        """Encrypt on the way in, always under the current key."""
        return None if value is None else encrypt(value, app_cipher())

    def process_result_value(self, value: Any, dialect: Any) -> str | None:
        """Decrypt on the way out, under the current key or a retired one."""
        return None if value is None else decrypt(value, app_cipher())
