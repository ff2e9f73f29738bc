"""Logging of every process (API, worker, beat, CLI): one handler on the root logger, text or JSON.

``GPUJOBS_LOG_FORMAT=json`` writes one JSON object per line (python-json-logger), for log shippers;
``text`` (the default) is for a terminal. Either way each line carries what identifies its work, where
it exists: ``job_id``, ``tenant``, ``task_id`` (Celery) and ``request_id`` (HTTP, from the caller's
``X-Request-ID`` or made here, and echoed in the answer). Celery's own lines carry them too: Celery is
told not to set up logging (``setup_logging`` has a receiver), so its loggers reach this handler.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from celery import Celery, signals
from celery.apps import worker as celery_worker
from flask import Flask, Response, g, has_request_context, request
from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from gpujobs.config import load_config
from gpujobs.dispatch import RUN_JOB_TASK
from gpujobs.provisioning.monitor import MONITOR_TASK

CONTEXT_FIELDS = ("job_id", "tenant", "task_id", "request_id")
REQUEST_ID_HEADER = "X-Request-ID"
# A caller's request id is echoed into logs and headers: only short, plain tokens are taken.
REQUEST_ID_PATTERN = re.compile(r"[A-Za-z0-9._:-]{1,128}")
UUID_PATTERN = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
TEXT_FORMAT = "%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s%(context)s"
JSON_FIELDS = ("levelname", "name", "processName", "message")
JSON_RENAMES = {"levelname": "level", "name": "logger", "processName": "process"}
# Tasks whose first argument is a job id (run a job, follow a GPU instance).
JOB_TASKS = (RUN_JOB_TASK, MONITOR_TASK)

_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("gpujobs_log", default=None)


@contextlib.contextmanager
def bound(**fields: object) -> Iterator[None]:
    """Add fields to every line logged inside the block (in this thread)."""
    token = _context.set(
        {**(_context.get() or {}), **{k: str(v) for k, v in fields.items() if v is not None}}
    )
    try:
        yield
    finally:
        _context.reset(token)


def _context_of(record: logging.LogRecord) -> dict[str, str]:
    fields = dict(_context.get() or {})
    if has_request_context():
        fields.setdefault("request_id", getattr(g, "request_id", None) or "")
        tenant = getattr(g, "tenant", None)
        if tenant is not None:
            fields.setdefault("tenant", str(tenant.id))
        job_id = (request.view_args or {}).get("job_id")
        if job_id is not None:
            fields.setdefault("job_id", str(job_id))
    # Celery's "received" line is logged by the consumer, outside the task: its data names the task.
    data = getattr(record, "data", None)
    if isinstance(data, dict) and data.get("id"):
        fields.setdefault("task_id", str(data["id"]))
        match = UUID_PATTERN.search(str(data.get("args", ""))) if data.get("name") in JOB_TASKS else None
        if match:
            fields.setdefault("job_id", match[0])
    return {k: v for k, v in fields.items() if v}


class ContextFilter(logging.Filter):
    """Puts the ids of the current request or task on each record (``record.job_id`` ...)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always passes the record on; only adds fields."""
        fields = _context_of(record)
        for name in CONTEXT_FIELDS:  # a field given as ``extra=`` to the log call wins
            if name in fields and getattr(record, name, None) is None:
                setattr(record, name, fields[name])
        present = [(name, getattr(record, name, None)) for name in CONTEXT_FIELDS]
        record.context = "".join(f" {name}={value}" for name, value in present if value is not None)
        return True


def make_formatter(log_format: str) -> logging.Formatter:
    """The formatter of ``GPUJOBS_LOG_FORMAT`` (also usable from a ``logging.config`` dict)."""
    if log_format == "json":
        return JsonFormatter(
            list(JSON_FIELDS),
            rename_fields=JSON_RENAMES,
            timestamp="time",  # ISO 8601, UTC
            # Celery's ``data`` repeats the message's arguments; ``context`` is the text format's suffix.
            reserved_attrs=[*RESERVED_ATTRS, "data", "context"],
        )
    return logging.Formatter(TEXT_FORMAT)


class StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a test runner swaps it, then closes its own)."""

    @property
    def stream(self) -> Any:
        """The current ``sys.stderr``."""
        return sys.stderr

    @stream.setter
    def stream(self, _: Any) -> None:
        pass


def make_handler(log_format: str) -> logging.Handler:
    """A stderr handler with the context filter and the chosen format."""
    handler = StderrHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(make_formatter(log_format))
    return handler


