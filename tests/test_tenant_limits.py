"""Per-tenant limits against real servers: running jobs (a real worker), priority, schedules, the API view.

Defaults come from the environment (``GPUJOBS_TENANT_MAX_*``), per-tenant values from ``tenants
set-limits``; ``GET /v1/limits`` and ``tenants show`` report both with the current use.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from decimal import Decimal

import pytest
from flask import Flask
from sqlalchemy import select
from support.polling import wait_for
from support.rows import job_row
from support.tenants import make_tenant, set_limits

from gpujobs import operations, schedules
from gpujobs.api.limits import TenantLimits
from gpujobs.exceptions import LimitReached
from gpujobs.extensions import db
from gpujobs.jobs import PRIORITY_LEVELS
from gpujobs.models import Tenant


def submit(app: Flask, tenant: dict[str, str], seconds: float) -> uuid.UUID:
    with app.app_context():
        return operations.submit(uuid.UUID(tenant["id"]), "test.sleep", 1, {"seconds": seconds}).id


def post_schedule(client, tenant, name: str, **body):
    body = {"name": name, "cron": "0 3 * * *", "definitionKey": "echo", "params": {"message": "m"}} | body
    return client.post("/v1/schedules", json=body, headers=tenant["headers"])


def test_a_tenant_at_its_running_jobs_limit_waits_while_another_tenants_job_runs(app, tenant, start_worker):
    """Tenant A (limit 1) queues two slow jobs; B's job is claimed and done while A's second one waits."""
    from gpujobs.sweeps import dispatch_due

    set_limits(app, tenant, max_running_jobs=1)
    other = make_tenant(app, "other")
    # A's first job runs long enough for B's to be claimed and finish meanwhile on a loaded machine.
    first, second = submit(app, tenant, 10.0), submit(app, tenant, 0.1)
    start_worker(concurrency=3, name="limits")

    def a_started() -> bool:
        with app.app_context():
            dispatch_due()  # beat's tick, should the first message have gone to a worker of an earlier test
        return job_row(app, first).status == "running"

    wait_for(a_started, timeout=60, interval=0.2)
    theirs = submit(app, other, 0.1)

    def b_done() -> bool:
        with app.app_context():
            dispatch_due()  # beat's tick: offers the waiting job again
        assert job_row(app, second).status == "queued" or job_row(app, first).status == "succeeded"
        return job_row(app, theirs).status == "succeeded"

    wait_for(b_done, timeout=30, interval=0.2)
    assert job_row(app, first).status == "running" and job_row(app, second).status == "queued"

    def a_done() -> bool:
        with app.app_context():
            dispatch_due()
        return job_row(app, second).status == "succeeded"

    wait_for(a_done, timeout=60, interval=0.3)
    assert job_row(app, second).started_at >= job_row(app, first).finished_at


def test_a_priority_above_the_tenants_limit_answers_422_naming_priority(app, client, tenant):
    refused = client.post(
        "/v1/jobs",
        json={"definitionKey": "echo", "params": {"message": "x"}, "priority": "critical"},
        headers=tenant["headers"],
    )
    assert refused.status_code == 422 and [e["field"] for e in refused.json["errors"]] == ["priority"]
    assert "up to high" in refused.json["errors"][0]["message"]
    assert (
        client.post(
            "/v1/jobs",
            json={"definitionKey": "echo", "params": {"message": "x"}, "priority": 8},
            headers=tenant["headers"],
        ).status_code
        == 202
    )
    assert post_schedule(client, tenant, "urgent", priority=10).json["errors"][0]["field"] == "priority"
    set_limits(app, tenant, max_priority=PRIORITY_LEVELS["low"])
    refused = client.post(
        "/v1/jobs", json={"definitionKey": "echo", "params": {"message": "x"}}, headers=tenant["headers"]
    )
    assert refused.status_code == 422 and refused.json["errors"][0]["field"] == "priority"


def test_one_schedule_over_the_limit_answers_409_with_the_limit_and_its_use(app, client, tenant):
    set_limits(app, tenant, max_schedules=2)
    other = make_tenant(app, "other")
    assert [post_schedule(client, tenant, f"s{i}").status_code for i in range(2)] == [201, 201]
    refused = post_schedule(client, tenant, "s2")
    assert refused.status_code == 409 and refused.content_type == "application/problem+json"
    assert (refused.json["limitName"], refused.json["limit"], refused.json["used"]) == ("schedules", 2, 2)
    assert post_schedule(client, other, "s0").status_code == 201  # another tenant's count is its own
    with app.app_context(), pytest.raises(LimitReached, match="schedules limit is reached: 2 of 2"):
        schedules.create(
            uuid.UUID(tenant["id"]),
            name="direct",
            cron="@daily",
            definition_key="echo",
            definition_version=1,
            params={"message": "m"},
        )


def test_get_v1_limits_shows_each_limit_with_its_use(app, client, tenant):
    body = client.get("/v1/limits", headers=tenant["headers"]).json
    TenantLimits.model_validate(body)
    assert body == {
        "runningJobs": {"limit": None, "used": 0},
        "dispatchWindow": {"limit": 50, "used": 0},
        "schedules": {"limit": 20, "used": 0},
        "priority": {"limit": "high"},
        "instances": {"limit": 10, "used": 0},
        "usdPerHour": {"limit": None, "used": 0.0},
    }
    set_limits(app, tenant, max_running_jobs=4, max_schedules=3, max_priority=PRIORITY_LEVELS["critical"])
    post_schedule(client, tenant, "one")
    body = client.get("/v1/limits", headers=tenant["headers"]).json
    assert body == {
        "runningJobs": {"limit": 4, "used": 0},
        "dispatchWindow": {"limit": 4, "used": 0},
        "schedules": {"limit": 3, "used": 1},
        "priority": {"limit": "critical"},
        "instances": {"limit": 10, "used": 0},
        "usdPerHour": {"limit": None, "used": 0.0},
    }
    spec = client.get("/openapi.json").json
    assert {"/v1/limits", "/v1/templates", "/v1/registry-auths"} <= set(spec["paths"])


def test_the_operators_defaults_come_from_the_environment(service_env):
    from gpujobs.config import ConfigError, load_config

    config = load_config({**service_env, "GPUJOBS_TENANT_MAX_RUNNING_JOBS": "5"})
    assert (config["GPUJOBS_TENANT_MAX_RUNNING_JOBS"], config["GPUJOBS_TENANT_MAX_PRIORITY"]) == (5, "high")
    assert config["GPUJOBS_TENANT_MAX_SCHEDULES"] == 20
    with pytest.raises(ConfigError, match="GPUJOBS_TENANT_MAX_PRIORITY"):
        load_config({**service_env, "GPUJOBS_TENANT_MAX_PRIORITY": "urgent"})
    # GPU quotas: 10 instances unless set (empty: none); USD per hour none unless set
    assert (config["GPUJOBS_TENANT_MAX_INSTANCES"], config["GPUJOBS_TENANT_MAX_USD_PER_HOUR"]) == (10, None)
    quotas = {"GPUJOBS_TENANT_MAX_INSTANCES": "", "GPUJOBS_TENANT_MAX_USD_PER_HOUR": "12.50"}
    config = load_config({**service_env, **quotas})
    assert (config["GPUJOBS_TENANT_MAX_INSTANCES"], config["GPUJOBS_TENANT_MAX_USD_PER_HOUR"]) == (
        None,
        Decimal("12.50"),
    )
    for usd in ("0", "-3", "lots", "inf"):
        with pytest.raises(ConfigError, match="GPUJOBS_TENANT_MAX_USD_PER_HOUR"):
            load_config({**service_env, "GPUJOBS_TENANT_MAX_USD_PER_HOUR": usd})


def _cli(process_env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpujobs", *args], env=process_env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.slow  # CLI subprocesses
def test_the_cli_sets_limits_grants_resources_and_shows_the_tenant(app, client, tenant, process_env):
    done = _cli(
        process_env,
        "tenants",
        "set-limits",
        "--tenant",
        "acme",
        "--max-running-jobs",
        "3",
        "--max-priority",
        "low",
        "--max-instances",
        "2",
        "--max-usd-per-hour",
        "12.5",
    )
    assert done.returncode == 0, done.stderr
    assert _cli(process_env, "templates", "grant", "--tenant", "acme", "tpl-1").returncode == 0
    assert _cli(process_env, "registry-auths", "grant", "--tenant", "acme", "auth-1").returncode == 0
    shown = json.loads(_cli(process_env, "tenants", "show", "--tenant", "acme").stdout)
    assert shown["limits"]["runningJobs"] == {"limit": 3, "used": 0}
    assert shown["limits"]["priority"] == {"limit": "low"}
    assert shown["limits"]["instances"] == {"limit": 2, "used": 0}
    assert shown["limits"]["usdPerHour"] == {"limit": 12.5, "used": 0.0}
    assert shown["ownLimits"] == {
        "max_running_jobs": 3,
        "max_priority": "low",
        "max_schedules": None,
        "max_instances": 2,
        "max_usd_per_hour": 12.5,
    }
    assert (shown["templates"], shown["registryAuths"]) == (["tpl-1"], ["auth-1"])
    assert client.get("/v1/limits", headers=tenant["headers"]).json["runningJobs"]["limit"] == 3
    reset = _cli(process_env, "tenants", "set-limits", "--tenant", "acme", "--max-running-jobs", "default")
    assert reset.returncode == 0, reset.stderr
    assert client.get("/v1/limits", headers=tenant["headers"]).json["runningJobs"]["limit"] is None
    assert _cli(process_env, "templates", "revoke", "--tenant", "acme", "tpl-1").returncode == 0
    again = _cli(process_env, "templates", "revoke", "--tenant", "acme", "tpl-1")
    assert again.returncode == 1 and "no grant" in again.stderr
    assert client.get("/v1/templates", headers=tenant["headers"]).json == {"items": []}
    bad = _cli(process_env, "tenants", "set-limits", "--tenant", "acme", "--max-schedules", "0")
    assert bad.returncode == 2
    for usd in ("0", "-1", "ten", "nan"):
        bad = _cli(process_env, "tenants", "set-limits", "--tenant", "acme", "--max-usd-per-hour", usd)
        assert bad.returncode == 2 and "positive amount of USD" in bad.stderr, usd


@pytest.mark.slow  # CLI subprocesses
def test_an_operator_command_naming_a_tenant_that_does_not_exist_creates_none(app, tenant, process_env):
    """A typo (``acmee``) must not create a tenant and give it limits or grants nobody meant."""
    for command in (
        ("tenants", "set-limits", "--tenant", "acmee", "--max-running-jobs", "3"),
        ("templates", "grant", "--tenant", "acmee", "tpl-1"),
        ("instances", "grant", "--tenant", "acmee", "inst-1"),
        ("templates", "revoke", "--tenant", "acmee", "tpl-1"),
        ("tenants", "show", "--tenant", "acmee"),
        ("keys", "list", "--tenant", "acmee"),
        ("webhooks", "secret", "--tenant", "acmee", "--rotate"),
        ("jobs", "list", "--tenant", "acmee"),  # nothing to list would read as "acmee has no jobs"
    ):
        done = _cli(process_env, *command)
        assert done.returncode == 1 and "Traceback" not in done.stderr, (command, done.stderr)
        assert "no tenant 'acmee'" in done.stderr and "keys create --tenant acmee" in done.stderr, command
    with app.app_context():
        assert db.session.scalar(select(Tenant.id).where(Tenant.name == "acmee")) is None
    bad_status = _cli(process_env, "jobs", "list", "--status", "suceeded")
    assert bad_status.returncode == 2 and "'suceeded' is not one of" in bad_status.stderr
