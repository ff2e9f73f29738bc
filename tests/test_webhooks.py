"""Signed webhook deliveries end to end: a real worker, a real HTTP receiver, the public verifier."""

from __future__ import annotations

import json
import threading
import uuid
from functools import partial

import pytest
from sqlalchemy import select, update
from support.databases import app_on, new_database
from support.polling import wait_for
from support.receivers import Receiver
from support.tenants import make_tenant, secret_of

from gpujobs import webhook_share
from gpujobs.extensions import db
from gpujobs.models import WebhookDelivery
from gpujobs.outbound import endpoint_of


@pytest.fixture
def receiver(app, tenant):
    made = []

    def make(fail_first: int = 0) -> Receiver:
        made.append(Receiver(secret_of(app, tenant), fail_first))
        return made[-1]

    yield make
    for r in made:
        r.close()


def test_a_finished_job_sends_one_signed_webhook_the_public_library_verifies(
    app, client, tenant, worker, receiver
):
    hook = receiver()
    body = {"definitionKey": "echo", "params": {"message": "hi"}, "webhookUrl": hook.url}
    response = client.post("/v1/jobs", json=body, headers=tenant["headers"])
    assert response.status_code == 202
    wait_for(lambda: hook.verified, timeout=30)
    event = hook.verified[0]
    assert event["type"] == "job.succeeded"
    assert event["data"]["job"]["id"] == response.json["id"]
    assert event["data"]["job"]["status"] == "succeeded"
    assert len(hook.ids) == 1


def test_a_failing_receiver_is_retried_with_the_same_webhook_id(app, client, tenant, worker, receiver):
    from gpujobs.sweeps import publish_due_webhooks

    hook = receiver(fail_first=1)
    body = {"definitionKey": "echo", "params": {"message": "retry"}, "webhookUrl": hook.url}
    job_id = client.post("/v1/jobs", json=body, headers=tenant["headers"]).json["id"]

    def first_attempt_recorded() -> bool:
        # a context of its own: the test client's requests must not run inside it
        with app.app_context():
            code = db.session.scalar(select(WebhookDelivery.last_status_code))
        return code == 503

    wait_for(first_attempt_recorded, timeout=30)
    with app.app_context():  # skip the 5 s wait of the first retry step
        db.session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.job_id == uuid.UUID(job_id))
            .values(next_attempt_at=db.func.now())
        )
        db.session.commit()
        publish_due_webhooks()
    wait_for(lambda: hook.verified, timeout=30)
    assert len(set(hook.ids)) == 1 and len(hook.ids) == 2

    def delivery_state() -> tuple[str, int, int | None]:
        # the worker records the answer just after the receiver has it
        with app.app_context():
            delivery = db.session.scalar(select(WebhookDelivery))
            return delivery.status, delivery.attempts, delivery.last_status_code

    wait_for(lambda: delivery_state()[0] != "pending", timeout=30)
    assert delivery_state() == ("succeeded", 2, 204)


def test_rotated_secrets_sign_with_both_during_the_overlap(
    app, tenant, worker, client, receiver, process_env
):
    import subprocess
    import sys

    old = receiver()
    rotated = subprocess.run(
        [sys.executable, "-m", "gpujobs", "webhooks", "secret", "--tenant", tenant["name"], "--rotate"],
        env=process_env, capture_output=True, text=True, timeout=60,
    ).stdout.strip()  # fmt: skip
    new = Receiver(rotated)
    try:
        for hook in (old, new):
            body = {"definitionKey": "echo", "params": {"message": "rot"}, "webhookUrl": hook.url}
            assert client.post("/v1/jobs", json=body, headers=tenant["headers"]).status_code == 202
        wait_for(lambda: old.verified and new.verified, timeout=30)
    finally:
        new.close()


def test_a_webhook_url_pointing_inside_is_refused_at_submit(app, client, tenant):
    app.config["GPUJOBS_WEBHOOK_ALLOW_PRIVATE"] = False
    try:
        for url in ("http://127.0.0.1:9/x", "http://169.254.169.254/latest", "ftp://example.com/x"):
            body = {"definitionKey": "echo", "params": {"message": "x"}, "webhookUrl": url}
            response = client.post("/v1/jobs", json=body, headers=tenant["headers"])
            assert response.status_code == 422, url
            assert response.content_type == "application/problem+json"
            assert json.loads(response.data)["errors"][0]["field"] == "webhookUrl"
    finally:
        app.config["GPUJOBS_WEBHOOK_ALLOW_PRIVATE"] = True


