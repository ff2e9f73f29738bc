"""Public JSON shapes (camelCase) of rows: one function per resource, shared by API and webhooks."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gpujobs.jobs import PRIORITY_NAMES
from gpujobs.models import DeadLetter, Instance, Job, JobEvent, WebhookDelivery
from gpujobs.registry import Definition


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def job_to_dict(job: Job) -> dict[str, Any]:
    """A job as the API shows it."""
    return {
        "id": str(job.id),
        "definitionKey": job.definition_key,
        "definitionVersion": job.definition_version,
        "status": job.status,
        "priority": PRIORITY_NAMES[job.priority],
        "params": job.params,
        "attempt": job.attempt,
        "maxAttempts": job.max_attempts,
        "timeoutSeconds": job.timeout_seconds,
        "progress": job.progress,
        "result": job.result,
        "error": job.error,
        "cancelRequested": job.cancel_requested,
        "deadLettered": job.dead_lettered,
        "idempotencyKey": job.idempotency_key,
        "webhookUrl": job.webhook_url,
        "createdAt": _iso(job.created_at),
        "queuedAt": _iso(job.queued_at),
        "startedAt": _iso(job.started_at),
        "finishedAt": _iso(job.finished_at),
        "nextRetryAt": _iso(job.next_retry_at),
    }


def event_to_dict(event: JobEvent) -> dict[str, Any]:
    """One timeline entry."""
    return {
        "id": event.id,
        "type": event.type,
        "attempt": event.attempt,
        "data": event.data,
        "createdAt": _iso(event.created_at),
    }


def instance_to_dict(instance: Instance) -> dict[str, Any]:
    """An instance as the API shows it; `pricePerHour` is USD for all its GPUs (Novita: 1/100,000 USD)."""
    price = instance.price_per_hour_units
    return {
        "id": str(instance.id),
        "jobId": str(instance.job_id) if instance.job_id else None,
        "name": instance.name,
        "label": instance.label,
        "novitaInstanceId": instance.novita_id,
        "status": instance.status,
        "novitaStatus": instance.novita_status,
        "productName": instance.product_name,
        "productId": instance.product_id,
        "region": instance.region,
        "clusterId": instance.cluster_id,
        "gpuNum": instance.gpu_num,
        "pricePerHour": price / 100_000 if price is not None else None,
        "endpoints": instance.endpoints,
        "error": instance.error,
        "createdAt": _iso(instance.created_at),
        "readyAt": _iso(instance.ready_at),
        "lastSeenAt": _iso(instance.last_seen_at),
    }


def dead_letter_to_dict(letter: DeadLetter) -> dict[str, Any]:
    """A dead-letter entry."""
    return {
        "id": str(letter.id),
        "jobId": str(letter.job_id),
        "definitionKey": letter.definition_key,
        "attempts": letter.attempts,
        "error": letter.error,
        "createdAt": _iso(letter.created_at),
        "redrivenAt": _iso(letter.redriven_at),
    }


def delivery_to_dict(delivery: WebhookDelivery) -> dict[str, Any]:
    """A webhook delivery as its tenant sees it: outcome and schedule (no payload, never a secret)."""
    return {
        "id": str(delivery.id),
        "jobId": str(delivery.job_id),
        "eventType": delivery.event_type,
        "url": delivery.url,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "lastStatusCode": delivery.last_status_code,
        "lastError": delivery.last_error,
        "nextAttemptAt": _iso(delivery.next_attempt_at),
        "createdAt": _iso(delivery.created_at),
        "deliveredAt": _iso(delivery.delivered_at),
    }


def definition_to_dict(definition: Definition) -> dict[str, Any]:
    """A job definition and its defaults, with the JSON Schema its params must match."""
    return {
        "key": definition.key,
        "version": definition.version,
        "description": definition.description,
        "defaultMaxAttempts": definition.max_attempts,
        "timeoutSeconds": definition.timeout_seconds,
        "concurrencyLimit": definition.concurrency_limit,
        "paramsSchema": definition.params_model.model_json_schema(),
    }
