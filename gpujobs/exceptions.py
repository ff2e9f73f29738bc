"""Error classes shared by the engine, the Novita client, job handlers and the domain functions.

Two decisions live here. A failure that can fail a job is either *transient* (worth retrying with
backoff) or *permanent* (retrying cannot help, fail now with a clear reason), so the engine decides
retry-vs-fail in exactly one place. A refused request is *not found*, a *conflict* with the current
state, or an *invalid field*; ``gpujobs.api.errors`` maps each to one HTTP answer, so no view translates.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError


class GpuJobsError(Exception):
    """Base class for every error the service raises on purpose."""


class NotFound(GpuJobsError):
    """The tenant has no such thing (another tenant's counts as none: the two must not be told apart)."""


class Conflict(GpuJobsError):
    """A valid request that the thing's current state refuses (already redriven, not stopped, name taken)."""


class LimitReached(Conflict):
    """One more would pass one of the tenant's limits; names the limit, its value and the current use."""

    def __init__(self, name: str, limit: float, used: float, detail: str | None = None) -> None:
        super().__init__(detail or f"the tenant's {name} limit is reached: {used} of {limit}")
        self.name, self.limit, self.used = name, limit, used


class InvalidField(GpuJobsError):
    """Input the service cannot use; ``field`` names it as the API spells it (``params.numbers.0``).

    ``errors`` holds every ``(field, message)`` when a model refused several at once.
    """

    def __init__(self, field: str, message: str, *, errors: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.field = field
        self.errors = tuple(errors) or ((field, message),)

    @classmethod
    def from_validation(cls, exc: ValidationError, prefix: tuple[str, ...] = ()) -> InvalidField:
        """Each field pydantic refused, by its dotted path under ``prefix`` (``body`` for the whole).

        A value no member of a union accepts is one field with one message naming what each member
        wanted (``priority``: "Input should be 'low', ... or 'critical'; or an integer"), not one
        error per member under pydantic's names for them (``priority.constrained-int``).
        """
        raw = exc.errors(include_url=False, include_input=False, include_context=False)
        stripped = [_without_union_members(error["loc"]) for error in raw]
        members_tried: dict[tuple[Any, ...], int] = {}
        for error, loc in zip(raw, stripped, strict=True):
            if loc != tuple(error["loc"]):
                members_tried[loc] = members_tried.get(loc, 0) + 1
        by_field: dict[str, list[str]] = {}
        for error, loc in zip(raw, stripped, strict=True):
            where = loc if members_tried.get(loc, 0) > 1 else error["loc"]
            field = ".".join(str(part) for part in (*prefix, *where)) or "body"
            message = _PYDANTIC_PREFIX.sub("", error["msg"])
            if message not in by_field.setdefault(field, []):
                by_field[field].append(message)
        errors = [
            (field, "; or ".join([messages[0], *(m[:1].lower() + m[1:] for m in messages[1:])]))
            for field, messages in by_field.items()
        ]
        return cls(errors[0][0], errors[0][1], errors=errors)


# The location pydantic gives the member of a union it tried: ``int``, ``constrained-int``,
# ``literal['low','high']``, ``function-after[...]``. Only dropped where two or more errors meet at one
# place once it is dropped, as a union's members do; a client's own keys spelled so (``int`` and
# ``float`` of one object, both refused) are then reported at their object, a rare loss of precision.
_UNION_MEMBER = re.compile(r"[a-z]+(?:-[a-z]+)*\[.*\]|constrained-[a-z]+|int|float|str|bool|bytes")
# What pydantic puts before the message of a ValueError or an assert raised by a validator.
_PYDANTIC_PREFIX = re.compile(r"^(?:Value error|Assertion failed), ")


def _without_union_members(loc: Sequence[Any]) -> tuple[Any, ...]:
    return tuple(part for part in loc if not (isinstance(part, str) and _UNION_MEMBER.fullmatch(part)))


class TransientError(GpuJobsError):
    """A failure that may succeed later: timeouts, 429, 5xx, lost connections."""

    def __init__(self, message: str, *, retry_after_seconds: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class PermanentError(GpuJobsError):
    """A failure that retrying cannot fix: bad input, not found, price cap, no stock anywhere."""


class JobCancelled(GpuJobsError):
    """Raised inside a handler when the job's cancellation was requested; the engine records it."""
