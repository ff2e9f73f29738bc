"""gpujobs: asynchronous, reliable provisioning of cloud GPU instances, and a job engine under it."""

from __future__ import annotations

import importlib
import secrets
from pathlib import Path
from typing import Any

from flask import Flask

__version__ = "0.1.0"  # before the imports below: the Novita client reads it for its User-Agent

from gpujobs.config import ConfigError, load_config


def create_app(test_config: dict[str, Any] | None = None, *, needs_broker: bool = True) -> Flask:
    """Build the Flask app, its extensions and its Celery app (the Flask application-factory pattern).

    ``needs_broker=False``: a command that only uses PostgreSQL (``gpujobs migrate``) runs without
    ``REDIS_URL``, as a one-off migration job of a deployment may."""
    from gpujobs import logs, models  # noqa: F401  (models: the tables, for migrations and queries)
    from gpujobs.celery_app import celery_init_app
    from gpujobs.extensions import db, drop_closed_connections, engine_options, migrate, sqlalchemy_url
    from gpujobs.prepared import prepare_repeated_statements

    app = Flask(__name__)
    app.config.update(load_config())
    if test_config:
        app.config.update(test_config)
    for url in ("DATABASE_URL", "REDIS_URL") if needs_broker else ("DATABASE_URL",):
        if not app.config.get(url):
            # Refused here, not as a 500 on every request of a process that started without it.
            raise ConfigError(
                f"{url} is not set and no embedded server is running: set it, or start the embedded "
                "servers (`make run` in a checkout; `gpujobs dev` where gpujobs[embedded] is installed)"
            )
    if not app.config.get("GPUJOBS_ENCRYPTION_KEY"):
        # Without it no webhook could be signed; refusing here names the fix before anything runs.
        raise ConfigError(
            "GPUJOBS_ENCRYPTION_KEY is not set: create one with `python -m gpujobs secrets new-key`"
        )
    app.config["SQLALCHEMY_DATABASE_URI"] = sqlalchemy_url(app.config["DATABASE_URL"])
    app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", engine_options(app.config))
    app.config["SECRET_KEY"] = app.config.get("GPUJOBS_SECRET_KEY") or secrets.token_hex(32)
    app.config["MAX_CONTENT_LENGTH"] = app.config["GPUJOBS_MAX_BODY_BYTES"]
    logs.init_app(app)

    db.init_app(app)
    with app.app_context():
        drop_closed_connections(db.engine)
        if app.config["GPUJOBS_DB_PREPARED_STATEMENTS"]:
            prepare_repeated_statements(db.engine)
    # Inside the package, so `flask --app gpujobs db upgrade` works from an installed wheel too.
    migrate.init_app(app, db, directory=str(Path(__file__).resolve().parent / "migrations"))
    celery_init_app(app)

    # The built-in definitions register themselves when imported: the samples, then gpu.instance.*.
    from gpujobs import definitions  # noqa: F401
    from gpujobs.provisioning import actions, create, external  # noqa: F401

    for module in app.config["GPUJOBS_DEFINITION_MODULES"]:
        importlib.import_module(module)
    from gpujobs.api import register_api
    from gpujobs.health import bp as health_bp
    from gpujobs.ui import bp as ui_bp

    app.register_blueprint(health_bp)
    register_api(app)
    app.register_blueprint(ui_bp)
    return app
