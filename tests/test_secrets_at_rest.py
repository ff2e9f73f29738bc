"""Secrets at rest, API keys and their tools: encryption of webhook secrets, key rotation, the migration
that encrypts existing rows, ``keys list`` / ``keys revoke`` and ``secrets new-key`` / ``rotate-key``."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select, text
from support.databases import app_on, new_database
from support.tenants import make_tenant, secret_of

from gpujobs import create_app, sealing, webhooks
from gpujobs.config import ConfigError
from gpujobs.encryption import EncryptionError, new_key, parse_key
from gpujobs.extensions import db
from gpujobs.models import Job, Schedule, WebhookDelivery
from gpujobs.tenants import reencrypt_secrets, rotate_webhook_secret

PLAIN_TENANT = "INSERT INTO tenants (id, name, webhook_secret) VALUES (gen_random_uuid(), 'a', 'whsec_plain')"


def _cli(process_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gpujobs", *args], env=process_env, capture_output=True, text=True, timeout=60
    )


def _dump(app: Flask) -> str:
    """Every row of every table in the schema, as PostgreSQL prints it."""
    with app.app_context():
        tables = db.session.scalars(
            text("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
        ).all()
        rows = [
            line
            for table in tables
            for line in db.session.scalars(text(f'SELECT t::text FROM "{table}" AS t')).all()
        ]
    return "\n".join(rows)


@contextmanager
def _keys(app: Flask, key: str, old_keys: list[str]) -> Iterator[None]:
    """The app's encryption keys replaced for the block (as a redeploy with new settings would)."""
    saved = app.config["GPUJOBS_ENCRYPTION_KEY"], app.config["GPUJOBS_ENCRYPTION_OLD_KEYS"]
    app.config["GPUJOBS_ENCRYPTION_KEY"], app.config["GPUJOBS_ENCRYPTION_OLD_KEYS"] = key, old_keys
    try:
        yield
    finally:
        app.config["GPUJOBS_ENCRYPTION_KEY"], app.config["GPUJOBS_ENCRYPTION_OLD_KEYS"] = saved


def test_a_dump_of_every_table_holds_no_webhook_secret_and_no_api_key_in_clear(app, tenant):
    first = secret_of(app, tenant)
    with app.app_context():
        current = rotate_webhook_secret(tenant["name"])
    dump = _dump(app)
    assert tenant["name"] in dump  # the dump did read the tenants table
    for secret in (first, current, tenant["key"]):
        assert secret not in dump
    # Not a word of its own (the stored key prefix aside): a Fernet token, base64, may hold "gj_" by chance.
    keys = re.findall(r"(?<![A-Za-z0-9_=-])(?:whsec|gj)_", dump.replace(tenant["key"][:10], ""))
    assert keys == []
    with app.app_context():
        stored = db.session.execute(text("SELECT webhook_secret, previous_webhook_secret FROM tenants")).one()
        assert all(value.startswith("gAAAAA") for value in stored)  # Fernet tokens, version byte 0x80
    assert secret_of(app, tenant) == current


CREDENTIALS = (
    "HDR_SECRET_1",
    "CALL_SECRET_2",
    "BODY_TOKEN_3",
    "SCHEDULE_SECRET_4",
    "HOOK_SECRET_5",
    "PAYLOAD_SECRET_6",
    "MESSAGE_HEADER_7",
)


def _credentials_sent(app, client, tenant) -> tuple[str, str]:
    """A job and a schedule carrying a tenant's tokens in params and webhook headers (one under a name
    that does not look secret); the job is cancelled, so its ``job.cancelled`` delivery copies the
    headers, and a ``webhook.send`` message of it is recorded. Returns (job id, schedule id)."""
    params = {
        "endpoint": "http://127.0.0.1:9/x",
        "method": "POST",
        "headers": {"X-Api": "CALL_SECRET_2"},
        "body": {"accessToken": "BODY_TOKEN_3", "note": "plain"},
    }
    hook = {
        "webhookUrl": "http://127.0.0.1:9/hook",
        "webhookHeaders": {"Authorization": "Bearer HDR_SECRET_1", "X-Hook": "HOOK_SECRET_5"},
    }
    job = client.post(
        "/v1/jobs", json={"definitionKey": "call.api", "params": params, **hook}, headers=tenant["headers"]
    )
    assert job.status_code == 202, job.json
    assert client.post(f"/v1/jobs/{job.json['id']}/cancel", headers=tenant["headers"]).status_code == 200
    with app.app_context():
        message = {"apiKey": "PAYLOAD_SECRET_6", "note": "plain"}
        webhooks.record_message(
            job.json["id"], "http://127.0.0.1:9/m", message, {"X-Sig": "MESSAGE_HEADER_7"}
        )
        db.session.commit()
    schedule = client.post(
        "/v1/schedules",
        json={
            "name": "sealed",
            "cron": "0 3 * * *",
            "definitionKey": "call.api",
            "params": {
                "endpoint": "http://127.0.0.1:9/y",
                "headers": {"Authorization": "SCHEDULE_SECRET_4"},
            },
        },
        headers=tenant["headers"],
    )
    assert schedule.status_code == 201, schedule.json
    return job.json["id"], schedule.json["id"]