TOKEN = "tok-3f9a1c"


def test_a_jobs_webhook_headers_go_with_each_delivery_and_no_answer_or_log_shows_their_values(
    app, client, tenant, worker, receiver
):
    hook = receiver()
    body = {
        "definitionKey": "echo",
        "params": {"message": "hi"},
        "webhookUrl": hook.url,
        "webhookHeaders": {"Authorization": f"Bearer {TOKEN}", "X-Team": "blue"},
    }
    response = client.post("/v1/jobs", json=body, headers=tenant["headers"])
    assert response.status_code == 202
    assert response.json["webhookHeaders"] == {"Authorization": "••••", "X-Team": "••••"}
    wait_for(lambda: hook.verified, timeout=30)  # the signature still verifies beside them
    assert hook.headers[0]["authorization"] == f"Bearer {TOKEN}" and hook.headers[0]["x-team"] == "blue"
    assert hook.verified[0]["data"]["job"]["webhookHeaders"] == {"Authorization": "••••", "X-Team": "••••"}

    job_id = response.json["id"]
    shown = [
        client.get(f"/v1/jobs/{job_id}", headers=tenant["headers"]).get_data(as_text=True),
        client.get(f"/v1/jobs/{job_id}/deliveries", headers=tenant["headers"]).get_data(as_text=True),
        worker.log(),
    ]
    assert all(TOKEN not in text for text in shown)


@pytest.mark.parametrize(
    "headers",
    [
        {"webhook-id": "forged"},
        {"Webhook-Signature": "v1,forged"},
        {"Connection": "close"},
        {"Transfer-Encoding": "chunked"},
        {"Host": "elsewhere.example"},
        {"Content-Length": "1"},
        {"X-Injected": "a\r\nX-Other: b"},
        {"X Space": "a"},
        {"X-Long": "a" * 1025},
        {f"X-{n}": "a" for n in range(21)},
        {"x-dup": "a", "X-Dup": "b"},
    ],
)
def test_webhook_headers_the_sender_owns_or_that_could_inject_are_refused(app, client, tenant, headers):
    body = {
        "definitionKey": "echo",
        "params": {},
        "webhookUrl": "http://127.0.0.1:9/",
        "webhookHeaders": headers,
    }
    response = client.post("/v1/jobs", json=body, headers=tenant["headers"])
    assert response.status_code == 422
    assert [error["field"] for error in response.json["errors"]] == ["webhookHeaders"]
    assert all(value not in response.get_data(as_text=True) for value in headers.values() if len(value) > 4)


def test_a_webhook_send_job_delivers_its_payload_signed_with_its_own_headers(
    app, client, tenant, worker, receiver
):
    hook = receiver()
    payload = {"instanceId": "my-instance", "status": "running", "timestamp": "2026-12-07T01:00:00Z"}
    params = {"url": hook.url, "payload": payload, "headers": {"X-Receiver-Token": TOKEN}}
    response = client.post(
        "/v1/jobs", json={"definitionKey": "webhook.send", "params": params}, headers=tenant["headers"]
    )
    assert response.status_code == 202
    job_id = response.json["id"]
    wait_for(
        lambda: client.get(f"/v1/jobs/{job_id}", headers=tenant["headers"]).json["status"] == "succeeded"
    )
    assert hook.verified == [payload]  # verified with the tenant's secret by the standardwebhooks library
    assert hook.headers[0]["x-receiver-token"] == TOKEN
    result = client.get(f"/v1/jobs/{job_id}", headers=tenant["headers"]).json["result"]
    assert (result["status"], result["statusCode"], result["attempts"]) == ("succeeded", 204, 1)
    (delivery,) = client.get(f"/v1/jobs/{job_id}/deliveries", headers=tenant["headers"]).json["items"]
    assert (delivery["id"], delivery["eventType"]) == (result["deliveryId"], "webhook.send")
    assert hook.ids == [result["deliveryId"]]
    assert TOKEN not in worker.log()


