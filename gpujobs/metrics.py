"""Prometheus metrics for ``/metrics``, computed at scrape time from PostgreSQL counters and Redis.

Workers run as several processes on several hosts, and the web tier as several gunicorn processes, so
in-process metrics (even prometheus-client's multiprocess mode, which shares files on one host only)
would each hold a slice of the truth, and a worker has no port to scrape. Every figure is recorded
where all processes already write, and read from there by whichever web process answers the scrape:

- jobs by status, webhook deliveries: counter tables kept by triggers (``gpujobs.stats``);
- jobs finished (``_total``) and the run-time and queue-wait histograms: tables the same kind of
  trigger fills in the transaction that ends a job (migration ``h8_job_histograms``), so they are exact
  and never counted twice;
- HTTP requests by route template and status, and Novita API calls: Redis hashes every process adds
  to (``instrument``, ``gpujobs.provisioning.novita_client``); losing Redis resets them, which
  Prometheus's ``rate()`` reads as a counter reset;
- queue depths: one pipelined round of ``LLEN``;
- GPU spend: the amounts the cost sweep accrues on instance rows (``gpujobs.provisioning.costs``), which
  only ever grow.

Scrape one web process (through the load balancer): every process answers the same figures.
No tenant label but one: tenants are unbounded. Definitions, statuses, queues and routes are bounded.
The exception is ``gpujobs_gpu_cost_usd_total``, by tenant: the operator bills or caps tenants by it,
and only tenants that have had an instance get a series.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator

import redis
from flask import Flask, Response, g, request
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString
from sqlalchemy import func, select, text

from gpujobs import broker, stats
from gpujobs.broker import redis_client
from gpujobs.extensions import db
from gpujobs.models import JobDurationBucket, JobFinishedCounter
from gpujobs.provisioning import costs
from gpujobs.provisioning.novita_client import call_counts

log = logging.getLogger(__name__)

HTTP_COUNTS_KEY = "gpujobs:http:requests"  # "<method> <route> <status> <le>" -> requests in that bucket
HTTP_SECONDS_KEY = "gpujobs:http:seconds"  # "<method> <route> <status>" -> summed seconds
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED_ROUTE = "unmatched"  # 404s of paths no rule matches: one label value, not one per path


class ServiceCollector(Collector):
    """Jobs by status, queue depths, webhook deliveries, finished jobs, durations, HTTP and Novita calls."""

    def collect(self) -> Iterator[Metric]:
        """Read the figures now (called by ``generate_latest`` inside a request)."""
        jobs = GaugeMetricFamily(
            "gpujobs_jobs", "Jobs that exist now, by status and definition", labels=["status", "definition"]
        )
        for (key, version), counts in sorted(stats.job_counts(None).items()):
            for status, count in counts.items():
                jobs.add_metric([status, f"{key}@{version}"], count)
        yield jobs

        deliveries = GaugeMetricFamily(
            "gpujobs_webhook_deliveries", "Webhook deliveries that exist now, by status", labels=["status"]
        )
        for status, count in stats.delivery_counts(None).items():
            deliveries.add_metric([status], count)
        yield deliveries

        depths = broker.queue_depths()
        if depths is not None:  # Redis away: the gauge is absent rather than a misleading zero
            queue = GaugeMetricFamily(
                "gpujobs_queue_depth", "Messages waiting per Celery queue", labels=["queue"]
            )
            for name, depth in depths.items():
                queue.add_metric([name], depth)
            yield queue

        yield from self._finished()
        yield from self._durations()
        yield from self._http()
        yield from self._novita_calls()
        yield from self._gpu_cost()

    @staticmethod
    def _novita_calls() -> Iterator[Metric]:
        counts = call_counts()
        if counts is None:  # Redis away: absent rather than a counter that seems to restart
            return
        calls = CounterMetricFamily(
            "gpujobs_novita_calls",
            "HTTP attempts at the Novita API by method, path and outcome "
            "(ok, 4xx, 429, 5xx, no_answer, no_envelope: a 404/405 without Novita's error envelope)",
            labels=["method", "path", "outcome"],
        )
        for (method, path, outcome), count in sorted(counts.items()):
            calls.add_metric([method, path, outcome], count)
        yield calls

    @staticmethod
    def _gpu_cost() -> Iterator[Metric]:
        cost = CounterMetricFamily(
            "gpujobs_gpu_cost_usd",
            "USD accrued by GPU instances while Novita billed them (price times billed time), by tenant",
            labels=["tenant"],
        )
        for tenant, usd in costs.totals_by_tenant().items():
            cost.add_metric([tenant], usd)
        yield cost

    @staticmethod
    def _finished() -> Iterator[Metric]:
        key = (
            JobFinishedCounter.definition_key,
            JobFinishedCounter.definition_version,
            JobFinishedCounter.status,
        )
        rows = db.session.execute(
            select(*key, func.sum(JobFinishedCounter.finished), func.sum(JobFinishedCounter.retried))
            .group_by(*key)
            .order_by(*key)
        ).all()
        finished = CounterMetricFamily(
            "gpujobs_jobs_finished",
            "Jobs that finished, by definition and final status (succeeded, failed, cancelled)",
            labels=["definition", "status"],
        )
        retried = CounterMetricFamily(
            "gpujobs_jobs_finished_after_retry",
            "Finished jobs that needed more than one attempt, by definition and final status",
            labels=["definition", "status"],
        )
        for definition_key, version, status, count, retries in rows:
            finished.add_metric([f"{definition_key}@{version}", status], int(count))
            retried.add_metric([f"{definition_key}@{version}", status], int(retries))
        yield finished
        yield retried

    @staticmethod
    def _durations() -> Iterator[Metric]:
        bounds = db.session.scalar(text("SELECT job_duration_bounds()"))
        key = (
            JobDurationBucket.histogram,
            JobDurationBucket.definition_key,
            JobDurationBucket.definition_version,
            JobDurationBucket.status,
            JobDurationBucket.le,
        )
        rows = db.session.execute(
            select(*key, func.sum(JobDurationBucket.count), func.sum(JobDurationBucket.seconds)).group_by(
                *key
            )
        ).all()
        run: dict[tuple[str, ...], dict[float, tuple[int, float]]] = defaultdict(dict)
        queue: dict[tuple[str, ...], dict[float, tuple[int, float]]] = defaultdict(dict)
        for histogram, definition_key, version, status, le, count, seconds in rows:
            definition = f"{definition_key}@{version}"
            if histogram == "run":
                run[(definition, status)][le] = (int(count), float(seconds))
            else:  # queue wait does not depend on how the job ended: one series per definition
                kept = queue[(definition,)].get(le, (0, 0.0))
                queue[(definition,)][le] = (kept[0] + int(count), kept[1] + float(seconds))
        yield _histogram(
            "gpujobs_job_run_seconds",
            "Run time of finished jobs (last attempt's start to the end), by definition and final status",
            ["definition", "status"],
            run,
            bounds,
        )
        yield _histogram(
            "gpujobs_job_queue_wait_seconds",
            "Queue wait of finished jobs that ran (queued to the last attempt's start), by definition",
            ["definition"],
            queue,
            bounds,
        )

    @staticmethod
    def _http() -> Iterator[Metric]:
        try:
            with redis_client().pipeline(transaction=False) as pipe:
                pipe.hgetall(HTTP_COUNTS_KEY)
                pipe.hgetall(HTTP_SECONDS_KEY)
                raw_counts, raw_seconds = pipe.execute()
        except redis.RedisError:  # absent rather than counters that seem to restart
            return
        series: dict[tuple[str, ...], dict[float, tuple[int, float]]] = defaultdict(dict)
        for field, value in raw_counts.items():
            method, route, status, le = field.decode().split(" ")
            series[(method, route, status)][float(le)] = (int(value), 0.0)
        for field, value in raw_seconds.items():
            key = tuple(field.decode().split(" "))
            if key in series:  # the sum, carried on the +Inf bucket
                count, _ = series[key].get(float("inf"), (0, 0.0))
                series[key][float("inf")] = (count, float(value))
        labels = ["method", "route", "status"]
        requests = CounterMetricFamily(
            "gpujobs_http_requests",
            "HTTP requests answered, by method, route template and status",
            labels=labels,
        )
        for key, buckets in sorted(series.items()):
            requests.add_metric(list(key), sum(count for count, _ in buckets.values()))
        yield requests
        yield _histogram(
            "gpujobs_http_request_duration_seconds",
            "Time to answer HTTP requests, by method, route template and status",
            labels,
            series,
            HTTP_BUCKETS,
        )


def _histogram(
    name: str,
    documentation: str,
    labels: list[str],
    series: dict[tuple[str, ...], dict[float, tuple[int, float]]],
    bounds: Iterable[float],
) -> HistogramMetricFamily:
    """A histogram family from non-cumulative ``{le: (count, seconds)}`` per label set; every bound is
    written (zero or not), so each bucket series exists from the first observation on."""
    family = HistogramMetricFamily(name, documentation, labels=labels)
    edges = [*sorted(bounds), float("inf")]
    for key, buckets in sorted(series.items()):
        cumulative, total, points = 0, 0.0, []
        for le in edges:
            count, seconds = buckets.get(le, (0, 0.0))
            cumulative, total = cumulative + count, total + seconds
            points.append((floatToGoString(le), cumulative))
        family.add_metric(list(key), points, sum_value=total)
    return family


def record_request(method: str, route: str, status: int, seconds: float) -> None:
    """Count one answered request (one pipelined round trip); with Redis away the request goes uncounted
    (the rate limiter and ``/ready`` already say Redis is away)."""
    method = method if method in HTTP_METHODS else "other"
    labels = f"{method} {route} {status}"
    le = next((bound for bound in HTTP_BUCKETS if seconds <= bound), float("inf"))
    try:
        with redis_client().pipeline(transaction=False) as pipe:
            pipe.hincrby(HTTP_COUNTS_KEY, f"{labels} {le}", 1)
            pipe.hincrbyfloat(HTTP_SECONDS_KEY, labels, seconds)
            pipe.execute()
    except redis.RedisError as exc:
        log.debug("HTTP request not counted (%s)", type(exc).__name__)


def instrument(app: Flask) -> None:
    """Time every request of ``app`` and record it by route template (``url_rule``), never raw path."""

    @app.before_request
    def start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def record(response: Response) -> Response:
        started = g.pop("metrics_started", None)
        if started is not None:
            route = request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE
            record_request(request.method, route, response.status_code, time.perf_counter() - started)
        return response


def make_registry() -> CollectorRegistry:
    """A registry of its own per app (never the process-global one, which tests would share)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector())
    return registry