def _stored_credentials(app, job_id: str, schedule_id: str) -> tuple[Any, ...]:
    with app.app_context():
        job, schedule = db.session.get_one(Job, job_id), db.session.get_one(Schedule, schedule_id)
        deliveries = {
            row.event_type: row
            for row in db.session.scalars(select(WebhookDelivery).where(WebhookDelivery.job_id == job.id))
        }
        message = deliveries[webhooks.MESSAGE_EVENT]
        cancelled = deliveries["job.cancelled"]
        return (
            job.params,
            job.webhook_headers,
            cancelled.headers,
            message.payload,
            message.headers,
            schedule.params,
        )


def test_a_tenants_credentials_are_sealed_at_rest_and_read_back_as_sent(app, client, tenant):
    """A dump, a backup or a replica reader sees the names of a tenant's tokens (webhook headers, call.api
    headers, a secret-named param, a webhook.send message's, a schedule's), never their values; the
    code that sends them reads them as the tenant sent them, and every answer masks them."""
    job_id, schedule_id = _credentials_sent(app, client, tenant)
    dump = _dump(app)
    assert sealing.PREFIX in dump and "X-Api" in dump and "accessToken" in dump and '"plain"' in dump
    assert [secret for secret in CREDENTIALS if secret in dump] == []

    params, webhook_headers, delivery_headers, payload, message_headers, schedule_params = (
        _stored_credentials(app, job_id, schedule_id)
    )
    assert params["headers"] == {"X-Api": "CALL_SECRET_2"} and params["body"]["accessToken"] == "BODY_TOKEN_3"
    sent = {"Authorization": "Bearer HDR_SECRET_1", "X-Hook": "HOOK_SECRET_5"}
    assert webhook_headers == delivery_headers == sent
    assert payload == {"apiKey": "PAYLOAD_SECRET_6", "note": "plain"}
    assert message_headers == {"X-Sig": "MESSAGE_HEADER_7"}
    assert schedule_params["headers"] == {"Authorization": "SCHEDULE_SECRET_4"}
    shown = client.get(f"/v1/jobs/{job_id}", headers=tenant["headers"]).json
    assert shown["params"]["headers"] == {"X-Api": "••••"}
    assert shown["webhookHeaders"] == {"Authorization": "••••", "X-Hook": "••••"}


def test_a_sealed_value_sent_back_by_a_tenant_is_never_opened_for_it(app, client, tenant):
    """Ciphertext read from a dump and sent as a tenant's own value, where secrets go or anywhere else,
    comes back as the text that was sent: only what the service sealed is ever opened."""
    _credentials_sent(app, client, tenant)
    stolen = next(word.strip('"\\,{}') for word in _dump(app).split() if sealing.PREFIX in word)
    stolen = stolen[stolen.index(sealing.PREFIX) :]
    body = {
        "endpoint": "http://127.0.0.1:9/z",
        "method": "POST",
        "headers": {"X-Api": stolen},
        "body": {"note": stolen},
    }
    thief = make_tenant(app, "thief")
    job = client.post(
        "/v1/jobs", json={"definitionKey": "call.api", "params": body}, headers=thief["headers"]
    )
    assert job.status_code == 202, job.json
    with app.app_context():
        params = db.session.get_one(Job, job.json["id"]).params
    assert params["headers"] == {"X-Api": stolen} and params["body"] == {"note": stolen}
    shown = client.get(f"/v1/jobs/{job.json['id']}", headers=thief["headers"]).json
    assert shown["params"]["body"] == {"note": stolen}  # its own text, not what it decrypts to


def test_rotate_key_reseals_the_tenants_credentials_so_the_old_key_can_be_dropped(app, client, tenant):
    job_id, schedule_id = _credentials_sent(app, client, tenant)
    before = _stored_credentials(app, job_id, schedule_id)
    old, new = app.config["GPUJOBS_ENCRYPTION_KEY"], new_key()
    with _keys(app, new, [old]), app.app_context():
        # The job's params and webhook headers, its two deliveries' headers and bodies (the event's holds
        # its definitionKey, a secret-looking name), the schedule's params.
        assert sealing.reseal(db.session, db.metadata) == 7
    with _keys(app, new, []):
        assert _stored_credentials(app, job_id, schedule_id) == before
    with _keys(app, old, []), pytest.raises(EncryptionError, match="GPUJOBS_ENCRYPTION_OLD_KEYS"):
        _stored_credentials(app, job_id, schedule_id)


def test_rotate_key_re_encrypts_every_secret_so_the_old_key_can_be_dropped(app, tenant):
    secret = secret_of(app, tenant)
    old = app.config["GPUJOBS_ENCRYPTION_KEY"]
    new = new_key()
    with _keys(app, new, [old]), app.app_context():
        assert reencrypt_secrets() == 1
    with _keys(app, new, []):
        assert secret_of(app, tenant) == secret
    with _keys(app, old, []), pytest.raises(EncryptionError, match="GPUJOBS_ENCRYPTION_OLD_KEYS"):
        secret_of(app, tenant)


