"""``/v1/stats`` and ``/v1/metrics/*`` (the caller's figures) and ``/metrics`` (Prometheus, all tenants)."""

from __future__ import annotations

import hmac
from collections.abc import Callable
from datetime import datetime
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ConfigDict, Field

from gpujobs import stats
from gpujobs.api import schemas
from gpujobs.api.auth import require_api_key
from gpujobs.api.errors import ApiError
from gpujobs.api.openapi import operation
from gpujobs.api.validation import parse_query
from gpujobs.metrics import make_registry
from gpujobs.provisioning import costs

bp = Blueprint("metrics", __name__, url_prefix="/v1")

TAG = "metrics"


class CacheQuery(BaseModel):
    """``ttl``: the oldest cached answer accepted, in seconds (0: compute now; default the setting)."""

    model_config = ConfigDict(extra="ignore")

    ttl: int | None = Field(
        None, ge=0, le=stats.MAX_TTL_SECONDS, description="default: GPUJOBS_METRICS_CACHE_TTL_SECONDS (30)"
    )


class ThroughputQuery(CacheQuery):
    """``hours``: how far back, in clock hours (the current one included)."""

    hours: int = Field(24, ge=1, le=stats.MAX_THROUGHPUT_HOURS)


class CostQuery(BaseModel):
    """``hours``: how far back, in clock hours (the current one included)."""

    model_config = ConfigDict(extra="ignore")

    hours: int = Field(24, ge=1, le=costs.MAX_COST_HOURS)


class CostHour(schemas.Out):
    """USD accrued during one clock hour (``period`` is its start, UTC)."""

    period: datetime
    usd: float


class InstanceCost(schemas.Out):
    """USD one instance accrued in the window."""

    instanceId: str
    label: str | None
    productName: str | None
    gpuNum: int | None
    usd: float


class ProductCost(schemas.Out):
    """USD the tenant's instances of one GPU product accrued in the window."""

    productName: str
    usd: float


class Cost(schemas.Out):
    """The tenant's GPU spend over the last ``hours`` clock hours (from ``since``): each instance's price
    for the time Novita billed it, as accrued by the cost sweep (to within
    ``GPUJOBS_COST_ACCRUAL_SECONDS``). Largest first in ``byInstance`` and ``byProduct``."""

    hours: int
    since: datetime
    totalUsd: float
    byHour: list[CostHour]
    byInstance: list[InstanceCost]
    byProduct: list[ProductCost]


def _cached(name: str, ttl: int | None, compute: Callable[[], Any]) -> Response:
    """The tenant's figures, from the cache when younger than ``ttl``; ``Age`` says how old they are."""
    if ttl is None:
        ttl = current_app.config["GPUJOBS_METRICS_CACHE_TTL_SECONDS"]
    body, age = stats.cached(name, g.tenant.id, ttl, compute)
    return Response(current_app.json.dumps(body), mimetype="application/json", headers={"Age": str(age)})


@bp.get("/stats")
@operation(summary="Job counts by status and definition", tag=TAG, responses={200: schemas.Stats})
@require_api_key
def job_stats() -> dict[str, Any]:
    """Exact counts, read from counters kept by triggers (never cached)."""
    return stats.stats(g.tenant.id)


@bp.get("/metrics")
@operation(
    summary="Summary, performance and throughput",
    tag=TAG,
    query=CacheQuery,
    responses={200: schemas.MetricsOverview},
)
@require_api_key
def metrics_overview() -> Response:
    """The Job Server's overall metrics."""
    tenant_id = g.tenant.id
    return _cached("overview", parse_query(CacheQuery).ttl, lambda: stats.overview(tenant_id))


@bp.get("/metrics/definitions")
@operation(
    summary="Metrics per job definition",
    tag=TAG,
    query=CacheQuery,
    responses={200: schemas.DefinitionMetricsList},
)
@require_api_key
def metrics_by_definition() -> Response:
    """Counts, success rate and mean durations of each definition."""
    tenant_id = g.tenant.id
    return _cached("definitions", parse_query(CacheQuery).ttl, lambda: stats.definition_metrics(tenant_id))


@bp.get("/metrics/throughput")
@operation(
    summary="Finished jobs per hour",
    tag=TAG,
    query=ThroughputQuery,
    responses={200: schemas.Throughput},
)
@require_api_key
def metrics_throughput() -> Response:
    """Succeeded, failed and cancelled jobs in each of the last ``hours`` clock hours."""
    args, tenant_id = parse_query(ThroughputQuery), g.tenant.id
    return _cached(f"throughput:{args.hours}", args.ttl, lambda: stats.throughput(tenant_id, args.hours))


@bp.get("/metrics/performance")
@operation(
    summary="Success and retry rates, mean and percentile durations",
    tag=TAG,
    query=CacheQuery,
    responses={200: schemas.Performance},
)
@require_api_key
def metrics_performance() -> Response:
    """Rates and means over 24 h; p50/p95/p99 over the most recent finished jobs."""
    tenant_id = g.tenant.id
    return _cached("performance", parse_query(CacheQuery).ttl, lambda: stats.performance(tenant_id))


@bp.get("/metrics/cost")
@operation(
    summary="GPU spend by hour, instance and product",
    tag=TAG,
    query=CostQuery,
    responses={200: Cost, 422: "invalid field"},
)
@require_api_key
def metrics_cost() -> dict[str, Any]:
    """What the caller's GPU instances cost in each of the last ``hours`` clock hours (never cached)."""
    return costs.spend(g.tenant.id, parse_query(CostQuery).hours)


def register_prometheus(app: Flask) -> None:
    """Serve ``/metrics`` (every tenant's figures, for the operator).

    With ``GPUJOBS_METRICS_TOKEN`` set it answers only that bearer token; otherwise it is public when
    ``GPUJOBS_METRICS_PUBLIC``, else it answers no one (403 saying how to open it). Never to a tenant's
    API key: every tenant's names and spend are in it.
    """
    registry = make_registry()
    token = app.config["GPUJOBS_METRICS_TOKEN"]
    public = app.config["GPUJOBS_METRICS_PUBLIC"] and not token

    @operation(
        summary="Prometheus metrics (every tenant)",
        tag=TAG,
        responses={200: "Prometheus text exposition format"},
        auth=not public,
    )
    def prometheus() -> Response:
        """Every tenant's figures, computed now from the counters and Redis."""
        if token:
            _require_token(token)
        elif not public:
            raise ApiError(
                403,
                "Forbidden",
                "/metrics holds every tenant's figures, for the operator: set GPUJOBS_METRICS_TOKEN and "
                "scrape with Authorization: Bearer <token> (or GPUJOBS_METRICS_PUBLIC=1 where only the "
                "operator reaches this port)",
            )
        # content_type, not mimetype: Flask would add a second charset to the one the constant carries.
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    app.add_url_rule("/metrics", "prometheus", prometheus)


def _require_token(token: str) -> None:
    """Refuse (401) a request without ``Authorization: Bearer <token>``; compared in constant time."""
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if not (scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode())):
        raise ApiError(
            401,
            "Unauthorized",
            "the metrics token is required: Authorization: Bearer <GPUJOBS_METRICS_TOKEN>",
            headers={"WWW-Authenticate": 'Bearer realm="gpujobs-metrics"'},
        )
