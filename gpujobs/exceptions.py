"""Error classes shared by the engine, the Novita client and job handlers.

One decision lives here: a failure is either *transient* (worth retrying with backoff) or
*permanent* (retrying cannot help, fail now with a clear reason). Everything that can fail a job
raises one of these, so the engine decides retry-vs-fail in exactly one place.
"""

from __future__ import annotations


class GpuJobsError(Exception):
    """Base class for every error the service raises on purpose."""


class TransientError(GpuJobsError):
    """A failure that may succeed later: timeouts, 429, 5xx, lost connections."""

    def __init__(self, message: str, *, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class PermanentError(GpuJobsError):
    """A failure that retrying cannot fix: bad input, not found, price cap, no stock anywhere."""


class JobCancelled(GpuJobsError):
    """Raised inside a handler when the job's cancellation was requested; the engine records it."""
