"""Fixtures for calling definition handlers directly: a recording job context and a Flask app context.

The engine and a real worker are exercised elsewhere; here each handler runs in-process against the
same registry the worker uses, so failures point at the definition and not at the plumbing.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from gpujobs.definitions import routes, samples, video  # noqa: F401  (importing registers them)
from gpujobs.exceptions import JobCancelled
from gpujobs.registry import get_definition


class RecordingContext:
    """A JobContext that records events and progress; cancellation is a flag or a progress count."""

    def __init__(self, *, cancel_after_progress: int | None = None) -> None:
        self.job_id = str(uuid.uuid4())
        self.attempt = 1
        self.tenant = "test"
        self.events: list[tuple[str, dict[str, Any] | None]] = []
        self.progress_calls: list[tuple[float, str | None, dict[str, Any]]] = []
        self.cancelled = False
        self.cancel_checks = 0
        self.holds_job = True  # False: a newer attempt or the lease rescue took the job over
        self._cancel_after_progress = cancel_after_progress

    def emit_event(self, event_type: str, data: dict[str, Any] | None = None) -> None:
        self.events.append((event_type, data))

    def progress(self, percent: float, message: str | None = None, **data: Any) -> None:
        assert 0 <= percent <= 100, percent
        self.progress_calls.append((percent, message, data))
        if (
            self._cancel_after_progress is not None
            and len(self.progress_calls) >= self._cancel_after_progress
        ):
            self.cancelled = True

    def cancel_requested(self) -> bool:
        self.cancel_checks += 1
        return self.cancelled

    def raise_if_cancelled(self) -> None:
        if self.cancel_requested():
            raise JobCancelled(f"job {self.job_id} was cancelled")

    @contextlib.contextmanager
    def hold_job(self) -> Iterator[bool]:
        yield self.holds_job

    @property
    def percents(self) -> list[float]:
        return [percent for percent, _, _ in self.progress_calls]


@pytest.fixture
def flask_app(tmp_path: Path) -> Iterator[Flask]:
    """A bare Flask app carrying only the config the definitions read, with its context pushed.

    Not named ``app``: the suite-wide fixture of that name is the full service with its databases.
    """
    app = Flask(__name__)
    app.config.update(GPUJOBS_STORAGE_DIR=str(tmp_path), GPUJOBS_WEBHOOK_ALLOW_PRIVATE=True)
    with app.app_context():
        yield app


@pytest.fixture
def ctx() -> RecordingContext:
    return RecordingContext()


@pytest.fixture
def make_ctx() -> type[RecordingContext]:
    """The context class itself, for tests that need cancellation set up."""
    return RecordingContext


def _run_job(key: str, params: dict[str, Any], ctx: RecordingContext | None = None) -> Any:
    """Validate params and run the handler, as the worker does with a stored job."""
    definition = get_definition(key, 1)
    assert definition is not None, f"{key}@1 is not registered"
    return definition.handler(ctx or RecordingContext(), definition.validate_params(params))


@pytest.fixture
def run_job() -> Callable[..., Any]:
    """``run_job(key, params, ctx=None)``: validate then call the handler of ``key@1``."""
    return _run_job
