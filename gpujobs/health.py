"""Liveness and readiness probes: ``/health`` (the process answers), ``/ready`` (its backends answer)."""

from __future__ import annotations

from flask import Blueprint, current_app
from sqlalchemy import text

from gpujobs.broker import connect_redis
from gpujobs.extensions import db

bp = Blueprint("health", __name__)

REDIS_PROBE_TIMEOUT_SECONDS = 2.0


@bp.get("/health")
def health() -> tuple[dict[str, str], int]:
    """Up as long as the process serves requests; load balancers restart it otherwise."""
    return {"status": "ok"}, 200


@bp.get("/ready")
def ready() -> tuple[dict[str, object], int]:
    """Ready only when PostgreSQL and Redis both answer; 503 names the one that does not."""
    checks = {"postgres": _check_postgres(), "redis": _check_redis()}
    ok = all(value == "ok" for value in checks.values())
    return {"status": "ready" if ok else "unavailable", "checks": checks}, 200 if ok else 503


def _check_postgres() -> str:
    try:
        db.session.execute(text("SELECT 1"))
        return "ok"
    except Exception as exc:  # any driver error means "not ready"; the kind is reported, not raised
        db.session.rollback()
        return f"error: {type(exc).__name__}"


def _check_redis() -> str:
    try:
        client = connect_redis(current_app.config, REDIS_PROBE_TIMEOUT_SECONDS)
        try:
            client.ping()
        finally:
            client.close()
        return "ok"
    except Exception as exc:  # unreachable, refused, timed out: all the same answer to a probe
        return f"error: {type(exc).__name__}"
