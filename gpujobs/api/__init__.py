"""The HTTP API (``/v1``): blueprints, bearer authentication and RFC 9457 problem responses."""

from __future__ import annotations

from flask import Flask

from gpujobs.api.errors import register_error_handlers


def register_api(app: Flask) -> None:
    """Attach every API blueprint and the error handlers to ``app``."""
    from gpujobs.api import dlq, instances, jobs, schedules, videos

    register_error_handlers(app)
    for module in (jobs, dlq, instances, schedules, videos):
        app.register_blueprint(module.bp)
