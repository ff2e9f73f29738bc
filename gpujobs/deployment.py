"""This deployment's identity: the prefix that marks the Novita instances it creates as its own.

Two deployments given the same Novita key (production and staging, or a `make run` on a laptop) each
delete the other's instances as leaks if they share a prefix. So the default prefix carries an id drawn
once per database (``gpujobs-<8 hex>-``, migration ``n14_deployment_prefix``), stored in the
one-row ``deployment`` table; a database that already had instances kept ``gpujobs-``.
``GPUJOBS_INSTANCE_PREFIX`` set explicitly still wins.
"""

from __future__ import annotations

from flask import current_app
from sqlalchemy import select

from gpujobs.extensions import db
from gpujobs.models import Deployment

# Where each app keeps the stored prefix once read: it never changes while the service runs.
_CACHE_KEY = "gpujobs.deployment.instance_prefix"


def stored_instance_prefix() -> str:
    """The prefix recorded in the database for this deployment (read once per process)."""
    cached: str | None = current_app.extensions.get(_CACHE_KEY)
    if cached is None:
        # Its own connection: callers may be mid-transaction, and a rollback there must not matter here.
        with db.engine.connect() as connection:
            cached = connection.scalar(select(Deployment.instance_prefix).where(Deployment.id == 1))
        if cached is None:
            raise RuntimeError("the database has no deployment row: run the migrations (flask db upgrade)")
        current_app.extensions[_CACHE_KEY] = cached
    return cached


def instance_prefix() -> str:
    """The prefix of this deployment's Novita instances: ``GPUJOBS_INSTANCE_PREFIX`` if set, else the
    stored one."""
    return current_app.config["GPUJOBS_INSTANCE_PREFIX"] or stored_instance_prefix()
