"""The command line: keys, webhook secrets and their encryption key, tenants' limits and Novita grants,
migrations, jobs, dead letters, video uploads, the simulator and ``dev``.

Commands that print a secret print only that secret, so they compose in shell scripts:
``export GPUJOBS_API_KEY=$(python -m gpujobs keys create --tenant acme)``.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import click
from flask import Flask
from sqlalchemy import select

from gpujobs import create_app
from gpujobs.config import ConfigError
from gpujobs.states import JobStatus
from gpujobs.tenants import UnknownTenant


def _app(*, needs_broker: bool = True) -> Flask:
    return create_app(needs_broker=needs_broker)


class _Commands(click.Group):
    """Every command: a missing or wrong setting, or a tenant that does not exist, is one line saying
    which and how to fix it (exit 1), not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (ConfigError, UnknownTenant) as exc:
            raise click.ClickException(str(exc)) from None


@click.group(cls=_Commands)
def main() -> None:
    """gpujobs: provision GPU instances and run background jobs."""


@main.group()
def keys() -> None:
    """API keys."""


@keys.command("create")
@click.option("--tenant", required=True, help="Tenant name (created if new: the only command that does).")
def keys_create(tenant: str) -> None:
    """Create an API key for TENANT and print it (shown only once; stored hashed)."""
    from gpujobs.tenants import create_api_key

    with _app().app_context():
        click.echo(create_api_key(tenant))


@keys.command("list")
@click.option("--tenant", required=True, help="Tenant name.")
def keys_list(tenant: str) -> None:
    """List TENANT's keys, one JSON object per line: id, prefix, created, last used, revoked."""
    from gpujobs.tenants import list_keys

    with _app().app_context():
        for key in list_keys(tenant):
            row: dict[str, str | None] = {"id": str(key.id), "prefix": key.prefix}
            for field, at in (("created", key.created_at), ("lastUsed", key.last_used_at)):
                row[field] = at.isoformat() if at else None
            row["revoked"] = key.revoked_at.isoformat() if key.revoked_at else None
            click.echo(json.dumps(row))


@keys.command("revoke")
@click.argument("key_id", type=click.UUID)
def keys_revoke(key_id: uuid.UUID) -> None:
    """Revoke a key at once: its API requests and its dashboard sessions are refused from now on."""
    from gpujobs.tenants import revoke_key

    with _app().app_context():
        if not revoke_key(key_id):
            raise click.ClickException(f"no API key {key_id}")
        click.echo(f"revoked {key_id}")


@main.group("secrets")
def secrets_group() -> None:
    """The key that encrypts webhook secrets in the database."""


@secrets_group.command("new-key")
def secrets_new_key() -> None:
    """Print a fresh key for GPUJOBS_ENCRYPTION_KEY (nothing is stored)."""
    from gpujobs.encryption import new_key

    click.echo(new_key())


@secrets_group.command("rotate-key")
def secrets_rotate_key() -> None:
    """Re-encrypt every stored secret under GPUJOBS_ENCRYPTION_KEY (reading GPUJOBS_ENCRYPTION_OLD_KEYS)."""
    from gpujobs.extensions import db
    from gpujobs.sealing import reseal
    from gpujobs.tenants import reencrypt_secrets

    with _app().app_context():
        tenants = reencrypt_secrets()
        rows = reseal(db.session, db.metadata)
        click.echo(f"re-encrypted the secrets of {tenants} tenants and the sealed values of {rows} rows")


@main.group()
def webhooks() -> None:
    """Webhook signing secrets."""


@webhooks.command("secret")
@click.option("--tenant", required=True, help="Tenant name.")
@click.option("--rotate", is_flag=True, help="Issue a new secret; the old one keeps signing for 24 h.")
def webhooks_secret(tenant: str, rotate: bool) -> None:
    """Print the tenant's whsec_ signing secret (after rotating it with --rotate)."""
    from gpujobs.tenants import rotate_webhook_secret, tenant_named

    with _app().app_context():
        click.echo(rotate_webhook_secret(tenant) if rotate else tenant_named(tenant).webhook_secret)


@main.group()
def tenants() -> None:
    """Tenants and their limits."""


class LimitValue(click.ParamType):
    """A limit on the command line: a positive integer, or ``default`` for the operator's default."""

    name = "N|default"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if value == "default":
            return None
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit() and int(value) > 0):
            return int(value)
        self.fail(f"{value!r} is neither a positive integer nor 'default'", param, ctx)


