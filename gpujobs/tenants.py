"""Tenants, API keys and webhook secrets.

API keys are random 256-bit tokens shown once and stored as SHA-256 digests: with that much entropy a
plain digest cannot be brute-forced, and the lookup stays a single indexed query. Every lookup checks
``revoked_at``; the API keeps a valid key's tenant in Redis by digest for ``KEY_CACHE_SECONDS``
(``gpujobs.api.ratelimit``: read in the rate limit's round trip), and ``revoke_key`` deletes that entry,
so a revoked key is refused on its next request. Webhook secrets must be read back to sign, so they are
encrypted instead (``gpujobs.encryption``, applied by the column type).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import uuid
from datetime import timedelta

import redis
from sqlalchemy import select, update
from sqlalchemy.orm.attributes import flag_modified

from gpujobs.broker import redis_client
from gpujobs.extensions import db
from gpujobs.jobs import utcnow
from gpujobs.models import ApiKey, Tenant
from gpujobs.signing import generate_secret

API_KEY_PREFIX = "gj_"
SECRET_ROTATION_OVERLAP_HOURS = 24
# ``last_used_at`` is rewritten at most this often per key: one small write a minute, not one a request.
LAST_USED_RESOLUTION_SECONDS = 60
# How long the API trusts a key's cached tenant before it asks PostgreSQL again: also the longest a
# revoked key can still be accepted if Redis could not be reached when it was revoked.
KEY_CACHE_SECONDS = 30

log = logging.getLogger(__name__)


def key_digest(api_key: str) -> str:
    """The stored form of an API key."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def key_cache_name(digest: str) -> str:
    """The Redis key of a key digest's cached tenant (``{digest}``: the rate-limit counter's hash tag)."""
    return f"gpujobs:apikey:{{{digest}}}"


def ensure_tenant(name: str) -> Tenant:
    """The tenant called ``name``, created (with a webhook secret) on first use."""
    tenant = db.session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name, webhook_secret=generate_secret())
        db.session.add(tenant)
        db.session.flush()
    return tenant


class UnknownTenant(LookupError):
    """An operator command named a tenant that does not exist (a typo must not create one)."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"no tenant {name!r}: a tenant comes into being with its first API key "
            f"(gpujobs keys create --tenant {name})"
        )


def tenant_named(name: str) -> Tenant:
    """The existing tenant called ``name``; UnknownTenant when there is none."""
    tenant = db.session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        raise UnknownTenant(name)
    return tenant


def create_api_key(tenant_name: str) -> str:
    """Issue a new API key for the tenant (created if new); the plain key is returned only here."""
    tenant = ensure_tenant(tenant_name)
    api_key = API_KEY_PREFIX + secrets.token_urlsafe(32)
    db.session.add(ApiKey(tenant_id=tenant.id, key_digest=key_digest(api_key), prefix=api_key[:10]))
    db.session.commit()
    return api_key


def authenticate(api_key: str) -> Tenant | None:
    """The tenant owning a valid, unrevoked key, or None."""
    digest = key_digest(api_key)
    row = db.session.execute(
        select(ApiKey.id, ApiKey.key_digest, ApiKey.last_used_at, Tenant)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.key_digest == digest, ApiKey.revoked_at.is_(None))
    ).one_or_none()
    if row is None or not hmac.compare_digest(row.key_digest, digest):
        return None
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > timedelta(seconds=LAST_USED_RESOLUTION_SECONDS):
        db.session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used_at=now))
        db.session.commit()
    return row.Tenant


def list_keys(tenant_name: str) -> list[ApiKey]:
    """The tenant's keys, revoked ones included, oldest first (UnknownTenant when there is no tenant)."""
    tenant = tenant_named(tenant_name)
    return list(
        db.session.scalars(
            select(ApiKey).where(ApiKey.tenant_id == tenant.id).order_by(ApiKey.created_at, ApiKey.id)
        )
    )


def revoke_key(key_id: uuid.UUID) -> bool:
    """Revoke a key: its next API request and every dashboard session it opened are refused.

    False if there is no such key; revoking twice keeps the first time.
    """
    key = db.session.get(ApiKey, key_id)
    if key is None:
        return False
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        db.session.commit()
    try:
        redis_client().delete(key_cache_name(key.key_digest))
    except redis.RedisError as exc:
        log.warning(
            "API key %s revoked, but its cached tenant could not be deleted (%s): it expires within %d s",
            key.id, type(exc).__name__, KEY_CACHE_SECONDS,
        )  # fmt: skip
    return True


def rotate_webhook_secret(tenant_name: str) -> str:
    """Issue a new signing secret; the old one keeps signing too for an overlap period."""
    tenant = tenant_named(tenant_name)
    tenant.previous_webhook_secret = tenant.webhook_secret
    tenant.previous_secret_expires_at = utcnow() + timedelta(hours=SECRET_ROTATION_OVERLAP_HOURS)
    tenant.webhook_secret = generate_secret()
    db.session.commit()
    return tenant.webhook_secret


def reencrypt_secrets() -> int:
    """Rewrite every tenant's secrets under the current encryption key; returns the tenants rewritten.

    Reading decrypts under the current or a retired key, writing always encrypts under the current one,
    so after this run the retired keys can be dropped from ``GPUJOBS_ENCRYPTION_OLD_KEYS``.
    """
    tenants = list(db.session.scalars(select(Tenant).with_for_update()))
    for tenant in tenants:
        flag_modified(tenant, "webhook_secret")
        flag_modified(tenant, "previous_webhook_secret")
    db.session.commit()
    return len(tenants)
