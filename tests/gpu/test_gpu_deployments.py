"""Deployments on one Novita account: each names its instances with its own stored prefix, and each
reconcile sweep deletes only its own leaks (a staging stack given production's key, say)."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator

import pytest
from flask import Flask
from flask_migrate import downgrade, upgrade
from sqlalchemy import text
from support.databases import app_on, new_database
from support.gpu import create_at_novita, novita_name
from support.tenants import make_tenant

from gpujobs.deployment import stored_instance_prefix
from gpujobs.extensions import db
from gpujobs.models import Instance
from gpujobs.provisioning.reconcile import reconcile
from gpujobs.states import InstanceStatus

PREFIX_PATTERN = r"gpujobs-[0-9a-f]{8}-"


@pytest.fixture
def sim_options():
    """Instant lifecycles, and deleted instances vanish from Novita's list at once."""
    return {"phase_seconds": 0, "removed_grace_seconds": 0}


@pytest.fixture
def staging(servers, novita_config) -> Iterator[Flask]:
    """A second deployment: its own database, migrated from empty, on the same Novita account."""
    other = app_on(
        new_database(servers, "staging_deployment"),
        NOVITA_API_KEY=novita_config["NOVITA_API_KEY"],
        NOVITA_BASE_URL=novita_config["NOVITA_BASE_URL"],
        GPUJOBS_LEAK_GRACE_SECONDS=0.0,
    )
    with other.app_context():
        upgrade()
    yield other
    with other.app_context():
        db.engine.dispose()


def keep_and_leak(app: Flask, novita, cluster_id: str) -> tuple[str, str]:
    """One instance the deployment's row wants, and one leaked (named as its own, no row): Novita ids."""
    tenant = make_tenant(app, "acme")
    job_id = uuid.uuid4()
    kept = create_at_novita(novita, novita_name(app, job_id), cluster_id)
    with app.app_context():
        db.session.add(
            Instance(
                tenant_id=uuid.UUID(tenant["id"]),
                name=novita_name(app, job_id),
                novita_id=kept,
                status=InstanceStatus.RUNNING,
                endpoints={},
            )
        )
        db.session.commit()
    leaked = create_at_novita(novita, novita_name(app, uuid.uuid4()), cluster_id)
    return kept, leaked


def leaks_deleted(app: Flask) -> list[str]:
    with app.app_context():
        return [item["novitaInstanceId"] for item in reconcile()["leaked"]]


def test_two_deployments_on_one_novita_account_each_delete_only_their_own_leaks(
    app, staging, sim, novita, novita_config, monkeypatch
):
    monkeypatch.setitem(app.config, "GPUJOBS_LEAK_GRACE_SECONDS", 0.0)
    with app.app_context():
        production_prefix = stored_instance_prefix()
    with staging.app_context():
        staging_prefix = stored_instance_prefix()
    assert re.fullmatch(PREFIX_PATTERN, production_prefix) and re.fullmatch(PREFIX_PATTERN, staging_prefix)
    assert production_prefix != staging_prefix

    production_kept, production_leak = keep_and_leak(app, novita, "as-sgp-2")
    staging_kept, staging_leak = keep_and_leak(staging, novita, "us-ca-6")
    legacy = create_at_novita(novita, f"gpujobs-{uuid.uuid4()}", "us-ca-6")  # the old shared default

    assert leaks_deleted(staging) == [staging_leak]
    assert leaks_deleted(app) == [production_leak]
    assert leaks_deleted(staging) == leaks_deleted(app) == []
    status = {instance["id"]: instance["status"] for instance in sim.instances()}
    assert status == {
        **dict.fromkeys([production_kept, staging_kept, legacy], "running"),
        **dict.fromkeys([production_leak, staging_leak], "removed"),
    }


def test_an_existing_database_keeps_the_old_default_prefix_its_instances_were_named_with(app, servers):
    upgraded = app_on(new_database(servers, "prefix_upgrade"))
    try:
        with upgraded.app_context():
            upgrade(revision="k11_webhook_endpoints")
            tenant_id, job_id = uuid.uuid4(), uuid.uuid4()
            db.session.execute(
                text("INSERT INTO tenants (id, name, webhook_secret) VALUES (:id, 'acme', 'x')"),
                {"id": tenant_id},
            )
            db.session.execute(
                text(
                    "INSERT INTO instances (id, tenant_id, name, status, endpoints) "
                    "VALUES (:id, :tenant, :name, 'running', '{}')"
                ),
                {"id": uuid.uuid4(), "tenant": tenant_id, "name": f"gpujobs-{job_id}"},
            )
            db.session.commit()
            upgrade()
            assert stored_instance_prefix() == "gpujobs-"
            from gpujobs.provisioning import records

            assert records.job_id_of(f"gpujobs-{job_id}") == job_id  # still recognised as ours
            db.session.commit()
            downgrade(revision="k11_webhook_endpoints")
            assert db.session.scalar(text("SELECT count(*) FROM instances")) == 1
            db.session.remove()
    finally:
        with upgraded.app_context():
            db.engine.dispose()
