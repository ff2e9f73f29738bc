"""The registry of job definitions, addressed as ``key@version``.

A definition is code: a handler plus the policy the engine applies around it (attempts, timeout,
cluster-wide concurrency, backoff, hooks) and a pydantic model that validates params at submit time,
so a bad request is refused with a 422 before anything is queued.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_TIMEOUT_SECONDS = 30 * 60


class JobContext(Protocol):
    """What a handler sees of its job: identity, progress reporting and cancellation."""

    job_id: str
    attempt: int
    tenant: str

    def emit_event(self, event_type: str, data: dict[str, Any] | None = None) -> None:
        """Append a lifecycle event (``job.<event_type>``) to the job's timeline."""

    def progress(self, percent: float, message: str | None = None, **data: Any) -> None:
        """Record progress (0-100) on the job and as a ``job.progress`` event."""

    def cancel_requested(self) -> bool:
        """True once someone asked to cancel this job; handlers stop at the next safe point."""

    def raise_if_cancelled(self) -> None:
        """Raise ``JobCancelled`` when cancellation was requested (a convenient safe point)."""

    def hold_job(self) -> AbstractContextManager[bool]:
        """A block that yields whether this attempt still owns the job; no other attempt can take the
        job over until the block ends. For publishing a side effect only the job's owner may publish."""


@dataclass(frozen=True)
class Handoff:
    """Returned by a handler whose job goes on in another task (the GPU chain's monitor step).

    The job stays ``running`` under the same attempt; the engine publishes ``task`` after commit with
    ``(job_id, attempt, *args)``, to the queue ``task_routes`` names for it. That task owns the job
    from then on: it renews the lease and ends the job with fenced writes. If its messages are lost,
    the lease expires and the rescue sweep reruns the handler, which must therefore be idempotent (the
    GPU create step adopts its instance by name).
    """

    task: str
    args: tuple[Any, ...] = ()
    countdown_seconds: float = 0.0


Handler = Callable[[JobContext, dict[str, Any]], "dict[str, Any] | Handoff | None"]
Hook = Callable[[JobContext, dict[str, Any]], None]
# Refuses (InvalidField) valid params that this tenant may not use, e.g. a Novita template not granted.
Authorize = Callable[[uuid.UUID, dict[str, Any]], None]
# Runs with (job id, tenant id, params) in the transaction that queues a job, however it is queued (API,
# CLI, schedule, a redrive), before it commits: it adds rows that must exist with the job, or raises to
# refuse it.
Queued = Callable[[uuid.UUID, uuid.UUID, dict[str, Any]], None]
HandlerT = TypeVar("HandlerT", bound=Handler)


class Params(BaseModel):
    """Base for params models: unknown fields are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter: a fraction of each step is random, the rest is kept.

    Keeping part avoids a near-immediate retry; the random part spreads a burst of failures out. The
    fraction and a cap over every definition's own are settings (``GPUJOBS_BACKOFF_JITTER``,
    ``GPUJOBS_BACKOFF_MAX_SECONDS``), passed in by the runner.
    """

    base_delay_seconds: float = 1.0
    max_delay_seconds: float = 300.0

    def delay_seconds(
        self,
        attempt: int,
        rng: random.Random | None = None,
        *,
        jitter_fraction: float = 0.5,
        cap_seconds: float = math.inf,
    ) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        step = self.base_delay_seconds * 2 ** max(attempt - 1, 0)
        ceiling = min(self.max_delay_seconds, cap_seconds, step)
        return (rng or random).uniform(ceiling * (1 - jitter_fraction), ceiling)


@dataclass(frozen=True)
class Definition:
    """One registered job type and the policy the engine applies around its handler."""

    key: str
    version: int
    handler: Handler
    params_model: type[BaseModel] = Params
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    concurrency_limit: int | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    description: str = ""
    on_start: Hook | None = None
    on_success: Hook | None = None
    on_fail: Hook | None = None
    on_end: Hook | None = None
    authorize: Authorize | None = None
    on_queued: Queued | None = None

    @property
    def ref(self) -> str:
        """The public name, ``key@version``."""
        return f"{self.key}@{self.version}"

    def validate_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Validate and normalise params; raises ``pydantic.ValidationError``."""
        return self.params_model.model_validate(params).model_dump(mode="json")


_REGISTRY: dict[tuple[str, int], Definition] = {}


def register(definition: Definition) -> Definition:
    """Add a definition; registering the same ``key@version`` twice is a programming error."""
    ident = (definition.key, definition.version)
    if ident in _REGISTRY and _REGISTRY[ident] is not definition:
        raise ValueError(f"definition {definition.ref} is already registered")
    _REGISTRY[ident] = definition
    return definition


def job_definition(key: str, version: int = 1, **options: Any) -> Callable[[HandlerT], HandlerT]:
    """Decorator form of :func:`register` for a handler function (returned unchanged)."""

    def decorate(handler: HandlerT) -> HandlerT:
        register(Definition(key=key, version=version, handler=handler, **options))
        return handler

    return decorate


def get_definition(key: str, version: int) -> Definition | None:
    """The definition for ``key@version``, or None when nothing is registered under it."""
    return _REGISTRY.get((key, version))


def all_definitions() -> list[Definition]:
    """Every registered definition, sorted by key then version."""
    return [_REGISTRY[ident] for ident in sorted(_REGISTRY)]
