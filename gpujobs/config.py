"""Configuration from the environment: one table of settings, parsed and checked once at start-up.

The table is the single source for names, defaults and meanings; the README's configuration table
lists the same rows (a test keeps them in step). A bad value stops the process with a message that
names the variable, instead of surfacing later as an odd failure inside a worker.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from gpujobs.dev.embedded_env import read_embedded_env
from gpujobs.encryption import parse_key, parse_keys
from gpujobs.exceptions import GpuJobsError
from gpujobs.novita.spec import PRODUCTION_BASE_URL as NOVITA_DEFAULT_BASE_URL

# Relative to the working directory: the checkout for `make run`, wherever an installed package runs.
DEFAULT_DATA_DIR = "var"


class ConfigError(GpuJobsError):
    """A setting has a value the service cannot use."""


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError("expected one of 1/0, true/false, yes/no, on/off")


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError("expected a positive integer")
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if value <= 0:
        raise ValueError("expected a positive number")
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not value >= 0 or value == float("inf"):
        raise ValueError("expected a number, 0 or more")
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError("expected an integer, 0 or more")
    return value


def _fraction(raw: str) -> float:
    value = float(raw)
    if not 0 <= value <= 1:
        raise ValueError("expected a number from 0 to 1")
    return value


def _connect_timeout(raw: str) -> int:
    value = int(raw)
    if value < 2:  # libpq treats 0 as "wait forever" and 1 as 2
        raise ValueError("expected whole seconds, 2 or more")
    return value


def _instance_prefix(raw: str) -> str:
    # Novita names allow letters, digits and hyphens, 255 characters; a job id (36) follows the prefix.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}", raw):
        raise ValueError("expected 1-64 letters, digits and hyphens, starting with a letter or digit")
    return raw


def _log_level(raw: str) -> str:
    if raw.strip().upper() not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise ValueError("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return raw.strip().upper()


def _log_format(raw: str) -> str:
    if raw.strip().lower() not in {"text", "json"}:
        raise ValueError("expected text or json")
    return raw.strip().lower()


#: Above any USD-per-hour quota: what an instance reserves of one fits its row's integer units.
MAX_USD_PER_HOUR = Decimal(20_000)


def _optional_positive_int(raw: str) -> int | None:
    return _positive_int(raw) if raw.strip() else None


def usd_per_hour(raw: str) -> Decimal:
    """A USD-per-hour quota as the environment and the CLI give it (ValueError if it is not one)."""
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        value = Decimal("NaN")
    if not value.is_finite() or value <= 0 or value >= MAX_USD_PER_HOUR:
        raise ValueError(f"expected a positive amount of USD below {MAX_USD_PER_HOUR}, such as 25 or 12.50")
    return value


def _optional_usd(raw: str) -> Decimal | None:
    return usd_per_hour(raw) if raw.strip() else None


def _max_runtime(raw: str) -> int | None:
    from gpujobs.provisioning.params import MAX_RUNTIME_SECONDS  # not at the top: it imports the registry

    value = _optional_positive_int(raw)
    if value is not None and value > MAX_RUNTIME_SECONDS:
        raise ValueError(f"expected at most {MAX_RUNTIME_SECONDS} seconds (30 days)")
    return value


def _priority_name(raw: str) -> str:
    from gpujobs.jobs import PRIORITY_NAMES  # not at the top: the state machine needs the models loaded

    if raw.strip().lower() not in PRIORITY_NAMES:
        raise ValueError(f"expected one of {', '.join(PRIORITY_NAMES)}")
    return raw.strip().lower()


def _csv(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


@dataclass(frozen=True)
class Setting:
    """One environment variable: its default, how to parse it, and what it means."""

    name: str
    default: str | None
    parse: Callable[[str], Any]
    doc: str


SETTINGS: tuple[Setting, ...] = (
    Setting("DATABASE_URL", None, str, "PostgreSQL URL. Unset: the embedded server that `make run` started."),
    Setting(
        "REDIS_URL",
        None,
        str,
        "Redis URL (Celery broker): `redis://`, `rediss://`, or Sentinel nodes "
        "`sentinel://h1:26379;sentinel://h2:26379`. Unset: the embedded server of `make run`.",
    ),
    Setting(
        "GPUJOBS_REDIS_SENTINEL_MASTER",
        "mymaster",
        str,
        "Name of the master the Sentinels watch (when `REDIS_URL` lists `sentinel://` nodes).",
    ),
    Setting(
        "GPUJOBS_REDIS_PASSWORD",
        None,
        str,
        "Password of the Redis server (with Sentinel: of the master and replicas) when the URL holds none.",
    ),
    Setting(
        "GPUJOBS_REDIS_SENTINEL_PASSWORD",
        None,
        str,
        "Password of the Sentinel nodes themselves (their `requirepass`), if they have one.",
    ),
    Setting("NOVITA_API_KEY", None, str, "Novita API key. Unset in `make run`: the simulator is used."),
    Setting("NOVITA_BASE_URL", NOVITA_DEFAULT_BASE_URL, str, "Novita GPU instance API base URL."),
    Setting(
        "GPUJOBS_SECRET_KEY",
        None,
        str,
        "Signs dashboard sessions; required by the web server (gpujobs.wsgi).",
    ),
    Setting(
        "GPUJOBS_ENCRYPTION_KEY",
        None,
        parse_key,
        "Encrypts webhook signing secrets in the database; required by every process "
        "(`python -m gpujobs secrets new-key` prints one; `make run` keeps one under `var/`).",
    ),
    Setting(
        "GPUJOBS_ENCRYPTION_OLD_KEYS",
        "",
        parse_keys,
        "Retired encryption keys, comma-separated, still accepted for reading while "
        "`python -m gpujobs secrets rotate-key` re-encrypts under the current one.",
    ),
    Setting("GPUJOBS_DATA_DIR", DEFAULT_DATA_DIR, os.path.abspath, "Embedded servers' data and dev files."),
    Setting("GPUJOBS_STORAGE_DIR", None, str, "Uploaded and encoded videos. Unset: `<data dir>/storage`."),
    Setting("GPUJOBS_LOG_LEVEL", "INFO", _log_level, "Log level of every process (API, worker, beat, CLI)."),
    Setting(
        "GPUJOBS_LOG_FORMAT",
        "text",
        _log_format,
        "`text` for a terminal, or `json`: one object per line with `job_id`, `tenant`, `task_id` and "
        "`request_id` where they exist (the Docker image sets `json`).",
    ),
    Setting("GPUJOBS_LEASE_SECONDS", "60", _positive_int, "A running job's lease; expired ones are rescued."),
    Setting(
        "GPUJOBS_HEARTBEAT_INTERVAL_SECONDS",
        "10",
        _positive_float,
        "How often a running job renews its lease and learns of a cancel request (at most a third of "
        "the lease, so a renewal can fail twice before the lease runs out).",
    ),
    Setting(
        "GPUJOBS_CANCEL_CHECK_INTERVAL_SECONDS",
        "1",
        _positive_float,
        "How often, at most, a handler's cancel check reads the job's flag from PostgreSQL.",
    ),
    Setting(
        "GPUJOBS_BACKOFF_MAX_SECONDS",
        "3600",
        _positive_float,
        "Longest wait before a retry, whatever a definition's own backoff says.",
    ),
    Setting(
        "GPUJOBS_BACKOFF_JITTER",
        "0.3",
        _fraction,
        "Fraction of each backoff step drawn at random (0: none, 1: anywhere from 0); spreads out retries.",
    ),
    Setting(
        "GPUJOBS_METRICS_CACHE_TTL_SECONDS",
        "30",
        _non_negative_int,
        "Age of a cached metrics answer served when the request gives no `ttl` (0: always fresh).",
    ),
    Setting("GPUJOBS_DB_POOL_SIZE", "5", _positive_int, "PostgreSQL connections each process keeps open."),
    Setting(
        "GPUJOBS_DB_MAX_OVERFLOW",
        "15",
        _non_negative_int,
        "Connections a process may open beyond the pool under load (pool + overflow: the seed's 20).",
    ),
    Setting(
        "GPUJOBS_DB_POOL_TIMEOUT_SECONDS",
        "30",
        _positive_float,
        "How long a request waits for a free pooled connection before failing.",
    ),
    Setting(
        "GPUJOBS_DB_POOL_RECYCLE_SECONDS",
        "300",
        _positive_int,
        "Pooled connections older than this are replaced (ahead of server or proxy idle timeouts).",
    ),
    Setting(
        "GPUJOBS_DB_CONNECT_TIMEOUT_SECONDS",
        "5",
        _connect_timeout,
        "How long opening a PostgreSQL connection may take (whole seconds, at least 2: libpq's floor).",
    ),
    Setting(
        "GPUJOBS_DB_PREPARED_STATEMENTS",
        "1",
        _bool,
        "Prepare the statements a connection repeats (0 behind PgBouncer in transaction pooling mode).",
    ),
    Setting(
        "GPUJOBS_CANCEL_GRACE_SECONDS",
        "5",
        _non_negative_float,
        "How long a running job may ignore a cancel request before its worker process is stopped.",
    ),
    Setting("GPUJOBS_SWEEP_INTERVAL_SECONDS", "5", _positive_float, "How often beat runs the fast sweeps."),
    Setting(
        "GPUJOBS_REPUBLISH_AFTER_SECONDS",
        "10",
        _positive_float,
        "A queued job published this long ago whose message should have been taken (its queue is "
        "empty, or holds only later messages) is published again.",
    ),
    Setting("GPUJOBS_RETENTION_HOURS", "24", _positive_float, "Finished jobs and events older are deleted."),
    Setting(
        "GPUJOBS_DEAD_LETTER_RETENTION_DAYS",
        "30",
        _positive_float,
        "Dead-lettered jobs (with their dead letters and files) older than this are deleted.",
    ),
    Setting(
        "GPUJOBS_CLEANUP_BATCH_SIZE",
        "250",
        _positive_int,
        "Jobs deleted per cleanup transaction (events and deliveries go with them); small keeps locks short.",
    ),
    Setting("GPUJOBS_WEBHOOK_ALLOW_PRIVATE", "0", _bool, "Allow webhooks and call.api to private addresses."),
    Setting(
        "GPUJOBS_WEBHOOK_TIMEOUT_SECONDS",
        "10",
        _positive_float,
        "Total deadline of one webhook attempt (connect, send, read the answer).",
    ),
    Setting(
        "GPUJOBS_WEBHOOK_BREAKER_FAILURES",
        "5",
        _positive_int,
        "Consecutive failed or timed-out deliveries after which a receiver's circuit opens.",
    ),
    Setting(
        "GPUJOBS_WEBHOOK_BREAKER_COOLDOWN_SECONDS",
        "60",
        _positive_float,
        "How long an open circuit holds a receiver's deliveries before one probe delivery is tried.",
    ),
    Setting(
        "GPUJOBS_WEBHOOK_TENANT_CONCURRENCY",
        "4",
        _positive_int,
        "Webhook sends of one tenant at once, cluster-wide; keep it below the webhook pool's concurrency.",
    ),
    Setting(
        "GPUJOBS_MONITOR_INTERVAL_SECONDS", "5", _positive_float, "Poll interval while an instance starts."
    ),
    Setting(
        "GPUJOBS_MONITOR_TIMEOUT_SECONDS", "600", _positive_float, "Default deadline for an instance to run."
    ),
    Setting(
        "GPUJOBS_DELETE_ON_TIMEOUT", "1", _bool, "Delete an instance that missed its deadline (0: keep it)."
    ),
    Setting(
        "GPUJOBS_INSTANCE_MAX_RUNTIME_SECONDS",
        None,
        _max_runtime,
        "Lifetime of an instance whose create request gives no `maxRuntimeSeconds` (unset: no limit).",
    ),
    Setting(
        "GPUJOBS_INSTANCE_EXPIRY_WARNING_SECONDS",
        "300",
        _non_negative_int,
        "How long before an instance's deadline `instance.expiring` is sent (0: no warning).",
    ),
    Setting(
        "GPUJOBS_INSTANCE_PREFIX",
        None,
        _instance_prefix,
        "Name prefix of the Novita instances this deployment creates. Unset: the deployment's own "
        "`gpujobs-<8 hex>-`, drawn once and stored in the database, so deployments sharing a Novita "
        "account never delete each other's instances as leaks.",
    ),
    Setting(
        "GPUJOBS_NOVITA_CATALOGUE_SECONDS",
        "30",
        _non_negative_float,
        "How long a worker reuses Novita's cluster and product lists (0: ask on every create).",
    ),
    Setting(
        "GPUJOBS_REGION_FALLBACK",
        "CN-HK-01,AS-SGP-02,US-CA-06,EU-GER-02",
        _csv,
        "Regions tried, in order, after the requested one.",
    ),
    Setting(
        "GPUJOBS_LEAK_GRACE_SECONDS", "600", _positive_float, "Age before an unowned instance is deleted."
    ),
    Setting(
        "GPUJOBS_COST_ACCRUAL_SECONDS",
        "60",
        _positive_float,
        "How often the cost sweep charges billed instances their price for the time since its last look; "
        "a change of state is charged to within this.",
    ),
    Setting(
        "GPUJOBS_SPOT_MAX_RECREATES",
        "3",
        _non_negative_int,
        "Replacements one spot instance with onReclaim recreate may have in all, after Novita reclaims "
        "it and each replacement (0: never recreate).",
    ),
    Setting(
        "GPUJOBS_RATE_LIMIT_PER_MINUTE", "600", _positive_int, "Requests per minute per API key (429 above)."
    ),
    Setting(
        "GPUJOBS_METRICS_PUBLIC",
        "0",
        _bool,
        "Serve /metrics (every tenant's figures) to anyone who reaches the port: only where only the "
        "operator can (`make run` sets it).",
    ),
    Setting(
        "GPUJOBS_METRICS_TOKEN",
        None,
        str,
        "When set, /metrics answers only `Authorization: Bearer <this token>` (401 otherwise).",
    ),
    Setting(
        "GPUJOBS_TENANT_MAX_RUNNING_JOBS",
        None,
        _optional_positive_int,
        "Jobs one tenant may have running at once, cluster-wide (unset: no limit); per tenant: "
        "`tenants set-limits`.",
    ),
    Setting(
        "GPUJOBS_TENANT_MAX_PUBLISHED",
        "50",
        _optional_positive_int,
        "Fairness window: jobs of one tenant handed to the broker or running at once, at most (a "
        "running-jobs limit set for the tenant is its window instead; the default one, if lower, too); "
        "the rest wait in PostgreSQL and are published tenant by tenant in turn. Empty: no window for "
        "a tenant without a running-jobs limit.",
    ),
    Setting(
        "GPUJOBS_TENANT_MAX_PRIORITY",
        "high",
        _priority_name,
        "The highest priority a tenant may give a job or schedule (422 above); per tenant: "
        "`tenants set-limits`.",
    ),
    Setting(
        "GPUJOBS_TENANT_MAX_SCHEDULES",
        "20",
        _positive_int,
        "Cron schedules one tenant may have (409 above); per tenant: `tenants set-limits`.",
    ),
    Setting(
        "GPUJOBS_TENANT_MAX_INSTANCES",
        "10",
        _optional_positive_int,
        "GPU instances one tenant may have provisioning or running at once (409 above; empty: no limit); "
        "per tenant: `tenants set-limits`.",
    ),
    Setting(
        "GPUJOBS_TENANT_MAX_USD_PER_HOUR",
        None,
        _optional_usd,
        "USD per hour one tenant's GPU instances may cost together (409 above; unset: no limit); "
        "per tenant: `tenants set-limits`.",
    ),
    Setting(
        "GPUJOBS_VIDEO_MAX_BYTES", str(500 * 1024 * 1024), _positive_int, "Largest video upload accepted."
    ),
    Setting("GPUJOBS_DEFINITION_MODULES", "", _csv, "Extra modules to import for your own job definitions."),
    Setting("GPUJOBS_MAX_BODY_BYTES", str(1024 * 1024), _positive_int, "Largest JSON request body accepted."),
    Setting("GPUJOBS_SHUTDOWN_TIMEOUT_SECONDS", "30", _positive_float, "Worker soft-shutdown grace period."),
)


def load_config(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Parse every setting from ``environ`` (default: the process environment) into a config dict.

    Values left unset fall back to the embedded servers recorded by ``make run`` under the data
    directory, so the CLI in a second terminal talks to the same database as the running service.
    """
    env = dict(os.environ if environ is None else environ)
    data_dir = Path(env.get("GPUJOBS_DATA_DIR") or DEFAULT_DATA_DIR)
    for name, value in read_embedded_env(data_dir).items():
        env.setdefault(name, value)
    config: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = env.get(setting.name, setting.default)
        if raw is None:
            config[setting.name] = None
            continue
        try:
            config[setting.name] = setting.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{setting.name}: {exc}") from None
    if not config["GPUJOBS_STORAGE_DIR"]:
        config["GPUJOBS_STORAGE_DIR"] = str(Path(config["GPUJOBS_DATA_DIR"]) / "storage")
    return config
