"""Fixtures for the dashboard tests: the app over real HTTP, a headless Chromium, sign-in, screenshots.

The browser is Debian's ``/usr/bin/chromium`` driven by Playwright (never a downloaded browser build).
Without it the browser tests skip with a message on a developer's machine, and fail in CI (``CI`` set),
where ``.ci/install-browser`` must have installed it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select, text
from support.ui import csrf_of

CHROMIUM = os.environ.get("GPUJOBS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
VIEWPORT = {"width": 1280, "height": 900}
# Long enough for a worker to start and a page to refresh a few times (the pages refresh every 5 s).
BROWSER_WAIT_MS = 60_000


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI must run the browser tests: .ci/install-browser installs Chromium)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, driven by Playwright."""
    if not Path(CHROMIUM).exists():
        _unavailable(f"no Chromium at {CHROMIUM}: apt-get install chromium (or run .ci/install-browser)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright for Python is not installed (see requirements/dev.txt)")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def new_page(browser: Any, live_server: str) -> Iterator[Callable[[], Any]]:
    """Factory: a page in a fresh browser context (its own cookies), closed after the test."""
    contexts: list[Any] = []

    def make() -> Any:
        context = browser.new_context(base_url=live_server, viewport=VIEWPORT)
        context.set_default_timeout(BROWSER_WAIT_MS)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def signed_in(new_page: Callable[[], Any]) -> Callable[[dict[str, str]], Any]:
    """Factory: a page signed in to the dashboard with a tenant's API key, on the overview."""

    def sign_in(tenant: dict[str, str]) -> Any:
        page = new_page()
        page.goto("/ui/")
        page.fill("#api_key", tenant["key"])
        page.click("button:has-text('Sign in')")
        page.wait_for_selector("h1:has-text('Overview')")
        return page

    return sign_in


@pytest.fixture(scope="session")
def artifacts_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: ``$GPUJOBS_TEST_ARTIFACTS/ui``, else ``artifacts/ui`` in the run's temp dir."""
    root = os.environ.get("GPUJOBS_TEST_ARTIFACTS")
    base = Path(root) if root else tmp_path_factory.getbasetemp() / "artifacts"
    path = base / "ui"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def screenshot(artifacts_dir: Path) -> Callable[[Any, str], Path]:
    """Save a full-page PNG of ``page`` as ``<name>.png`` under the artifacts directory."""

    def save(page: Any, name: str) -> Path:
        path = artifacts_dir / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        assert path.stat().st_size > 0
        return path

    return save


# Jobs spread over time with a realistic mix: mostly succeeded, some failed, a few of each other status.
# Finished ones are inserted running, then finished by an UPDATE, so the counter triggers (job_counters,
# job_hourly) see the same insert-then-transition they see in production.
OUTCOMES = (
    "ARRAY['succeeded', 'succeeded', 'succeeded', 'succeeded', 'succeeded', 'succeeded', 'failed', "
    "'cancelled', 'queued', 'running', 'retrying', 'succeeded']"
)
INSERT_JOBS = text(f"""
    INSERT INTO jobs (id, tenant_id, definition_key, definition_version, params, priority, status, attempt,
                      max_attempts, timeout_seconds, cancel_requested, dead_lettered, created_at, queued_at,
                      started_at, finished_at)
    SELECT gen_random_uuid(), :tenant_id,
           (ARRAY['echo', 'compute.math', 'process.data', 'gpu.instance.create'])[1 + n % 4], 1,
           jsonb_build_object('n', n, 'outcome', o.status), n % 4,
           CASE WHEN o.status IN ('succeeded', 'failed', 'cancelled') THEN 'running' ELSE o.status END,
           CASE WHEN o.status = 'queued' THEN 0 ELSE 1 END, 3, 1800, false, false, t.at, t.at,
           CASE WHEN o.status <> 'queued' THEN t.at + interval '1 second' END,
           CASE WHEN o.status IN ('succeeded', 'failed', 'cancelled') THEN t.at + interval '4 seconds' END
    FROM generate_series(:first, :last) AS n
    CROSS JOIN LATERAL (
        SELECT now() - make_interval(secs => (:spread_seconds * n / :count)::double precision) AS at
    ) AS t
    CROSS JOIN LATERAL (SELECT ({OUTCOMES})[1 + (n * 7) % 12] AS status) AS o
""")
FINISH_JOBS = text("""
    UPDATE jobs SET status = params->>'outcome'
    WHERE tenant_id = :tenant_id AND status = 'running'
      AND params->>'outcome' IN ('succeeded', 'failed', 'cancelled')
""")
# One transaction per batch: a single huge transaction would pile thousands of versions onto each
# counter row, which PostgreSQL cannot prune until it commits.
INSERT_BATCH_SIZE = 2_000