def test_a_webhook_send_to_a_failing_receiver_is_retried_by_the_webhook_sweep(
    app, client, tenant, worker, receiver
):
    from gpujobs.sweeps import publish_due_webhooks

    hook = receiver(fail_first=1)
    params = {"url": hook.url, "payload": {"n": 1}}
    response = client.post(
        "/v1/jobs", json={"definitionKey": "webhook.send", "params": params}, headers=tenant["headers"]
    )
    job_id = response.json["id"]
    wait_for(
        lambda: client.get(f"/v1/jobs/{job_id}", headers=tenant["headers"]).json["status"] == "succeeded"
    )
    result = client.get(f"/v1/jobs/{job_id}", headers=tenant["headers"]).json["result"]
    assert (result["status"], result["statusCode"]) == ("pending", 503)  # the first try; retries follow

    def swept() -> bool:
        with app.app_context():
            publish_due_webhooks()
        return bool(hook.verified)

    wait_for(swept, timeout=30, interval=0.5)
    assert hook.verified == [{"n": 1}] and hook.ids == [result["deliveryId"]] * 2  # the same webhook-id


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data", "ftp://example.com/x"])
def test_a_webhook_send_to_a_forbidden_url_is_refused_at_submit(app, client, tenant, url):
    params = {"url": url, "payload": {}}
    response = client.post(
        "/v1/jobs", json={"definitionKey": "webhook.send", "params": params}, headers=tenant["headers"]
    )
    assert response.status_code == 422
    assert [error["field"] for error in response.json["errors"]] == ["params.url"]


def test_the_circuit_opens_after_repeated_failures_holds_deliveries_and_a_later_probe_closes_it(
    app, client, tenant, start_worker, receiver
):
    from gpujobs.models import JobEvent, WebhookEndpoint
    from gpujobs.sweeps import publish_due_webhooks

    start_worker(
        concurrency=1, GPUJOBS_WEBHOOK_BREAKER_FAILURES="2", GPUJOBS_WEBHOOK_BREAKER_COOLDOWN_SECONDS="1"
    )
    hook = receiver(fail_first=2)  # two failures open the circuit; the receiver then recovers
    job_ids = []
    for index in range(3):  # one at a time, so the third is sent after the circuit opened
        body = {"definitionKey": "echo", "params": {"message": f"m{index}"}, "webhookUrl": hook.url}
        job_ids.append(client.post("/v1/jobs", json=body, headers=tenant["headers"]).json["id"])
        sent_or_held = len(hook.ids) + 1
        job_id = job_ids[-1]
        wait_for(partial(_sent_or_held, app, hook, sent_or_held, job_id), timeout=30)

    def breaker() -> WebhookEndpoint | None:
        with app.app_context():
            return db.session.scalar(select(WebhookEndpoint))

    assert breaker().consecutive_failures == 2 and breaker().open_until is not None
    assert len(hook.ids) == 2  # the third was held, not sent
    assert _timeline(app, job_ids[1], "webhook.circuit_opened")
    assert _timeline(app, job_ids[2], "webhook.held")

    def probe_sent() -> bool:  # the beat's sweep, by hand: a due retry becomes the probe
        with app.app_context():
            db.session.execute(update(WebhookDelivery).values(next_attempt_at=db.func.now()))
            db.session.commit()
            publish_due_webhooks()
        return len(hook.verified) >= 3

    wait_for(probe_sent, timeout=30, interval=1.5)
    assert breaker().open_until is None and breaker().consecutive_failures == 0
    with app.app_context():
        closed = db.session.scalars(
            select(JobEvent.type).where(JobEvent.type == "webhook.circuit_closed")
        ).all()
    assert closed == ["webhook.circuit_closed"]
    assert {event["data"]["job"]["id"] for event in hook.verified} == set(job_ids)


