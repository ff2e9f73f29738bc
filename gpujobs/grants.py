"""Which Novita templates and registry auths of the operator's account each tenant may name, and which
instances gpujobs did not create it may stop and start.

One Novita account serves every tenant, so a template id or registry auth id is the operator's, not the
caller's: a tenant may name one only after the operator granted it (``python -m gpujobs templates
grant``). A refusal reads the same whether the id exists at Novita or not, so a tenant learns nothing
of what the account holds. It is checked at submit and again by the worker before any Novita call, in
case the grant was revoked while the job waited.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert

from gpujobs.exceptions import GpuJobsError, InvalidField
from gpujobs.extensions import db
from gpujobs.models import NovitaGrant
from gpujobs.tenants import tenant_named


class Kind(StrEnum):
    """What a grant lets a tenant name; the value is stored in ``novita_grants.kind``."""

    TEMPLATE = "template"
    REGISTRY_AUTH = "registry_auth"
    #: An instance made elsewhere on the account (a watched, `external` one): stop and start.
    INSTANCE = "instance"


#: The create-instance field that names each kind (the API's spelling).
FIELDS: dict[Kind, str] = {Kind.TEMPLATE: "templateId", Kind.REGISTRY_AUTH: "imageAuthId"}
_NOUNS: dict[Kind, str] = {Kind.TEMPLATE: "template", Kind.REGISTRY_AUTH: "registry auth"}


def grant(tenant_name: str, kind: Kind, resource_id: str) -> None:
    """Let the tenant name ``resource_id``; granting twice is harmless (UnknownTenant: no such tenant)."""
    tenant = tenant_named(tenant_name)
    db.session.execute(
        insert(NovitaGrant)
        .values(tenant_id=tenant.id, kind=kind, resource_id=resource_id)
        .on_conflict_do_nothing()
    )
    db.session.commit()


def novita_has(kind: Kind, resource_id: str) -> bool | None:
    """Whether the operator's Novita account holds ``resource_id`` (asked once, no retries): False when
    Novita's own answer says it has none, None when it could not be asked (down, no key, a proxy's page).
    A grant names the account's resources; a typo would only show when a tenant's job failed at Novita."""
    from gpujobs.novita import NovitaNotFoundError
    from gpujobs.provisioning.novita_client import novita_client

    try:
        with novita_client(max_attempts=1) as client:
            if kind is Kind.REGISTRY_AUTH:
                return any(auth.id == resource_id for auth in client.list_registry_auths())
            if kind is Kind.TEMPLATE:
                client.get_template(resource_id)
            else:
                client.get_instance(resource_id)
    except NovitaNotFoundError:
        return False
    except GpuJobsError:
        return None
    return True


def revoke(tenant_name: str, kind: Kind, resource_id: str) -> bool:
    """Take a grant back (jobs not yet at Novita then fail); False when there was none."""
    tenant_id = tenant_named(tenant_name).id
    removed = db.session.execute(
        delete(NovitaGrant)
        .where(
            NovitaGrant.tenant_id == tenant_id,
            NovitaGrant.kind == kind,
            NovitaGrant.resource_id == resource_id,
        )
        .returning(NovitaGrant.resource_id)
    ).first()
    db.session.commit()
    return removed is not None


def granted(tenant_id: uuid.UUID, kind: Kind) -> list[NovitaGrant]:
    """The tenant's grants of one kind, oldest first."""
    return list(
        db.session.scalars(
            select(NovitaGrant)
            .where(NovitaGrant.tenant_id == tenant_id, NovitaGrant.kind == kind)
            .order_by(NovitaGrant.created_at, NovitaGrant.resource_id)
        )
    )


def allows(tenant_id: uuid.UUID, kind: Kind, resource_id: str) -> bool:
    """Whether the operator granted the tenant this resource."""
    return (
        db.session.scalar(
            select(NovitaGrant.resource_id).where(
                NovitaGrant.tenant_id == tenant_id,
                NovitaGrant.kind == kind,
                NovitaGrant.resource_id == resource_id,
            )
        )
        is not None
    )


def holders(kind: Kind, resource_id: str) -> set[uuid.UUID]:
    """The tenants the operator granted ``resource_id`` to (none: it was granted to nobody)."""
    granted = select(NovitaGrant.tenant_id).where(
        NovitaGrant.kind == kind, NovitaGrant.resource_id == resource_id
    )
    return set(db.session.scalars(granted))


def refusal(tenant_id: uuid.UUID, params: dict[str, Any]) -> InvalidField | None:
    """The error for the first template or registry auth in ``params`` the tenant was not granted."""
    for kind, field in FIELDS.items():
        resource_id = params.get(field)
        if resource_id is not None and not allows(tenant_id, kind, resource_id):
            return InvalidField(field, f"no {_NOUNS[kind]} {resource_id!r} was granted to this tenant")
    return None


def authorize(tenant_id: uuid.UUID, params: dict[str, Any]) -> None:
    """Raise InvalidField naming ``templateId`` or ``imageAuthId`` when the tenant may not use it."""
    error = refusal(tenant_id, params)
    if error is not None:
        raise error
