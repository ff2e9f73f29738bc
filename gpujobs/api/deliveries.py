"""``/v1/jobs/{id}/deliveries``: a job's webhook deliveries, and sending one again."""

from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint, g
from sqlalchemy import select

from gpujobs import resources, webhooks
from gpujobs.api import schemas
from gpujobs.api.auth import require_api_key
from gpujobs.api.jobs import tenant_job
from gpujobs.api.openapi import operation
from gpujobs.extensions import db
from gpujobs.models import WebhookDelivery

bp = Blueprint("deliveries", __name__, url_prefix="/v1/jobs")

TAG = "webhooks"
# A job has one delivery per event and attempt; this bounds the answer for pathological jobs.
MAX_DELIVERIES = 500


@bp.get("/<uuid:job_id>/deliveries")
@operation(summary="A job's webhook deliveries", tag=TAG, responses={200: schemas.DeliveryList})
@require_api_key
def list_deliveries(job_id: uuid.UUID) -> dict[str, Any]:
    """Each event sent (or to be sent) to the job's ``webhookUrl``, oldest first."""
    job = tenant_job(job_id)
    deliveries = db.session.scalars(
        select(WebhookDelivery)
        .where(WebhookDelivery.job_id == job.id, WebhookDelivery.tenant_id == g.tenant.id)
        .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
        .limit(MAX_DELIVERIES)
    ).all()
    return {"jobId": str(job.id), "items": [resources.Delivery.json_of(d) for d in deliveries]}


@bp.post("/<uuid:job_id>/deliveries/<uuid:delivery_id>/redeliver")
@operation(summary="Send a webhook delivery again now", tag=TAG, responses={202: resources.Delivery})
@require_api_key
def redeliver(job_id: uuid.UUID, delivery_id: uuid.UUID) -> tuple[dict[str, Any], int]:
    """Queue the delivery for an immediate attempt, with the same ``webhook-id`` (whatever its status)."""
    webhooks.redeliver(delivery_id, job_id, g.tenant.id)
    delivery = db.session.get(WebhookDelivery, delivery_id, populate_existing=True)
    return resources.Delivery.json_of(delivery), 202