def test_a_tenants_failures_open_only_its_own_circuit_of_a_receiver_other_tenants_share(
    app, client, tenant, start_worker
):
    """Tenant B's deliveries to a shared receiver fail and open B's circuit of it; tenant A's delivery
    to the same scheme://host:port still goes out, and B's stay held."""
    from standardwebhooks.webhooks import Webhook, WebhookVerificationError

    from bench.receiver import LoopbackReceiver
    from gpujobs.models import WebhookEndpoint

    start_worker(
        concurrency=1, GPUJOBS_WEBHOOK_BREAKER_FAILURES="2", GPUJOBS_WEBHOOK_BREAKER_COOLDOWN_SECONDS="600"
    )
    other = make_tenant(app, "other")
    a_verifier = Webhook(secret_of(app, tenant))
    a_verified: list[dict] = []
    b_tries: list[str] = []

    def shared(headers: dict[str, str], body: bytes) -> int:
        """One service both tenants name: it serves A's signed deliveries and fails every other one."""
        try:
            a_verified.append(a_verifier.verify(body, headers))
        except WebhookVerificationError:
            b_tries.append(headers["webhook-id"])
            return 500
        return 204

    def tried_or_held(tries: int, job_id: str) -> bool:
        return len(b_tries) >= tries or _timeline(app, job_id, "webhook.held")

    service = LoopbackReceiver(shared)
    try:
        b_jobs = []
        for index in range(3):  # one at a time: two failures open B's circuit, the third is held
            body = {
                "definitionKey": "echo",
                "params": {"message": f"b{index}"},
                "webhookUrl": service.url.replace("/hooks", "/bad"),
            }
            b_jobs.append(client.post("/v1/jobs", json=body, headers=other["headers"]).json["id"])
            wait_for(partial(tried_or_held, len(b_tries) + 1, b_jobs[-1]), timeout=30)
        assert len(b_tries) == 2
        assert _timeline(app, b_jobs[1], "webhook.circuit_opened")
        assert _timeline(app, b_jobs[2], "webhook.held")

        body = {
            "definitionKey": "echo",
            "params": {"message": "a"},
            "webhookUrl": service.url.replace("/hooks", "/good"),
        }
        a_job = client.post("/v1/jobs", json=body, headers=tenant["headers"]).json["id"]
        wait_for(lambda: a_verified, timeout=30)  # sent, not held behind B's open circuit
    finally:
        service.close()
    assert [event["data"]["job"]["id"] for event in a_verified] == [a_job]
    assert not _timeline(app, a_job, "webhook.held")
    assert len(b_tries) == 2  # B's third delivery is still held
    with app.app_context():
        circuits = {
            row.tenant_id: (row.consecutive_failures, row.open_until is not None)
            for row in db.session.scalars(select(WebhookEndpoint))
        }
    assert circuits == {uuid.UUID(other["id"]): (2, True)}  # A's answer touched no circuit


def test_the_upgrade_to_a_breaker_per_tenant_drops_the_shared_circuits_and_held_deliveries_go_out(
    app, servers
):
    """Migration r18: a receiver's circuit shared by all tenants, open, is dropped (it was no one
    tenant's), and a delivery it held, recorded before the change, is sent; the downgrade works with
    several tenants' circuits of one receiver."""
    from flask_migrate import downgrade, upgrade
    from sqlalchemy import text

    from gpujobs import operations, webhooks
    from gpujobs.breaker import HELD_ERROR
    from gpujobs.models import Tenant, WebhookEndpoint
    from gpujobs.tenants import ensure_tenant

    fresh = app_on(new_database(servers, "breaker_upgrade"))
    hook = None
    try:
        with fresh.app_context():
            upgrade()
            tenants = [ensure_tenant(name).id for name in ("acme", "other")]
            db.session.commit()
            hook = Receiver(db.session.get_one(Tenant, tenants[0]).webhook_secret)
            endpoint = endpoint_of(hook.url)
            options = operations.JobOptions(webhook_url=hook.url)
            job = operations.submit(tenants[0], "echo", 1, {"message": "m"}, options)
            webhooks.record_event(job, "job.progress")
            for tenant_id in tenants:  # each tenant's circuit of the receiver: one row each
                db.session.add(
                    WebhookEndpoint(tenant_id=tenant_id, endpoint=endpoint, consecutive_failures=1)
                )
            db.session.commit()
            downgrade(revision="q17_novita_run_times")
            assert db.session.scalar(text("SELECT count(*) FROM webhook_endpoints")) == 0
            # As the shared breaker left things: the receiver's one circuit open, the delivery held by it.
            db.session.execute(
                text(
                    "INSERT INTO webhook_endpoints (endpoint, consecutive_failures, open_until) "
                    "VALUES (:endpoint, 5, now() + interval '1 hour')"
                ),
                {"endpoint": endpoint},
            )
            db.session.execute(
                update(WebhookDelivery).values(last_error=HELD_ERROR, next_attempt_at=db.func.now())
            )
            db.session.commit()
            upgrade()
            assert db.session.scalar(text("SELECT count(*) FROM webhook_endpoints")) == 0
            delivery_id = db.session.scalar(select(WebhookDelivery.id))
            assert webhooks.deliver(delivery_id) == "succeeded"
            db.session.remove()
    finally:
        if hook is not None:
            hook.close()
        with fresh.app_context():
            db.engine.dispose()
    assert [event["type"] for event in hook.verified] == ["job.progress"]


