"""The HTTP API (``/v1``): blueprints, bearer authentication and RFC 9457 problem responses."""

from __future__ import annotations

from flask import Flask

from gpujobs.api.errors import register_error_handlers


def register_api(app: Flask) -> None:
    """Attach every API blueprint and the error handlers to ``app``."""
    from gpujobs.api.dlq import bp as dlq_bp
    from gpujobs.api.jobs import bp as jobs_bp

    register_error_handlers(app)
    app.register_blueprint(jobs_bp)
    app.register_blueprint(dlq_bp)
