"""Tenants' credentials inside the JSON the service stores, sealed at rest.

A job's params and webhook headers may carry a tenant's tokens: its receiver's ``Authorization``
header, an ``HF_TOKEN`` in an instance's environment, ``call.api``'s and ``webhook.send``'s headers.
Every value the masking rules hide on the way out (``gpujobs.masking.replace_secrets``; ``SealedJSON``),
and every value of a header object (``SealedHeaders``), is stored as ``"gpujobs-sealed:1:" + <Fernet
token>`` under ``GPUJOBS_ENCRYPTION_KEY`` instead, so a dump, a backup or a replica reader sees the names
and never the values. The columns seal on the way in and open on the way out, so the code that uses a
value (a handler given its params, the webhook sender given its headers) reads it as it was sent, and
every other reader masks it anyway. Only those positions are opened, and what arrives there is always
sealed anew: ciphertext a tenant copied from a dump and sent back stays the text it sent.
Rows written before sealing hold plain values, read as they are; ``reseal`` rewrites every sealed
value under the current key (``python -m gpujobs secrets rotate-key``).
"""

from __future__ import annotations

import json
from typing import Any

from cryptography.fernet import MultiFernet
from sqlalchemy import MetaData, Text, cast, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

from gpujobs.encryption import app_cipher, decrypt, encrypt
from gpujobs.masking import MASK, replace_headers, replace_secrets

PREFIX = "gpujobs-sealed:1:"
# Rows rewritten per statement by ``reseal``.
RESEAL_BATCH = 500


def seal(value: Any, box: MultiFernet | None = None) -> Any:
    """``value`` (JSON-like) with each secret in it sealed. A secret that arrives looking sealed is a
    client's string like any other and is sealed again: only what the service sealed is ever opened."""
    return replace_secrets(value, lambda secret: _seal_one(secret, box))


def unseal(value: Any, box: MultiFernet | None = None) -> Any:
    """``value`` with the secrets ``seal`` sealed opened (EncryptionError if no configured key opens
    one). Only secret positions are opened: a sealed-looking string anywhere else is a client's own
    text, kept as it is, so no tenant can have another's stolen ciphertext opened for it."""
    return replace_secrets(value, lambda stored: _open_one(stored, box))


def seal_headers(value: Any, box: MultiFernet | None = None) -> Any:
    """A header object with every value sealed, as the masks hide every value of one."""
    return replace_headers(value, lambda header: _seal_one(header, box))


def unseal_headers(value: Any, box: MultiFernet | None = None) -> Any:
    return replace_headers(value, lambda stored: _open_one(stored, box))


def _seal_one(secret: Any, box: MultiFernet | None) -> Any:
    # Nothing to hide in nothing, or in what a mask already hid (an event's body is built masked); the
    # cipher is made only for a value that holds a secret (most hold none).
    if secret is None or secret == MASK:
        return secret
    return PREFIX + encrypt(json.dumps(secret, separators=(",", ":")), box or app_cipher())


def _open_one(stored: Any, box: MultiFernet | None) -> Any:
    if isinstance(stored, str) and stored.startswith(PREFIX):
        return json.loads(decrypt(stored[len(PREFIX) :], box or app_cipher()))
    return stored  # written before sealing, or hidden by a mask already


class SealedJSON(TypeDecorator[Any]):
    """A JSONB column whose secrets are sealed at rest; Python code reads and writes them plain."""

    impl = JSONB
    cache_ok = True
    _seal = staticmethod(seal)
    _open = staticmethod(unseal)

    def process_bind_param(self, value: Any, dialect: Any) -> Any:
        return None if value is None else self._seal(value)

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return None if value is None else self._open(value)


class SealedHeaders(SealedJSON):
    """A JSONB column holding one header object, every value sealed at rest."""

    cache_ok = True  # SQLAlchemy reads it from each class's own namespace
    _seal = staticmethod(seal_headers)
    _open = staticmethod(unseal_headers)


def reseal(session: Any, metadata: MetaData) -> int:
    """Rewrite, under the current key, every row that holds a sealed value in a sealed column of
    ``metadata``'s tables; returns the rows rewritten. Reading opens under the current or a retired key."""
    rewritten = 0
    for table in metadata.sorted_tables:
        key = table.primary_key.columns.values()[0]
        for column in (c for c in table.columns if isinstance(c.type, SealedJSON)):
            after = None
            while True:
                query = select(key, column).where(cast(column, Text).contains(PREFIX)).order_by(key)
                rows = session.execute(
                    (query if after is None else query.where(key > after)).limit(RESEAL_BATCH)
                ).all()
                if not rows:
                    break
                for row_key, value in rows:
                    session.execute(update(table).where(key == row_key).values({column.name: value}))
                session.commit()
                rewritten += len(rows)
                after = rows[-1][0]
    return rewritten