def _sent_or_held(app, hook: Receiver, sent: int, job_id: str) -> bool:
    return len(hook.ids) >= sent or _timeline(app, job_id, "webhook.held")


def _timeline(app, job_id: str, event_type: str) -> bool:
    from gpujobs.models import JobEvent

    with app.app_context():
        return bool(
            db.session.scalar(
                select(JobEvent.id).where(JobEvent.job_id == uuid.UUID(job_id), JobEvent.type == event_type)
            )
        )


def test_a_closed_circuit_is_read_with_the_claim_and_a_healthy_answer_resets_a_failure_count(
    app, tenant, receiver, app_context
):
    from sqlalchemy import event

    from gpujobs import operations, webhooks
    from gpujobs.models import Job, WebhookEndpoint

    hook = receiver(fail_first=1)
    options = operations.JobOptions(webhook_url=hook.url)
    job = operations.submit(uuid.UUID(tenant["id"]), "echo", 1, {"message": "m"}, options)
    db.session.commit()
    job = db.session.get_one(Job, job.id)
    for event_type in ("job.progress", "job.succeeded", "job.failed"):
        webhooks.record_event(job, event_type)
    db.session.commit()
    deliveries = db.session.scalars(
        select(WebhookDelivery.id)
        .where(WebhookDelivery.job_id == job.id)
        .order_by(WebhookDelivery.event_type)
    ).all()
    circuit_statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, many):
        if "webhook_endpoints" in context.statement:  # as written (``statement`` may be its EXECUTE)
            circuit_statements.append(" ".join(context.statement.split()))

    def breaker() -> WebhookEndpoint:
        key = (uuid.UUID(tenant["id"]), endpoint_of(hook.url))
        return db.session.get_one(WebhookEndpoint, key, populate_existing=True)

    event.listen(db.engine, "before_cursor_execute", count)
    try:
        assert webhooks.deliver(deliveries[0]) == "pending"  # 503: the first failure is counted
        assert breaker().consecutive_failures == 1
        assert webhooks.deliver(deliveries[1]) == "succeeded"  # healthy after a failure: the count resets
        assert breaker().consecutive_failures == 0
        circuit_statements.clear()
        assert webhooks.deliver(deliveries[2]) == "succeeded"  # healthy to a closed circuit
        # The claim, then the breaker's locked read of the answer; no gate read of its own before the send.
        assert len(circuit_statements) == 2, circuit_statements
        assert circuit_statements[0].startswith("UPDATE webhook_deliveries")
        assert circuit_statements[1].endswith("FOR UPDATE")
    finally:
        event.remove(db.engine, "before_cursor_execute", count)


def test_a_claimed_delivery_carries_its_tenants_secret_encrypted_so_no_repr_of_it_shows_the_secret(
    app, tenant, app_context
):
    from gpujobs import operations, webhooks

    options = operations.JobOptions(webhook_url="http://127.0.0.1:9/hook")
    job = operations.submit(uuid.UUID(tenant["id"]), "echo", 1, {"message": "m"}, options)
    webhooks.record_event(job, "job.progress")
    db.session.commit()
    delivery_id = db.session.scalar(select(WebhookDelivery.id).where(WebhookDelivery.job_id == job.id))
    claimed = db.session.execute(webhooks._CLAIM, {"delivery_id": delivery_id}).one()
    db.session.rollback()
    secret = secret_of(app, tenant)
    assert secret not in repr(claimed) and secret not in str(tuple(claimed))
    assert webhooks.signing_secrets(claimed) == [secret]