def test_a_secret_under_an_unknown_key_is_refused_with_a_message_that_names_the_settings(app, tenant):
    with _keys(app, new_key(), []), pytest.raises(EncryptionError) as refused:
        secret_of(app, tenant)
    assert "GPUJOBS_ENCRYPTION_KEY" in str(refused.value) and app.config["GPUJOBS_ENCRYPTION_KEY"] not in str(
        refused.value
    )


def test_the_app_refuses_to_start_without_an_encryption_key_or_with_a_malformed_one(servers):
    with pytest.raises(ConfigError, match=r"GPUJOBS_ENCRYPTION_KEY is not set.*secrets new-key"):
        create_app({"GPUJOBS_ENCRYPTION_KEY": None})
    with pytest.raises(ValueError, match="secrets new-key"):
        parse_key("not-a-key")


def test_the_migration_encrypts_existing_secrets_and_stops_without_a_key(app, servers):
    from flask_migrate import downgrade, upgrade

    fresh = app_on(new_database(servers, "secrets_backfill"))
    try:
        with fresh.app_context():
            upgrade(revision="e5_queued_published_index")
            db.session.execute(text(PLAIN_TENANT))
            db.session.commit()
            fresh.config["GPUJOBS_ENCRYPTION_KEY"] = None
            with pytest.raises(EncryptionError, match="GPUJOBS_ENCRYPTION_KEY is not set"):
                upgrade(revision="g7_secrets_at_rest")
            db.session.rollback()
            fresh.config["GPUJOBS_ENCRYPTION_KEY"] = app.config["GPUJOBS_ENCRYPTION_KEY"]
            upgrade(revision="g7_secrets_at_rest")
            stored = db.session.scalar(text("SELECT webhook_secret FROM tenants"))
            assert "whsec_plain" not in stored
            db.session.commit()  # the downgrade's ALTER TABLE waits for every open transaction on tenants
            downgrade(revision="e5_queued_published_index")
            assert db.session.scalar(text("SELECT webhook_secret FROM tenants")) == "whsec_plain"
            db.session.remove()
    finally:
        with fresh.app_context():
            db.engine.dispose()


@pytest.mark.slow  # CLI subprocesses
def test_keys_list_shows_ids_prefixes_and_use_and_keys_revoke_refuses_the_key_at_once(
    app, process_env, client
):
    tenant = make_tenant(app, "cli-keys")
    make_tenant(app, "someone-else")
    assert client.get("/v1/jobs", headers=tenant["headers"]).status_code == 200
    listed = _cli(process_env, "keys", "list", "--tenant", "cli-keys")
    assert listed.returncode == 0, listed.stderr
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (
        row["prefix"] == tenant["key"][:10] and row["created"] and row["lastUsed"] and row["revoked"] is None
    )
    assert tenant["key"] not in listed.stdout
    revoked = _cli(process_env, "keys", "revoke", row["id"])
    assert revoked.returncode == 0, revoked.stderr
    assert client.get("/v1/jobs", headers=tenant["headers"]).status_code == 401
    (after,) = [
        json.loads(line)
        for line in _cli(process_env, "keys", "list", "--tenant", "cli-keys").stdout.splitlines()
    ]
    assert after["revoked"]
    missing = _cli(process_env, "keys", "revoke", "00000000-0000-0000-0000-000000000000")
    assert missing.returncode != 0 and "no API key" in missing.stderr


@pytest.mark.slow  # CLI subprocesses
def test_secrets_new_key_prints_a_usable_key_and_rotate_key_re_encrypts(app, process_env, tenant):
    printed = _cli(process_env, "secrets", "new-key")
    assert printed.returncode == 0 and parse_key(printed.stdout.strip()) == printed.stdout.strip()
    secret = secret_of(app, tenant)
    current = process_env["GPUJOBS_ENCRYPTION_KEY"]
    rotated_env = dict(
        process_env, GPUJOBS_ENCRYPTION_KEY=printed.stdout.strip(), GPUJOBS_ENCRYPTION_OLD_KEYS=current
    )
    result = _cli(rotated_env, "secrets", "rotate-key")
    assert result.returncode == 0 and "1 tenants" in result.stdout, result.stderr
    with _keys(app, printed.stdout.strip(), []):
        assert secret_of(app, tenant) == secret


def test_make_run_keeps_one_encryption_key_under_the_data_dir_readable_by_the_owner_only(tmp_path) -> None:
    from gpujobs.dev.devserver import ENCRYPTION_KEY_FILE, dev_encryption_key

    first = dev_encryption_key(tmp_path)
    assert parse_key(first) == first and dev_encryption_key(tmp_path) == first
    assert (tmp_path / ENCRYPTION_KEY_FILE).stat().st_mode & 0o777 == 0o600
