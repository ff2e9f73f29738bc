"""The HTTP API: ``/v1`` blueprints, ``/metrics``, ``/openapi.json`` and ``/docs``.

Cross-cutting rules live in one module each: bearer keys and rate limits (``auth``, ``ratelimit``),
request parsing (``validation``), problem documents (``errors``), retry-safe creation
(``idempotency``), keyset pages (``pagination``) and the OpenAPI document (``openapi``).
"""

from __future__ import annotations

from flask import Flask

from gpujobs.api.errors import register_error_handlers


def register_api(app: Flask) -> None:
    """Attach every API blueprint, ``/metrics``, the error handlers and the request guards to ``app``."""
    from gpujobs.api import (
        deliveries,
        dlq,
        docs,
        grants,
        instances,
        jobs,
        limits,
        metrics,
        ratelimit,
        schedules,
        videos,
    )
    from gpujobs.api.validation import reject_unstorable_query
    from gpujobs.metrics import instrument

    instrument(app)  # first: its timer starts before any other guard can answer
    register_error_handlers(app)
    app.before_request(reject_unstorable_query)
    app.after_request(ratelimit.add_headers)
    for module in (jobs, deliveries, dlq, instances, grants, schedules, limits, videos, metrics, docs):
        app.register_blueprint(module.bp)
    metrics.register_prometheus(app)