@pytest.fixture
def insert_jobs(app: Flask) -> Callable[..., None]:
    """Factory: insert ``count`` jobs for a tenant straight into the table, in batches, then ANALYZE."""
    from gpujobs.extensions import db

    def insert(tenant_id: str, count: int, spread_hours: float = 24.0) -> None:
        tenant = uuid.UUID(tenant_id)
        with app.app_context():
            for first in range(1, count + 1, INSERT_BATCH_SIZE):
                last = min(first + INSERT_BATCH_SIZE - 1, count)
                params = {"tenant_id": tenant, "first": first, "last": last, "count": count}
                db.session.execute(INSERT_JOBS, {**params, "spread_seconds": spread_hours * 3600})
                db.session.execute(FINISH_JOBS, {"tenant_id": tenant})
                db.session.commit()
            db.session.execute(text("ANALYZE jobs"))
            db.session.commit()

    return insert


@pytest.fixture
def ui_client(app: Flask) -> Callable[[dict[str, str]], Any]:
    """Factory: a test client signed in with a tenant's API key; ``client.csrf`` is its form token."""

    def sign_in(tenant: dict[str, str]) -> Any:
        client = app.test_client()
        token = csrf_of(client.get("/ui/signin").get_data(as_text=True))
        response = client.post("/ui/signin", data={"api_key": tenant["key"], "csrf_token": token})
        assert response.status_code == 302, response.get_data(as_text=True)
        client.csrf = csrf_of(client.get("/ui/").get_data(as_text=True))
        return client

    return sign_in


@pytest.fixture
def submit_job(app: Flask) -> Callable[..., uuid.UUID]:
    """Factory: submit a job through ``operations.submit`` (committed and published); returns its id."""
    from gpujobs import operations

    def submit(
        tenant: dict[str, str], key: str, params: dict[str, Any] | None = None, **options: Any
    ) -> uuid.UUID:
        with app.app_context():
            job = operations.submit(
                uuid.UUID(tenant["id"]), key, 1, params or {}, operations.JobOptions(**options)
            )
            job_id = job.id
        return job_id

    return submit


@pytest.fixture
def dead_letter(
    app: Flask, submit_job: Callable[..., uuid.UUID]
) -> Callable[..., tuple[uuid.UUID, uuid.UUID]]:
    """Factory: a job that failed for good after one attempt; returns (job id, dead letter id)."""
    from gpujobs import jobs
    from gpujobs.extensions import db
    from gpujobs.models import DeadLetter
    from gpujobs.registry import get_definition

    def make(
        tenant: dict[str, str], key: str = "echo", params: dict[str, Any] | None = None
    ) -> tuple[uuid.UUID, uuid.UUID]:
        job_id = submit_job(tenant, key, params, max_attempts=1)
        with app.app_context():
            claim = jobs.claim(job_id, get_definition(key, 1), lease_seconds=60)
            assert claim is not None
            jobs.fail_attempt(
                job_id, claim.attempt, "boom: the receiver said no", retryable=False, retry_delay_seconds=0
            )
            db.session.commit()
            letter_id = db.session.scalar(select(DeadLetter.id).where(DeadLetter.job_id == job_id))
        return job_id, letter_id

    return make