def _deliveries_with_webhook(app, tenant_id: str, url: str, event_types: tuple[str, ...]) -> list[uuid.UUID]:
    """A job of the tenant with one pending delivery per event type to ``url``, oldest first."""
    from gpujobs import operations, webhooks
    from gpujobs.models import Job

    with app.app_context():
        options = operations.JobOptions(webhook_url=url)
        job_id = operations.submit(uuid.UUID(tenant_id), "echo", 1, {"message": "m"}, options).id
        db.session.commit()
        job = db.session.get_one(Job, job_id)
        for event_type in event_types:
            webhooks.record_event(job, event_type)
        db.session.commit()
        return webhooks.pending(job_id)


def test_a_tenant_flooding_receivers_that_never_answer_takes_only_its_share_of_the_webhook_pool(
    app, tenant, start_worker
):
    """The hostile-tenant probe, small: B's deliveries to receivers that accept and never answer (each
    a receiver of its own, so no circuit opens) stand ahead of A's one delivery in the webhook queue.
    With a share of one send at a time, B's first holds one process; its others are deferred (no try
    spent) and A's goes out while they wait. The sweep sends B's later, each once."""
    from bench.receiver import LoopbackReceiver
    from gpujobs import webhooks
    from gpujobs.sweeps import publish_due_webhooks

    flood = 5
    start_worker(
        concurrency=2,
        name="hooks",
        role="webhooks",
        GPUJOBS_WEBHOOK_TENANT_CONCURRENCY="1",
        GPUJOBS_WEBHOOK_TIMEOUT_SECONDS="10",
    )
    other = make_tenant(app, "other")
    answer = threading.Event()
    b_calls: list[str] = []

    def never_answers(headers: dict[str, str], body: bytes) -> int:
        b_calls.append(headers["webhook-id"])
        answer.wait(30)  # until the test lets B's receivers answer
        return 204

    b_receivers = [LoopbackReceiver(never_answers) for _ in range(flood)]
    a_receiver = Receiver(secret_of(app, tenant))
    try:
        b_jobs = [_deliveries_with_webhook(app, other["id"], r.url, ("job.progress",)) for r in b_receivers]
        a_job = _deliveries_with_webhook(app, tenant["id"], a_receiver.url, ("job.progress",))
        with app.app_context():
            for ids in (*b_jobs, a_job):  # B's flood first in the queue, then A's
                webhooks.publish(uuid.uuid4(), ids)
        wait_for(lambda: a_receiver.verified, timeout=30)
        assert len(b_calls) <= 1  # B held at most its share of the pool while A's went out
        b_ids = [ids[0] for ids in b_jobs]
        with app.app_context():
            rows = db.session.scalars(select(WebhookDelivery).where(WebhookDelivery.id.in_(b_ids))).all()
            waiting = [row for row in rows if row.last_error == webhook_share.DEFERRED_ERROR]
            assert len(waiting) >= flood - 1 and all(row.attempts == 0 for row in waiting)

        answer.set()

        def b_all_sent() -> bool:  # the beat's webhook sweep, by hand
            with app.app_context():
                publish_due_webhooks()
                statuses = db.session.scalars(
                    select(WebhookDelivery.status).where(WebhookDelivery.id.in_(b_ids))
                ).all()
            return all(status == "succeeded" for status in statuses)

        wait_for(b_all_sent, timeout=60, interval=0.5)
        with app.app_context():
            attempts = db.session.scalars(
                select(WebhookDelivery.attempts).where(WebhookDelivery.id.in_(b_ids))
            ).all()
        assert attempts == [1] * flood  # deferrals spent no retry
        assert sorted(b_calls) == sorted(str(delivery_id) for delivery_id in b_ids)  # each sent once
        assert len(a_receiver.verified) == 1
    finally:
        answer.set()
        a_receiver.close()
        for r in b_receivers:
            r.close()