class PriorityValue(click.ParamType):
    """A priority name on the command line, or ``default`` for the operator's default."""

    name = "low|normal|high|critical|default"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from gpujobs.jobs import PRIORITY_LEVELS

        if value == "default":
            return None
        if value in PRIORITY_LEVELS:
            return PRIORITY_LEVELS[value]
        self.fail(f"{value!r} is not one of {self.name.replace('|', ', ')}", param, ctx)


class UsdValue(click.ParamType):
    """A USD-per-hour quota on the command line (``12.50``), or ``default`` for the operator's default."""

    name = "USD|default"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from gpujobs.config import usd_per_hour

        if value == "default":
            return None
        try:
            return usd_per_hour(str(value))
        except ValueError as exc:
            self.fail(f"{value!r}: {exc}, or 'default'", param, ctx)


@tenants.command("set-limits")
@click.option("--tenant", required=True, help="Tenant name.")
@click.option("--max-running-jobs", type=LimitValue(), help="Jobs running at once, cluster-wide.")
@click.option("--max-priority", type=PriorityValue(), help="Highest priority of a job or schedule.")
@click.option("--max-schedules", type=LimitValue(), help="Cron schedules.")
@click.option("--max-instances", type=LimitValue(), help="GPU instances provisioning or running at once.")
@click.option("--max-usd-per-hour", type=UsdValue(), help="USD per hour of those GPU instances together.")
def tenants_set_limits(tenant: str, **values: Any) -> None:
    """Set the tenant's own limits (the others keep theirs); ``default`` takes the operator's default."""
    from gpujobs.limits import set_limits

    context = click.get_current_context()
    given = {
        name: value
        for name, value in values.items()
        if context.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE
    }
    if not given:
        raise click.UsageError(
            "give at least one of --max-running-jobs, --max-priority, --max-schedules, --max-instances, "
            "--max-usd-per-hour"
        )
    with _app().app_context():
        set_limits(tenant, **given)


@tenants.command("show")
@click.option("--tenant", required=True, help="Tenant name.")
def tenants_show(tenant: str) -> None:
    """Print the tenant as JSON: its limits (in force, and its own), their use, its Novita grants."""
    from gpujobs import grants, limits
    from gpujobs.jobs import PRIORITY_NAMES
    from gpujobs.tenants import tenant_named

    with _app().app_context():
        row = tenant_named(tenant)
        own: dict[str, Any] = limits.overrides(row.id)
        if own["max_priority"] is not None:
            own["max_priority"] = PRIORITY_NAMES[own["max_priority"]]
        if own["max_usd_per_hour"] is not None:
            own["max_usd_per_hour"] = float(own["max_usd_per_hour"])
        shown = {
            "name": row.name,
            "id": str(row.id),
            "createdAt": row.created_at.isoformat(),
            "limits": limits.usage(row.id),
            "ownLimits": own,
            "templates": [grant.resource_id for grant in grants.granted(row.id, grants.Kind.TEMPLATE)],
            "registryAuths": [
                grant.resource_id for grant in grants.granted(row.id, grants.Kind.REGISTRY_AUTH)
            ],
            "instances": [grant.resource_id for grant in grants.granted(row.id, grants.Kind.INSTANCE)],
        }
        click.echo(json.dumps(shown, indent=2))


def _grant_commands(group: click.Group, kind: str, noun: str) -> None:
    """``grant`` and ``revoke`` under ``group`` for one kind of Novita resource."""

    @group.command("grant", help=f"Let TENANT name the {noun} RESOURCE_ID of the operator's Novita account.")
    @click.option("--tenant", required=True, help="Tenant name.")
    @click.option("--unchecked", is_flag=True, help="Grant without asking Novita whether the id exists.")
    @click.argument("resource_id")
    def grant_command(tenant: str, resource_id: str, unchecked: bool) -> None:
        from gpujobs.grants import Kind, grant, novita_has
        from gpujobs.tenants import tenant_named

        with _app().app_context():
            tenant_named(tenant)  # an unknown tenant first: a typo there changes nothing either
            known = None if unchecked else novita_has(Kind(kind), resource_id)
            if known is False:
                raise click.ClickException(
                    f"Novita has no {noun} {resource_id!r} on this account: check the id "
                    "(--unchecked grants it as it is)"
                )
            grant(tenant, Kind(kind), resource_id)
            if known is None and not unchecked:
                click.echo(
                    f"granted unchecked: Novita could not be asked about {noun} {resource_id!r}", err=True
                )

    @group.command("revoke", help=f"Take back TENANT's {noun} RESOURCE_ID (its jobs not yet at Novita fail).")
    @click.option("--tenant", required=True, help="Tenant name.")
    @click.argument("resource_id")
    def revoke_command(tenant: str, resource_id: str) -> None:
        from gpujobs.grants import Kind, revoke

        with _app().app_context():
            if not revoke(tenant, Kind(kind), resource_id):
                raise click.ClickException(f"{tenant!r} had no grant of {noun} {resource_id!r}")


