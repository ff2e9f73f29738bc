"""Prometheus metrics for ``/metrics``, computed at scrape time from PostgreSQL counters and Redis.

No multiprocess mode and no in-process counters: with several gunicorn and Celery processes those
would each hold a slice of the truth. Every figure here is read from the shared state instead, and
each read is cheap: the counter tables (a few rows per tenant and definition), one pipelined round
of ``LLEN``, and the duration sample cached for ``GPUJOBS_METRICS_CACHE_TTL_SECONDS``.

Novita API calls are the one counter: every process adds to a Redis hash
(``gpujobs.provisioning.novita_client``), read here.
"""

from __future__ import annotations

from collections.abc import Iterator

from flask import current_app
from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gpujobs import broker, stats
from gpujobs.provisioning.novita_client import call_counts
from gpujobs.states import JobStatus


class ServiceCollector(Collector):
    """Jobs by status and definition, queue depths, webhook outcomes, duration quantiles and rates."""

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
        yield from self._novita_calls()

    @staticmethod
    def _novita_calls() -> Iterator[Metric]:
        counts = call_counts()
        if counts is None:  # Redis away: absent rather than a counter that seems to restart
            return
        calls = CounterMetricFamily(
            "gpujobs_novita_calls",
            "HTTP attempts at the Novita API by method, path and outcome (ok, 4xx, 429, 5xx, no_answer)",
            labels=["method", "path", "outcome"],
        )
        for (method, path, outcome), count in sorted(counts.items()):
            calls.add_metric([method, path, outcome], count)
        yield calls

    @staticmethod
    def _finished() -> Iterator[Metric]:
        hour = stats.throughput(None, 1)["data"][0]
        finished = GaugeMetricFamily(
            "gpujobs_jobs_finished_this_hour", "Jobs finished in the current clock hour", labels=["status"]
        )
        fields = {
            JobStatus.SUCCEEDED: "completed",
            JobStatus.FAILED: "failed",
            JobStatus.CANCELLED: "cancelled",
        }
        for status, field in fields.items():
            finished.add_metric([status], hour[field])
        yield finished
        rates = stats.performance_summary(None)
        for name, field, text in (
            ("gpujobs_job_success_ratio", "successRate", "Succeeded / (succeeded + failed), last 24 h"),
            ("gpujobs_job_retry_ratio", "retryRate", "Finished jobs that needed a retry, last 24 h"),
        ):
            if rates[field] is not None:
                yield GaugeMetricFamily(name, text, value=rates[field])

    @staticmethod
    def _durations() -> Iterator[Metric]:
        sample, _ = stats.cached(
            "percentiles",
            None,
            current_app.config["GPUJOBS_METRICS_CACHE_TTL_SECONDS"],
            lambda: stats.duration_percentiles(None),
        )
        for name, field, text in (
            ("gpujobs_job_run_seconds", "processingTime", "Run time of recently finished jobs"),
            ("gpujobs_job_queue_wait_seconds", "queueTime", "Queue wait of recently finished jobs"),
        ):
            family = GaugeMetricFamily(
                name, f"{text} (quantiles of a bounded 24 h sample)", labels=["quantile"]
            )
            for quantile, value in zip(stats.QUANTILES, sample[field].values(), strict=True):
                if value is not None:
                    family.add_metric([str(quantile)], value)
            yield family


def make_registry() -> CollectorRegistry:
    """A registry of its own per app (never the process-global one, which tests would share)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServiceCollector())
    return registry
