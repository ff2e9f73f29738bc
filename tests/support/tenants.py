"""Tenants with API keys, and their webhook secrets, made through the real domain code."""

from __future__ import annotations

import uuid
from decimal import Decimal

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


def set_limits(app: Flask, tenant: dict[str, str], **values: int | Decimal | None) -> None:
    """Give the tenant its own limits (``max_priority=3``), as ``tenants set-limits`` does."""
    from gpujobs.limits import set_limits as set_own_limits

    with app.app_context():
        set_own_limits(tenant["name"], **values)


def grant(app: Flask, tenant: dict[str, str], kind: str, resource_id: str) -> None:
    """Grant the tenant a Novita ``template`` or ``registry_auth``, as ``templates grant`` does."""
    from gpujobs.grants import Kind
    from gpujobs.grants import grant as grant_resource

    with app.app_context():
        grant_resource(tenant["name"], Kind(kind), resource_id)
