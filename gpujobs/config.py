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
from pathlib import Path
from typing import Any

from gpujobs.dev.embedded_env import read_embedded_env
from gpujobs.exceptions import GpuJobsError
from gpujobs.novita.spec import PRODUCTION_BASE_URL as NOVITA_DEFAULT_BASE_URL

PROJECT_ROOT = Path(__file__).resolve().parent.parent


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


def _instance_prefix(raw: str) -> str:
    # Novita names allow letters, digits and hyphens, 255 characters; a job id (36) follows the prefix.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]{0,63}", raw):
        raise ValueError("expected 1-64 letters, digits and hyphens, starting with a letter or digit")
    return raw


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
    Setting("GPUJOBS_DATA_DIR", str(PROJECT_ROOT / "var"), str, "Embedded servers' data and dev files."),
    Setting("GPUJOBS_STORAGE_DIR", None, str, "Uploaded and encoded videos. Unset: `<data dir>/storage`."),
    Setting("GPUJOBS_LOG_LEVEL", "INFO", str.upper, "Log level of every process."),
    Setting("GPUJOBS_LEASE_SECONDS", "60", _positive_int, "A running job's lease; expired ones are rescued."),
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
        "GPUJOBS_MONITOR_INTERVAL_SECONDS", "5", _positive_float, "Poll interval while an instance starts."
    ),
    Setting(
        "GPUJOBS_MONITOR_TIMEOUT_SECONDS", "600", _positive_float, "Default deadline for an instance to run."
    ),
    Setting(
        "GPUJOBS_DELETE_ON_TIMEOUT", "1", _bool, "Delete an instance that missed its deadline (0: keep it)."
    ),
    Setting(
        "GPUJOBS_INSTANCE_PREFIX",
        "gpujobs-",
        _instance_prefix,
        "Name prefix of the Novita instances this deployment creates; give each deployment sharing a "
        "Novita account its own, or each one's reconcile sweep deletes the other's instances as leaks.",
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
        "GPUJOBS_RATE_LIMIT_PER_MINUTE", "600", _positive_int, "Requests per minute per API key (429 above)."
    ),
    Setting("GPUJOBS_METRICS_PUBLIC", "1", _bool, "Serve /metrics without an API key (for Prometheus)."),
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
    data_dir = Path(env.get("GPUJOBS_DATA_DIR") or PROJECT_ROOT / "var")
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


def sqlalchemy_url(database_url: str) -> str:
    """Use psycopg2 explicitly and accept Heroku-style ``postgres://`` URLs."""
    for prefix in ("postgres://", "postgresql://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg2://" + database_url[len(prefix) :]
    return database_url
