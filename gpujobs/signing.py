"""Standard Webhooks signing for outbound webhook deliveries (the Standard Webhooks
specification, https://www.standardwebhooks.com).

Each endpoint has its own ``whsec_<base64>`` secret. A delivery is signed over the exact bytes sent,
as ``HMAC-SHA256(key, "{msg_id}.{timestamp}.{body}")``, and carried in ``webhook-signature`` as
``v1,<base64>``. During a secret rotation the old and the new secret both sign, space-separated, so a
receiver that knows either one accepts the delivery (the spec's rotation scheme).

Verification is the receiver's job; the tests check our output with the public ``standardwebhooks``
library so that we never drift from what receivers actually run.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets as _secrets

SECRET_PREFIX = "whsec_"
# 32 bytes = 256 bits: above the spec's 24-byte minimum and under its 64-byte maximum.
SECRET_KEY_BYTES = 32
SIGNATURE_VERSION = "v1"


def generate_secret() -> str:
    """Return a fresh per-endpoint secret in the ``whsec_<base64>`` form receivers' libraries accept."""
    key = _secrets.token_bytes(SECRET_KEY_BYTES)
    return SECRET_PREFIX + base64.b64encode(key).decode("ascii")


def _secret_key(secret: str) -> bytes:
    """Decode a ``whsec_`` secret to its HMAC key, refusing malformed or empty ones loudly."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("webhook secret must start with 'whsec_'")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except binascii.Error as exc:
        raise ValueError("webhook secret is not valid base64 after 'whsec_'") from exc
    if not key:
        raise ValueError("webhook secret is empty")
    return key


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return ``v1,<base64 HMAC-SHA256>`` over ``id.timestamp.body``, the Standard Webhooks signature."""
    if not isinstance(body, bytes):
        # Signing a str would invite an encoding mismatch with the bytes actually sent.
        raise TypeError("body must be the exact bytes sent")
    signed_content = f"{msg_id}.{int(timestamp)}.".encode() + body
    digest = hmac.new(_secret_key(secret), signed_content, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode('ascii')}"


def signature_header(secrets: list[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """Return one signature per secret, space-separated, so old and new secrets verify during rotation."""
    if not secrets:
        raise ValueError("at least one webhook secret is required")
    return " ".join(sign(secret, msg_id, timestamp, body) for secret in secrets)


def webhook_headers(secrets: list[str], msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """Return the complete set of Standard Webhooks headers for one delivery attempt."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(timestamp)),
        "webhook-signature": signature_header(secrets, msg_id, timestamp, body),
        "content-type": "application/json",
    }
