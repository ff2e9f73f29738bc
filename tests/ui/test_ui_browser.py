"""The dashboard in a real headless Chromium: sign in, watch, cancel, redrive, redeliver, tenant isolation.

Every main page is saved as a screenshot under the run's artifacts directory (see ``conftest``).
"""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import insert, select
from support.rows import job_row
from support.tenants import make_tenant

from gpujobs.extensions import db
from gpujobs.models import DeadLetter, Instance, Job, WebhookDelivery

pytestmark = [pytest.mark.browser, pytest.mark.slow]

WATCH_TIMEOUT_MS = 60_000


def confirm(page, row_or_page, action: str) -> None:
    """Open an action's confirmation and confirm it (the two clicks an operator makes)."""
    details = row_or_page.locator(f"details[data-action='{action}']")
    details.locator("summary").click()
    details.locator("button[type=submit]").click()


def test_an_operator_signs_in_with_an_api_key_and_sees_the_overview(
    app, tenant, signed_in, insert_jobs, dead_letter, screenshot
):
    insert_jobs(tenant["id"], 600)
    dead_letter(tenant)
    page = signed_in(tenant)
    assert tenant["key"] not in page.url
    (cookie,) = page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax" and cookie["path"] == "/ui"
    assert tenant["key"] not in cookie["value"]
    assert page.locator(".count[data-status='failed'] .number").inner_text() == "51"
    assert page.locator("svg g").count() == 24 and page.locator("svg rect.bar.succeeded").count() >= 20
    assert (
        page.locator("td[data-limit='runningJobs']").count() == 1
        and page.locator("td[data-queue]").count() == 0
    )
    screenshot(page, "overview")
    page.click("button:has-text('Sign out')")
    page.wait_for_selector(".flash:has-text('Signed out.')")
    page.goto("/ui/jobs")
    assert "/ui/signin" in page.url


def test_an_operator_watches_a_job_go_from_queued_to_succeeded_and_opens_its_timeline(
    app, tenant, signed_in, submit_job, start_worker, screenshot
):
    job_id = submit_job(tenant, "test.sleep", {"seconds": 1.0})
    page = signed_in(tenant)
    page.click("nav >> text=Jobs")
    row = page.locator(f"tr[data-job-id='{job_id}']")
    assert row.locator(".status").inner_text() == "queued"
    screenshot(page, "jobs")
    row.locator("a").click()
    assert page.locator("#job-status .status").inner_text() == "queued"
    start_worker()
    # No reload here: the page refreshes itself until the job is done.
    page.wait_for_selector("#job-status .status-succeeded", timeout=WATCH_TIMEOUT_MS)
    types = page.locator("#timeline li").evaluate_all("items => items.map(i => i.dataset.type)")
    assert types[0] == "job.queued" and "job.started" in types and types[-1] == "job.succeeded"
    assert page.locator("table.attempts tbody tr").count() == 1
    assert '"slept": 1.0' in page.locator("#result").inner_text()
    screenshot(page, "job")


def test_a_gpu_job_is_watched_from_queued_to_succeeded_on_the_simulator(
    app, tenant, signed_in, submit_job, start_worker, screenshot
):
    from gpujobs.novita.simulator import run_simulator

    with run_simulator(api_key="sk_ui", phase_seconds=0.2) as sim:
        params = {"productName": "RTX 4090 24GB", "region": "CN-HK-01", "imageUrl": "ubuntu:22.04"}
        job_id = submit_job(tenant, "gpu.instance.create", params)
        page = signed_in(tenant)
        page.goto(f"/ui/jobs/{job_id}")
        assert page.locator("#job-status .status").inner_text() == "queued"
        start_worker(
            NOVITA_API_KEY="sk_ui", NOVITA_BASE_URL=sim.base_url, GPUJOBS_MONITOR_INTERVAL_SECONDS="0.3"
        )
        page.wait_for_selector("#job-status .status-succeeded", timeout=WATCH_TIMEOUT_MS)
        assert page.locator("#timeline li").count() >= 3
        screenshot(page, "gpu-job")
        page.click("nav >> text=Instances")
        assert page.locator("table.instances tbody tr").count() == 1
        assert "CN-HK-01" in page.locator("table.instances").inner_text()
        screenshot(page, "gpu-instances")


def test_an_operator_cancels_a_queued_job_after_confirming(app, tenant, signed_in, submit_job):
    job_id = submit_job(tenant, "test.sleep", {"seconds": 5})
    page = signed_in(tenant)
    page.goto(f"/ui/jobs/{job_id}")
    details = page.locator("details[data-action='cancel']")
    details.locator("summary").click()
    assert job_row(app, job_id).status == "queued"  # opening the confirmation does nothing yet
    details.locator("button[type=submit]").click()
    page.wait_for_selector(".flash:has-text('Job cancelled.')")
    assert page.locator("#job-status .status").inner_text() == "cancelled"
    assert job_row(app, job_id).status == "cancelled"
    assert page.locator("details[data-action='cancel']").count() == 0