def test_a_webhook_worker_killed_mid_send_loses_no_delivery_and_sends_each_again_with_its_id(
    app, tenant, start_worker
):
    """The webhook worker is one process of threads: SIGKILLed while three sends wait on their receiver,
    all three are lost from it at once. Their claims are leases: once those run out, the sweep publishes
    them again and a fresh worker sends each once more, with the same webhook-id (at least once)."""
    import os
    import signal

    import psutil

    from bench.receiver import LoopbackReceiver
    from gpujobs import webhooks
    from gpujobs.sweeps import publish_due_webhooks

    hooks = start_worker(concurrency=4, name="hooks", role="webhooks", GPUJOBS_WEBHOOK_TENANT_CONCURRENCY="4")
    release = threading.Event()
    calls: list[str] = []

    def first_send_hangs(headers: dict[str, str], body: bytes) -> int:
        webhook_id = headers["webhook-id"]
        calls.append(webhook_id)
        if calls.count(webhook_id) == 1:
            release.wait(30)
        return 204

    receiver = LoopbackReceiver(first_send_hangs)
    try:
        ids = [
            _deliveries_with_webhook(app, tenant["id"], receiver.url, ("job.progress",))[0] for _ in range(3)
        ]
        with app.app_context():
            for delivery_id in ids:
                webhooks.publish(uuid.uuid4(), [delivery_id])
        wait_for(lambda: len(calls) == 3, timeout=30)  # three sends in flight at once
        assert psutil.Process(hooks.process.pid).children() == []  # threads of one process, no pool
        os.killpg(hooks.process.pid, signal.SIGKILL)
        hooks.process.wait()

        with app.app_context():
            rows = db.session.scalars(select(WebhookDelivery).where(WebhookDelivery.id.in_(ids))).all()
            assert {(row.status, row.attempts) for row in rows} == {("pending", 1)}  # claimed, unanswered
            # Their leases (SEND_LEASE_SECONDS) run out: brought forward rather than waited for.
            db.session.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(ids))
                .values(next_attempt_at=db.func.now())
            )
            db.session.commit()
        start_worker(
            concurrency=4, name="hooks-again", role="webhooks", GPUJOBS_WEBHOOK_TENANT_CONCURRENCY="4"
        )

        def all_sent() -> bool:  # the beat's webhook sweep, by hand
            with app.app_context():
                publish_due_webhooks()
                return set(
                    db.session.scalars(select(WebhookDelivery.status).where(WebhookDelivery.id.in_(ids)))
                ) == {"succeeded"}

        wait_for(all_sent, timeout=60, interval=0.5)
        assert sorted(calls) == sorted(str(delivery_id) for delivery_id in ids for _ in range(2))
        with app.app_context():
            attempts = db.session.scalars(select(WebhookDelivery.attempts).where(WebhookDelivery.id.in_(ids)))
            assert list(attempts) == [2, 2, 2]
    finally:
        release.set()
        receiver.close()


THREE_EVENTS = ("instance.created", "instance.running", "job.succeeded")


def _three_events_one_slot(app, tenant, receiver, monkeypatch) -> tuple[Receiver, list[uuid.UUID]]:
    """A receiver and three pending deliveries of one job to it, the tenant's share set to one send."""
    monkeypatch.setitem(app.config, "GPUJOBS_WEBHOOK_TENANT_CONCURRENCY", 1)
    hook = receiver()
    return hook, _deliveries_with_webhook(app, tenant["id"], hook.url, THREE_EVENTS)


def test_a_deferred_delivery_keeps_its_place_before_the_jobs_later_events(
    app, tenant, receiver, app_context, monkeypatch
):
    from gpujobs import webhooks
    from gpujobs.models import JobEvent

    hook, ids = _three_events_one_slot(app, tenant, receiver, monkeypatch)
    tenant_id = uuid.UUID(tenant["id"])
    other_send = uuid.uuid4()
    assert webhook_share.take_slot(tenant_id, other_send)  # the tenant's one slot is in use elsewhere

    def rows() -> list[WebhookDelivery]:
        db.session.expire_all()
        return [db.session.get_one(WebhookDelivery, delivery_id) for delivery_id in ids]

    assert webhooks.deliver_in_order(ids) == ["pending"] * 3
    assert hook.ids == []
    assert [(r.attempts, r.last_error) for r in rows()] == [(0, webhook_share.DEFERRED_ERROR)] * 3
    timeline = db.session.scalars(select(JobEvent.type).where(JobEvent.type == "webhook.deferred")).all()
    assert timeline == ["webhook.deferred"]  # once, for the one whose try was given back

    # The slot is free, but the first event is not due yet: the later ones must not overtake it.
    webhook_share.give_back_slot(tenant_id, other_send)
    assert webhooks.deliver_in_order(ids) == [None, "pending", "pending"]
    assert hook.ids == []

    db.session.execute(update(WebhookDelivery).values(next_attempt_at=db.func.now()))
    db.session.commit()
    assert webhooks.deliver_in_order(ids) == ["succeeded"] * 3
    assert [event["type"] for event in hook.verified] == list(THREE_EVENTS)
    assert [r.attempts for r in rows()] == [1, 1, 1]


