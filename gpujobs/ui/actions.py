"""Operator actions: cancel a job, redrive a dead letter, redeliver a webhook, stop/start/delete an instance.

Each is a POST from a form that carries the session's CSRF token (checked in ``signin._guard``) and
is confirmed in the page before it is sent. A view calls the same domain function the API calls,
tells the outcome in a flash message, and redirects back (post/redirect/get), so a refresh never
repeats an action.
"""

from __future__ import annotations

import uuid

from flask import abort, flash, g, redirect, request, url_for
from pydantic import ValidationError
from werkzeug.wrappers import Response

from gpujobs import operations, webhooks
from gpujobs.api.dlq import Redrive, tenant_letter
from gpujobs.api.jobs import tenant_job
from gpujobs.exceptions import Conflict
from gpujobs.provisioning import actions as instance_actions
from gpujobs.states import JobStatus
from gpujobs.ui import bp
from gpujobs.ui.signin import dashboard_path


def _uuid_or_404(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        abort(404)


def _back(default: str) -> Response:
    """Back to the page the form was on, else ``default``."""
    return redirect(dashboard_path(request.form.get("back"), default))


@bp.post("/jobs/<job_id>/cancel")
def cancel_job(job_id: str) -> Response:
    """Cancel a job: queued ones at once, running ones at their next check."""
    job = tenant_job(job_id)
    status = operations.cancel(job.id, g.tenant.id)
    if status == JobStatus.CANCELLING:
        flash("Cancellation requested: the job stops at its next check.")
    elif status == JobStatus.CANCELLED:
        flash("Job cancelled.")
    else:
        flash(f"Nothing to cancel: the job is {status}.", "error")
    return redirect(url_for("ui.job", job_id=job.id))


@bp.post("/dlq/<letter_id>/redrive")
def redrive(letter_id: str) -> Response:
    """Queue a dead-lettered job again, optionally with a new attempt budget."""
    letter = tenant_letter(letter_id)
    try:
        budget = Redrive.model_validate(
            {"maxAttempts": request.form.get("max_attempts", "").strip() or None}
        ).maxAttempts
    except ValidationError as exc:
        flash(f"maxAttempts: {exc.errors()[0]['msg']}.", "error")
        return _back(url_for("ui.dead_letters"))
    try:
        job_id = operations.redrive(letter.id, g.tenant.id, budget)
    except Conflict:
        flash("This dead letter was already redriven.", "error")
        return _back(url_for("ui.dead_letters"))
    flash("Job redriven: it is queued again.")
    return redirect(url_for("ui.job", job_id=job_id))


@bp.post("/jobs/<job_id>/deliveries/<delivery_id>/redeliver")
def redeliver(job_id: str, delivery_id: str) -> Response:
    """Send a webhook delivery again now, under the same ``webhook-id``."""
    job = tenant_job(job_id)
    webhooks.redeliver(_uuid_or_404(delivery_id), job.id, g.tenant.id)
    flash("Webhook queued for redelivery.")
    return redirect(url_for("ui.job", job_id=job.id))


@bp.post("/instances/<instance_id>/<action>")
def instance_action(instance_id: str, action: str) -> Response:
    """Stop, start or delete an instance: the API's request (state check, then a ``gpu.instance.*`` job)."""
    if action not in instance_actions.KEYS:
        abort(404)
    try:
        job, instance = instance_actions.request(g.tenant.id, _uuid_or_404(instance_id), action)
    except Conflict as exc:
        flash(f"Refused: {exc}.", "error")
        return redirect(url_for("ui.instances"))
    flash(f"{action.capitalize()} requested for {instance.label or instance.name}.")
    return redirect(url_for("ui.job", job_id=job.id))
