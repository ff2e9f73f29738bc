"""Tenant-owned Novita resources: a template or registry auth is usable only when granted to the caller.

Cross-tenant probes: tenant B naming tenant A's granted template or auth gets the very answer a made-up
id gets, and nothing reaches Novita (the simulator's ledger stays empty, even with a worker running).
"""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from sqlalchemy import func, select
from support.gpu import REQUEST, wait_for_job
from support.rows import job_row
from support.tenants import grant, make_tenant

from gpujobs import runner
from gpujobs.extensions import db
from gpujobs.models import Job
from gpujobs.novita.sim import seed
from gpujobs.provisioning import create

TEMPLATE = {key: value for key, value in REQUEST.items() if key != "imageUrl"}
UNKNOWN = "no-such-id-7f3a"


def probe(client, tenant, field: str, resource_id: str):
    """POST /v1/instances naming ``resource_id`` in ``field``; the answer with the id blanked out."""
    body = (
        (TEMPLATE | {"templateId": resource_id}) if field == "templateId" else REQUEST | {field: resource_id}
    )
    response = client.post("/v1/instances", json=body, headers=tenant["headers"])
    return response.status_code, response.get_data(as_text=True).replace(f"'{resource_id}'", "'<id>'")


@pytest.mark.parametrize(
    ("field", "kind", "granted_id"),
    [
        ("templateId", "template", seed.PRIVATE_TEMPLATE_ID),
        ("imageAuthId", "registry_auth", seed.REGISTRY_AUTH_ID),
    ],
)
def test_another_tenants_granted_resource_answers_exactly_like_a_made_up_id_and_reaches_no_novita(
    app, client, tenant, sim, gpu_worker, field, kind, granted_id
):
    grant(app, tenant, kind, granted_id)
    other = make_tenant(app, "intruder")
    gpu_worker()
    status, answer = probe(client, other, field, granted_id)
    assert (status, answer) == probe(client, other, field, UNKNOWN)
    assert status == 422
    assert f'"field":"{field}"' in answer.replace(" ", "")
    with app.app_context():
        assert db.session.scalar(select(func.count()).select_from(Job)) == 0
    # The same request through POST /v1/jobs is refused alike.
    params = (
        (TEMPLATE | {"templateId": granted_id}) if field == "templateId" else REQUEST | {field: granted_id}
    )
    job = {"definitionKey": "gpu.instance.create", "params": params}
    refused = client.post("/v1/jobs", json=job, headers=other["headers"])
    assert refused.status_code == 422 and refused.json["errors"][0]["field"] == f"params.{field}"
    assert sim.ledger() == []


def test_a_granted_template_and_registry_auth_are_accepted_and_listed_for_their_tenant_only(
    app, client, tenant
):
    grant(app, tenant, "template", seed.PRIVATE_TEMPLATE_ID)
    grant(app, tenant, "registry_auth", seed.REGISTRY_AUTH_ID)
    other = make_tenant(app, "other")
    assert probe(client, tenant, "templateId", seed.PRIVATE_TEMPLATE_ID)[0] == 202
    assert probe(client, tenant, "imageAuthId", seed.REGISTRY_AUTH_ID)[0] == 202
    templates = client.get("/v1/templates", headers=tenant["headers"]).json["items"]
    auths = client.get("/v1/registry-auths", headers=tenant["headers"]).json["items"]
    assert [item["id"] for item in templates] == [seed.PRIVATE_TEMPLATE_ID]
    assert [item["id"] for item in auths] == [seed.REGISTRY_AUTH_ID]
    assert client.get("/v1/templates", headers=other["headers"]).json == {"items": []}
    assert client.get("/v1/registry-auths", headers=other["headers"]).json == {"items": []}


def test_a_grant_revoked_while_the_job_waited_fails_it_for_good_before_any_novita_call(
    app, tenant, sim, novita_config
):
    grant(app, tenant, "template", seed.PRIVATE_TEMPLATE_ID)
    with app.app_context():
        job, _ = create.submit(uuid.UUID(tenant["id"]), TEMPLATE | {"templateId": seed.PRIVATE_TEMPLATE_ID})
        job_id = job.id
    with app.app_context():
        from gpujobs.grants import Kind, revoke

        assert revoke(tenant["name"], Kind.TEMPLATE, seed.PRIVATE_TEMPLATE_ID)
    with app.app_context():
        assert runner.run_job(job_id) == "failed"
    failed = job_row(app, job_id)
    assert failed.error == f"no template '{seed.PRIVATE_TEMPLATE_ID}' was granted to this tenant"
    assert failed.attempt == 1  # permanent: no retry
    assert sim.ledger() == []


def test_a_revoked_grant_stops_a_real_worker_too(app, client, tenant, sim, gpu_worker):
    grant(app, tenant, "template", seed.PRIVATE_TEMPLATE_ID)
    response = client.post(
        "/v1/instances", json=TEMPLATE | {"templateId": seed.PRIVATE_TEMPLATE_ID}, headers=tenant["headers"]
    )
    assert response.status_code == 202
    with app.app_context():
        from gpujobs.grants import Kind, revoke

        revoke(tenant["name"], Kind.TEMPLATE, seed.PRIVATE_TEMPLATE_ID)
    gpu_worker()
    failed = wait_for_job(app, response.json["jobId"], "failed")
    assert "was granted to this tenant" in failed.error
    assert sim.ledger() == []


@pytest.mark.slow  # CLI subprocesses
def test_the_operator_grants_only_what_the_novita_account_holds(app, tenant, process_env, novita_env):
    """A mistyped id was granted silently and showed only when the tenant's job failed at Novita."""

    def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "gpujobs", *args]
        environment = {**process_env, **novita_env, **env}
        return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=60)

    name = tenant["name"]
    for group, real in (("templates", seed.PRIVATE_TEMPLATE_ID), ("registry-auths", seed.REGISTRY_AUTH_ID)):
        granted = cli(group, "grant", "--tenant", name, real)
        assert granted.returncode == 0 and granted.stderr == "", granted.stderr
        typo = cli(group, "grant", "--tenant", name, UNKNOWN)
        assert typo.returncode == 1 and "Novita has no" in typo.stderr and "--unchecked" in typo.stderr
    assert cli("instances", "grant", "--tenant", name, UNKNOWN).returncode == 1
    assert cli("instances", "grant", "--tenant", name, UNKNOWN, "--unchecked").returncode == 0
    away = cli("templates", "grant", "--tenant", name, "4242", NOVITA_BASE_URL="http://127.0.0.1:9/v1")
    assert away.returncode == 0 and "granted unchecked: Novita could not be asked" in away.stderr
    shown = cli("tenants", "show", "--tenant", name).stdout
    assert f'"{UNKNOWN}"' in shown and "4242" in shown and shown.count(UNKNOWN) == 1  # the instance only