def test_a_messages_deliveries_go_out_under_one_slot_of_the_share(
    app, tenant, receiver, app_context, monkeypatch
):
    from gpujobs import webhooks
    from gpujobs.broker import redis_client

    hook, ids = _three_events_one_slot(app, tenant, receiver, monkeypatch)
    key = webhook_share.SHARE_KEY.format(tenant["id"])
    taken: list[str] = []
    take_slot = webhook_share.take_slot

    def counted(tenant_id: uuid.UUID | None, sender: uuid.UUID | str) -> bool:
        taken.append(str(sender))
        assert redis_client().zcard(key) == 0  # nothing held before a take: one sender, one slot
        return take_slot(tenant_id, sender)

    monkeypatch.setattr(webhook_share, "take_slot", counted)
    assert webhooks.deliver_in_order(ids) == ["succeeded"] * 3
    assert [event["type"] for event in hook.verified] == list(THREE_EVENTS)
    assert len(taken) == 1  # taken at the first send, kept for the other two
    assert redis_client().zcard(key) == 0  # and given back after the last

    # A slot taken longer ago than the margin is taken again (renewed) before the next send: the
    # same member, so the message still holds one slot of its tenant's share.
    monkeypatch.setattr(webhook_share, "SHARE_SLOT_MARGIN_SECONDS", 0.0)
    taken.clear()
    renewed: list[int] = []

    def renewing(tenant_id: uuid.UUID | None, sender: uuid.UUID | str) -> bool:
        taken.append(str(sender))
        ok = take_slot(tenant_id, sender)
        renewed.append(redis_client().zcard(key))
        return ok

    monkeypatch.setattr(webhook_share, "take_slot", renewing)
    again = _deliveries_with_webhook(app, tenant["id"], hook.url, THREE_EVENTS)
    assert webhooks.deliver_in_order(again) == ["succeeded"] * 3
    assert len(taken) == 3 and len(set(taken)) == 1
    assert renewed == [1, 1, 1]
    assert redis_client().zcard(key) == 0


def test_a_tenants_share_counts_sends_in_flight_and_a_killed_senders_slot_expires(
    app, tenant, app_context, monkeypatch
):
    import redis

    from gpujobs.broker import redis_client
    from gpujobs.dev.embedded import free_port

    monkeypatch.setitem(app.config, "GPUJOBS_WEBHOOK_TENANT_CONCURRENCY", 2)
    tenant_id, other_tenant = uuid.UUID(tenant["id"]), uuid.uuid4()
    first, second, third = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    key = webhook_share.SHARE_KEY.format(tenant_id)
    assert webhook_share.take_slot(tenant_id, first) and webhook_share.take_slot(tenant_id, second)
    assert not webhook_share.take_slot(tenant_id, third)  # both slots in use
    assert webhook_share.take_slot(other_tenant, third)  # another tenant's share is its own
    assert webhook_share.take_slot(tenant_id, first)  # the same send again keeps its slot

    # A slot outlives its send's total deadline (Redis's clock), and the key goes with its last slot.
    client = redis_client()
    seconds, micros = client.time()
    remaining = client.zscore(key, str(first)) - (seconds + micros / 1e6)
    assert remaining > app.config["GPUJOBS_WEBHOOK_TIMEOUT_SECONDS"]
    assert 0 < client.ttl(key) <= app.config["GPUJOBS_WEBHOOK_TIMEOUT_SECONDS"] + 32

    client.zadd(key, {str(first): 0})  # its sender was killed mid-send long ago: the slot expired
    assert webhook_share.take_slot(tenant_id, third)
    assert client.zcard(key) == 2
    webhook_share.give_back_slot(tenant_id, second)
    webhook_share.give_back_slot(tenant_id, third)
    assert client.zcard(key) == 0

    # Redis away: every send goes (fail open), and giving back does not raise.
    away = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2, socket_timeout=0.2)
    monkeypatch.setitem(app.extensions, "gpujobs_redis", away)
    assert all(webhook_share.take_slot(tenant_id, uuid.uuid4()) for _ in range(3))
    webhook_share.give_back_slot(tenant_id, first)
