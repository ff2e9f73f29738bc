"""Tenants with API keys, and their webhook secrets, made through the real domain code."""

from __future__ import annotations

import uuid

from flask import Flask

from gpujobs.extensions import db
from gpujobs.models import Tenant
from gpujobs.tenants import create_api_key, ensure_tenant


def make_tenant(app: Flask, name: str) -> dict[str, str]:
    """Create a tenant and an API key for it: ``{"id", "name", "key", "headers"}``."""
    with app.app_context():
        key = create_api_key(name)
        tenant_id = str(ensure_tenant(name).id)
    return {"id": tenant_id, "name": name, "key": key, "headers": {"Authorization": f"Bearer {key}"}}


def secret_of(app: Flask, tenant: dict[str, str]) -> str:
    """The tenant's current webhook signing secret."""
    with app.app_context():
        return db.session.get_one(Tenant, uuid.UUID(tenant["id"])).webhook_secret