def configure_logging(level: str, log_format: str) -> None:
    """Install (or replace) the one gpujobs handler on the root logger; others (pytest's) are kept."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, StderrHandler)]:
        root.removeHandler(handler)
    root.addHandler(make_handler(log_format))
    root.setLevel(level)
    logging.captureWarnings(True)  # Python warnings as log lines too, not bare text on stderr


def gunicorn_logconfig_dict() -> dict[str, Any]:
    """gunicorn's ``logconfig_dict`` (in ``gunicorn.conf.py``): its own lines (start-up, workers, the
    access log) in the same format as the app's, at ``GPUJOBS_LOG_LEVEL`` (the access log at INFO).

    The handlers are ``make_handler``'s, so the app's ``configure_logging`` replaces rather than
    doubles the root one in each worker.
    """
    config = load_config()
    level, log_format = config["GPUJOBS_LOG_LEVEL"], config["GPUJOBS_LOG_FORMAT"]
    handler = {"()": f"{__name__}.make_handler", "log_format": log_format}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "root": {"level": level, "handlers": ["gpujobs"]},
        "loggers": {
            "gunicorn.error": {"level": level, "handlers": ["gpujobs"], "propagate": False},
            "gunicorn.access": {"level": "INFO", "handlers": ["gpujobs"], "propagate": False},
        },
        "handlers": {"gpujobs": handler},
        "formatters": {},
    }


def init_app(app: Flask) -> None:
    """Configure logging from the app's settings, give each request an id, and keep Celery's hands off.

    Celery's worker and beat would otherwise install their own handlers at ``--loglevel``; with a
    ``setup_logging`` receiver they leave logging as configured here, at ``GPUJOBS_LOG_LEVEL``.
    """
    level, log_format = app.config["GPUJOBS_LOG_LEVEL"], app.config["GPUJOBS_LOG_FORMAT"]
    configure_logging(level, log_format)
    signals.setup_logging.connect(
        lambda **_: configure_logging(level, log_format), weak=False, dispatch_uid="gpujobs.logs"
    )
    app.before_request(_assign_request_id)
    app.after_request(_echo_request_id)


def init_celery(celery: Celery[Any], log_format: str) -> None:
    """With JSON logs, Celery's start-up banners (plain text on stdout) are left out, as ``--quiet``
    would: every line a worker or beat prints is then JSON."""
    if log_format != "json":
        return
    signals.celeryd_init.connect(_quiet_worker, weak=False, dispatch_uid="gpujobs.logs.quiet")
    # The worker's shutdown lines ("worker: Warm shutdown (MainProcess)") bypass logging: Celery writes
    # them from its signal handlers with a bare os.write. Written as JSON here, the same signal-safe way.
    celery_worker.safe_say = _say_as_json  # type: ignore[attr-defined]  # celery-types omits safe_say
    beat = celery.Beat

    class QuietBeat(beat):  # type: ignore[valid-type, misc]
        def __init__(self, **options: Any) -> None:
            super().__init__(**{**options, "quiet": True})

    celery.Beat = QuietBeat  # type: ignore[misc]  # a cached property: it may be set


def _say_as_json(msg: str, f: Any = None) -> None:
    """Celery's ``safe_say`` in JSON: one object per line, to stderr like every log line (no lock taken)."""
    line = {"time": datetime.now(UTC).isoformat(), "level": "WARNING", "logger": "celery.apps.worker"}
    os.write(2, (json.dumps({**line, "message": msg}) + "\n").encode())  # 2: the process's stderr


def _quiet_worker(instance: Any, **_: Any) -> None:
    instance.quiet = True


def _assign_request_id() -> None:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = given if REQUEST_ID_PATTERN.fullmatch(given) else uuid.uuid4().hex


def _echo_request_id(response: Response) -> Response:
    request_id = getattr(g, "request_id", None)
    if request_id:
        response.headers.setdefault(REQUEST_ID_HEADER, request_id)
    return response


@signals.task_prerun.connect
def _bind_task(task_id: str, task: Any, args: Any = (), **_: Any) -> None:
    """The task's ids on every line until it ends, Celery's own "succeeded" line included."""
    job_id = args[0] if task.name in JOB_TASKS and args else None
    _context.set({"task_id": task_id, **({"job_id": str(job_id)} if job_id else {})})


@signals.task_postrun.connect
def _unbind_task(**_: Any) -> None:
    _context.set(None)  # a pool process runs many tasks, one after another