def test_an_operator_redrives_a_dead_letter_with_a_new_max_attempts(
    app, tenant, signed_in, dead_letter, screenshot
):
    job_id, letter_id = dead_letter(tenant, "echo", {"message": "again", "data": {"token": "tok-secret"}})
    page = signed_in(tenant)
    page.click("nav >> text=Dead letters")
    row = page.locator(f"tr[data-letter-id='{letter_id}']")
    assert "boom: the receiver said no" in row.inner_text() and "tok-secret" not in page.content()
    screenshot(page, "dlq")
    row.locator("details[data-action='redrive'] summary").click()
    row.locator("input[name=max_attempts]").fill("5")
    row.locator("details[data-action='redrive'] button[type=submit]").click()
    page.wait_for_selector(".flash:has-text('Job redriven')")
    assert page.url.endswith(f"/ui/jobs/{job_id}")
    job = job_row(app, job_id)
    assert job.status == "queued" and job.max_attempts == job.attempt + 5
    # a context of its own: the test client's requests must not run inside it
    with app.app_context():
        assert db.session.get(DeadLetter, letter_id).redriven_at is not None
    page.click("nav >> text=Dead letters")
    assert "is empty" in page.locator("main").inner_text()


def test_an_operator_redelivers_a_failed_webhook(app, tenant, signed_in, submit_job):
    job_id = submit_job(tenant, "echo", webhook_url="http://127.0.0.1:9/hook")
    delivery_id = uuid.uuid4()
    # a context of its own: the test client's requests must not run inside it
    with app.app_context():
        db.session.execute(
            insert(WebhookDelivery).values(
                id=delivery_id, tenant_id=uuid.UUID(tenant["id"]), job_id=job_id, job_attempt=1,
                event_type="job.succeeded", url="http://127.0.0.1:9/hook", payload={}, status="failed",
                attempts=8, last_status_code=503, last_error="HTTP 503",
            )
        )  # fmt: skip
        db.session.commit()
    page = signed_in(tenant)
    page.goto(f"/ui/jobs/{job_id}")
    row = page.locator(f"tr[data-delivery-id='{delivery_id}']")
    assert row.locator(".status-code").inner_text() == "503"
    confirm(page, row, "redeliver")
    page.wait_for_selector(".flash:has-text('Webhook queued for redelivery')")
    with app.app_context():
        assert db.session.get(WebhookDelivery, delivery_id).status == "pending"


def add_instance(app, tenant: dict[str, str], name: str, **values) -> uuid.UUID:
    instance_id = uuid.uuid4()
    with app.app_context():
        db.session.execute(
            insert(Instance).values(
                id=instance_id, tenant_id=uuid.UUID(tenant["id"]), name=name, **{"endpoints": {}, **values}
            )
        )
        db.session.commit()
    return instance_id


def test_the_instances_page_shows_price_region_product_endpoints_and_marks_lost_and_leaked_ones(
    app, tenant, signed_in, screenshot
):
    add_instance(
        app, tenant, "gpujobs-running", status="running", novita_status="running", region="CN-HK-01",
        product_name="RTX 4090 24GB", price_per_hour_units=35_000, novita_id="nv-1",
        endpoints={"ports": [{"port": 8888, "type": "http", "endpoint": "https://nv-1-8888.example.net"}],
                   "ssh": "ssh -p 48002 root@proxy.example.net"},
    )  # fmt: skip
    lost = add_instance(app, tenant, "gpujobs-lost", status="lost", region="US-CA-06", error="Novita lost it")
    leaked = add_instance(
        app, tenant, "gpujobs-leaked", status="deleted", novita_status="running", novita_id="nv-3"
    )
    page = signed_in(tenant)
    page.click("nav >> text=Instances")
    table = page.locator("table.instances").inner_text()
    assert "$0.35/h" in table and "RTX 4090 24GB" in table
    assert "8888/http → https://nv-1-8888.example.net" in table and "ssh: ssh -p 48002" in table
    assert page.locator(f"tr[data-instance-id='{lost}'] [data-flag]").inner_text() == "⚠ lost"
    assert page.locator(f"tr[data-instance-id='{leaked}'] [data-flag]").inner_text() == "⚠ leaked"
    assert page.locator("tr.flagged").count() == 2
    screenshot(page, "instances")


def test_an_operator_stops_an_instance_through_a_job(app, tenant, signed_in):
    instance_id = add_instance(app, tenant, "gpujobs-stop-me", status="running", novita_status="running")
    page = signed_in(tenant)
    page.click("nav >> text=Instances")
    row = page.locator(f"tr[data-instance-id='{instance_id}']")
    assert row.locator("details[data-action='start']").count() == 0  # only what its status allows
    confirm(page, row, "stop")
    page.wait_for_selector(".flash:has-text('Stop requested')")
    # a context of its own: the test client's requests must not run inside it
    with app.app_context():
        job = db.session.scalar(select(Job).where(Job.definition_key == "gpu.instance.stop"))
        assert job.params["instanceId"] == str(instance_id)
        assert db.session.get(Instance, instance_id).status == "stopping"


def test_tenant_b_sees_none_of_tenant_a_s_jobs(app, tenant, signed_in, submit_job, dead_letter, insert_jobs):
    insert_jobs(tenant["id"], 50)
    job_id = submit_job(tenant, "echo", {"message": "tenant A only"})
    dead_letter(tenant)
    add_instance(app, tenant, "gj-tenant-a", status="running", region="CN-HK-01")
    page = signed_in(make_tenant(app, "globex"))
    assert "globex" in page.locator(".tenant").inner_text()
    counts = page.locator(".count .number").all_inner_texts()
    assert counts and set(counts) == {"0"}
    page.click("nav >> text=Jobs")
    assert page.locator("table.jobs").count() == 0 and "No jobs" in page.locator("main").inner_text()
    page.click("nav >> text=Dead letters")
    assert "is empty" in page.locator("main").inner_text()
    page.click("nav >> text=Instances")
    assert "No instances" in page.locator("main").inner_text()
    response = page.goto(f"/ui/jobs/{job_id}")
    assert response.status == 404 and "tenant A only" not in page.content()
