"""A job's webhook deliveries: listed without secrets, sent again on request, invisible to other tenants."""

from __future__ import annotations

import base64
import json
import uuid

import redis
from sqlalchemy import func, select, text, update

from gpujobs import sweeps, webhooks
from gpujobs.extensions import db
from gpujobs.models import Job, Tenant, WebhookDelivery

WEBHOOK_URL = "http://127.0.0.1:9/hook"  # nothing listens; these tests only read the rows and the queue


def test_a_jobs_deliveries_show_their_state_and_never_the_signing_secret(app, client, tenant, delivery):
    response = client.get(f"/v1/jobs/{delivery['job_id']}/deliveries", headers=tenant["headers"])
    assert response.status_code == 200 and response.json["jobId"] == delivery["job_id"]
    (item,) = response.json["items"]
    assert item["id"] == delivery["delivery_id"] and item["eventType"] == "job.cancelled"
    assert item["status"] == "pending" and item["attempts"] == 0 and item["nextAttemptAt"]
    # a context of its own: the test client's requests must not run inside it
    with app.app_context():
        secret = db.session.get(Tenant, uuid.UUID(tenant["id"])).webhook_secret
    assert secret not in response.get_data(as_text=True) and "whsec_" not in response.get_data(as_text=True)


def test_a_job_without_a_webhook_has_no_deliveries(client, tenant, submit):
    job_id = submit(tenant).json["id"]
    assert client.get(f"/v1/jobs/{job_id}/deliveries", headers=tenant["headers"]).json["items"] == []


def test_redeliver_puts_a_finished_delivery_back_to_pending_with_the_same_webhook_id(
    app, client, tenant, delivery
):
    # a context of its own: the test client's requests must not run inside it
    with app.app_context():
        db.session.execute(
            update(WebhookDelivery).values(
                status="failed", attempts=8, last_status_code=500, next_attempt_at=None
            )
        )
        db.session.commit()
    path = f"/v1/jobs/{delivery['job_id']}/deliveries/{delivery['delivery_id']}/redeliver"
    response = client.post(path, headers=tenant["headers"])
    assert response.status_code == 202
    assert response.json["id"] == delivery["delivery_id"] and response.json["status"] == "pending"
    assert response.json["nextAttemptAt"] and response.json["lastStatusCode"] == 500


def test_a_delivery_is_only_reachable_through_its_own_job_and_tenant(client, tenant, other, submit, delivery):
    another_job = submit(tenant).json["id"]
    wrong_job = f"/v1/jobs/{another_job}/deliveries/{delivery['delivery_id']}/redeliver"
    assert client.post(wrong_job, headers=tenant["headers"]).status_code == 404
    unknown = f"/v1/jobs/{delivery['job_id']}/deliveries/{uuid.uuid4()}/redeliver"
    assert client.post(unknown, headers=tenant["headers"]).status_code == 404
    mine = f"/v1/jobs/{delivery['job_id']}/deliveries"
    assert client.get(mine, headers=other["headers"]).status_code == 404
    assert (
        client.post(f"{mine}/{delivery['delivery_id']}/redeliver", headers=other["headers"]).status_code
        == 404
    )


def test_the_webhook_sweep_leaves_a_new_delivery_to_the_message_that_carries_it_in_order(
    app, delivery, app_context
):
    assert sweeps.publish_due_webhooks() == 0  # never tried, just recorded: its message is on its way
    two_minutes_ago = func.now() - text("interval '2 minutes'")
    db.session.execute(update(WebhookDelivery).values(created_at=two_minutes_ago))
    db.session.commit()
    assert sweeps.publish_due_webhooks() == 1  # still untried a while later: that message was lost


def test_the_sweep_sends_a_jobs_untried_deliveries_again_as_one_message_in_order(app, tenant, submit):
    job_id = uuid.UUID(submit(tenant, webhookUrl=WEBHOOK_URL).json["id"])
    queue = redis.Redis.from_url(app.config["REDIS_URL"])
    # a context of its own: the test client's requests must not run inside it
    with app.app_context():
        job = db.session.get(Job, job_id)
        for event_type in ("instance.running", "job.succeeded"):  # recorded in this order, messages lost
            webhooks.record_event(job, event_type)
        two_minutes_ago = func.now() - text("interval '2 minutes'")
        db.session.execute(update(WebhookDelivery).values(created_at=two_minutes_ago))
        db.session.commit()
        queue.delete("webhooks")
        assert sweeps.publish_due_webhooks() == 2
        ids = {d.event_type: str(d.id) for d in db.session.scalars(select(WebhookDelivery))}
    (message,) = queue.lrange("webhooks", 0, -1)
    args = json.loads(base64.b64decode(json.loads(message)["body"]))[0]
    assert args == [ids["instance.running"], ids["job.succeeded"]]
