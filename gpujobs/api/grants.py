"""``/v1/templates`` and ``/v1/registry-auths``: the Novita resources the operator granted the caller.

Only the ids a tenant may name in ``POST /v1/instances`` (``templateId``, ``imageAuthId``) and when they
were granted; nothing is read from Novita, so the account's other templates and auths stay unseen.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, g

from gpujobs import grants
from gpujobs.api import schemas
from gpujobs.api.auth import require_api_key
from gpujobs.api.openapi import operation

bp = Blueprint("grants", __name__, url_prefix="/v1")

TAG = "instances"


class Grant(schemas.Out):
    """A template or registry auth of the operator's Novita account that the caller may name."""

    id: str
    grantedAt: datetime


class GrantList(schemas.Out):
    """The caller's grants of one kind, oldest first."""

    items: list[Grant]


def _listing(kind: grants.Kind) -> dict[str, Any]:
    rows = grants.granted(g.tenant.id, kind)
    return {"items": [{"id": row.resource_id, "grantedAt": row.created_at.isoformat()} for row in rows]}


@bp.get("/templates")
@operation(summary="Templates you may use", tag=TAG, responses={200: GrantList})
@require_api_key
def list_templates() -> dict[str, Any]:
    """The Novita templates the operator granted you: the `templateId`s `POST /v1/instances` accepts."""
    return _listing(grants.Kind.TEMPLATE)


@bp.get("/registry-auths")
@operation(summary="Registry auths you may use", tag=TAG, responses={200: GrantList})
@require_api_key
def list_registry_auths() -> dict[str, Any]:
    """The registry auths the operator granted you: the `imageAuthId`s `POST /v1/instances` accepts."""
    return _listing(grants.Kind.REGISTRY_AUTH)
