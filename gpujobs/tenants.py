"""Tenants, API keys and webhook secrets.

API keys are random 256-bit tokens shown once and stored as SHA-256 digests: with that much entropy a
plain digest cannot be brute-forced, and the lookup stays a single indexed query.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from sqlalchemy import select

from gpujobs.extensions import db
from gpujobs.jobs import utcnow
from gpujobs.models import ApiKey, Tenant
from gpujobs.signing import generate_secret

API_KEY_PREFIX = "gj_"
SECRET_ROTATION_OVERLAP_HOURS = 24


def key_digest(api_key: str) -> str:
    """The stored form of an API key."""
    return hashlib.sha256(api_key.encode()).hexdigest()


def ensure_tenant(name: str) -> Tenant:
    """The tenant called ``name``, created (with a webhook secret) on first use."""
    tenant = db.session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name, webhook_secret=generate_secret())
        db.session.add(tenant)
        db.session.flush()
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
        select(ApiKey.key_digest, Tenant)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.key_digest == digest, ApiKey.revoked_at.is_(None))
    ).one_or_none()
    if row is None or not hmac.compare_digest(row.key_digest, digest):
        return None
    return row.Tenant


def rotate_webhook_secret(tenant_name: str) -> str:
    """Issue a new signing secret; the old one keeps signing too for an overlap period."""
    tenant = ensure_tenant(tenant_name)
    tenant.previous_webhook_secret = tenant.webhook_secret
    tenant.previous_secret_expires_at = utcnow() + timedelta(hours=SECRET_ROTATION_OVERLAP_HOURS)
    tenant.webhook_secret = generate_secret()
    db.session.commit()
    return tenant.webhook_secret
