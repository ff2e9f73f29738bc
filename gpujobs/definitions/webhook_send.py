"""webhook.send@1: the GPU queue's ``SEND_WEBHOOK`` job, a client's own message sent as a webhook.

The payload goes to ``url`` as a delivery of the job, through the machinery of the service's own events
(``gpujobs.webhooks``): signed with the tenant's secret (Standard Webhooks), SSRF-guarded at submit and
at send (``gpujobs.outbound``), retried on the same schedule by the webhook sweep, listed under the job's
deliveries. The handler makes the first try itself, so the job's result says how it went; the retries go
on after the job ended. A job has one such delivery, so a rerun never sends twice what already landed.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from flask import current_app, has_app_context
from pydantic import Field, field_validator

from gpujobs import webhooks
from gpujobs.extensions import db
from gpujobs.models import WebhookDelivery
from gpujobs.outbound import UnsafeURLError, check_url
from gpujobs.registry import JobContext, Params, job_definition

MAX_PAYLOAD_BYTES = 64 * 1024


class SendWebhookParams(Params):
    """Params of `webhook.send@1`: where to, what, and any headers of the receiver's own."""

    url: str = Field(
        max_length=2048,
        pattern=r"^https?://",
        description="http or https receiver; private and internal addresses are refused unless the service "
        "allows private ones",
    )
    payload: dict[str, Any] = Field(
        description=f"the JSON object to send, signed as it is (at most {MAX_PAYLOAD_BYTES} bytes)"
    )
    headers: webhooks.WebhookHeaders = Field(default_factory=dict)

    @field_validator("payload")
    @classmethod
    def _bounded(cls, payload: dict[str, Any]) -> dict[str, Any]:
        if len(json.dumps(payload)) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"payload is larger than {MAX_PAYLOAD_BYTES} bytes as JSON")
        return payload

    @field_validator("url")
    @classmethod
    def _safe_url(cls, url: str) -> str:
        if has_app_context():  # at submit time: a URL pointing inside is a 422, not a failed job later
            try:
                check_url(url, allow_private=current_app.config["GPUJOBS_WEBHOOK_ALLOW_PRIVATE"])
            except UnsafeURLError as exc:
                raise ValueError(str(exc)) from None
        return url


@job_definition(
    "webhook.send",
    1,
    params_model=SendWebhookParams,
    timeout_seconds=120,
    description="Sends a JSON payload to a URL as a signed, retried, SSRF-guarded webhook delivery.",
)
def send_webhook(ctx: JobContext, params: dict[str, Any]) -> dict[str, Any]:
    """Record the job's delivery (once), make its first try, and say how it went."""
    job_id = uuid.UUID(ctx.job_id)
    delivery_id = webhooks.record_message(job_id, params["url"], params["payload"], params["headers"])
    db.session.commit()
    webhooks.deliver(delivery_id)  # None when it was sent before (a rerun) or another sender holds it
    delivery = db.session.get_one(WebhookDelivery, delivery_id, populate_existing=True)
    db.session.commit()
    return {
        "deliveryId": str(delivery_id),
        "status": delivery.status,
        "statusCode": delivery.last_status_code,
        "attempts": delivery.attempts,
    }