@main.group()
def templates() -> None:
    """Which Novita templates each tenant may use."""


@main.group("registry-auths")
def registry_auths() -> None:
    """Which Novita registry auths each tenant may use (with imageUrl)."""


@main.group()
def instances() -> None:
    """Which instances gpujobs did not create (watched ones) each tenant may watch, stop and start."""


_grant_commands(templates, "template", "template")
_grant_commands(registry_auths, "registry_auth", "registry auth")
_grant_commands(instances, "instance", "Novita instance")


@main.command()
def migrate() -> None:
    """Apply database migrations (the Procfile's release step; needs no Redis)."""
    from flask_migrate import upgrade

    with _app(needs_broker=False).app_context():
        upgrade()


@main.group()
def jobs() -> None:
    """Inspect jobs."""


@jobs.command("list")
@click.option("--tenant", help="Only this tenant's jobs.")
@click.option(
    "--status", type=click.Choice([status.value for status in JobStatus]), help="Only jobs in this status."
)
@click.option("--limit", default=20, show_default=True)
def jobs_list(tenant: str | None, status: str | None, limit: int) -> None:
    """List the newest jobs, one JSON object per line."""
    from gpujobs import resources
    from gpujobs.extensions import db
    from gpujobs.models import Job
    from gpujobs.tenants import tenant_named

    with _app().app_context():
        query = select(Job).order_by(Job.created_at.desc()).limit(limit)
        if tenant:
            query = query.where(Job.tenant_id == tenant_named(tenant).id)
        if status:
            query = query.where(Job.status == status)
        for job in db.session.scalars(query):
            click.echo(json.dumps(resources.Job.json_of(job)))


@main.group()
def dlq() -> None:
    """The dead-letter queue."""


@dlq.command("list")
@click.option("--limit", default=20, show_default=True)
def dlq_list(limit: int) -> None:
    """List dead letters not yet redriven, one JSON object per line."""
    from gpujobs import resources
    from gpujobs.extensions import db
    from gpujobs.models import DeadLetter

    with _app().app_context():
        query = (
            select(DeadLetter)
            .where(DeadLetter.redriven_at.is_(None))
            .order_by(DeadLetter.created_at.desc())
            .limit(limit)
        )
        for letter in db.session.scalars(query):
            click.echo(json.dumps(resources.DeadLetter.json_of(letter)))


@dlq.command("retry")
@click.argument("dead_letter_id", type=click.UUID)
@click.option("--max-attempts", type=click.IntRange(1, 100), help="Fresh attempt budget.")
def dlq_retry(dead_letter_id: uuid.UUID, max_attempts: int | None) -> None:
    """Redrive one dead letter: its job runs again with a fresh attempt budget."""
    from gpujobs.exceptions import Conflict
    from gpujobs.extensions import db
    from gpujobs.models import DeadLetter
    from gpujobs.operations import redrive

    with _app().app_context():
        letter = db.session.get(DeadLetter, dead_letter_id)
        if letter is None:
            raise click.ClickException(f"no dead letter {dead_letter_id}")
        try:
            job_id = redrive(dead_letter_id, letter.tenant_id, max_attempts)
        except Conflict:
            raise click.ClickException(f"dead letter {dead_letter_id} was already redriven") from None
        click.echo(str(job_id))


@main.group()
def videos() -> None:
    """Video uploads on disk."""


@videos.command("move-flat-uploads")
def videos_move_flat_uploads() -> None:
    """Move uploads stored flat in uploads/ into their tenant's directory; print each file's outcome.

    Files whose owner is unknown (no job or schedule names them, or several tenants do) are left.
    """
    from gpujobs.videos import move_flat_uploads

    with _app().app_context():
        outcome = move_flat_uploads()
    for what, names in outcome.items():
        for name in names:
            click.echo(f"{what}: {name}")
    click.echo(", ".join(f"{len(names)} {what}" for what, names in outcome.items()))


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8090, show_default=True)
@click.option("--api-key", default="sk_simulator", show_default=True, help="Bearer key it accepts.")
def simulator(host: str, port: int, api_key: str) -> None:
    """Run the Novita API simulator in the foreground."""
    from gpujobs.novita.simulator import serve

    serve(host=host, port=port, api_key=api_key)


@main.command()
def dev() -> None:
    """Run everything locally: embedded PostgreSQL and Redis, the simulator, API, worker, beat, Flower."""
    from gpujobs.dev.devserver import run

    run()
