"""Request fields that several bodies share, defined once so that they validate and document alike."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from gpujobs.jobs import PriorityName

#: A job's priority: a name, or a number 0-10 (``jobs.priority_level`` maps it to a level).
Priority = Annotated[
    PriorityName | Annotated[int, Field(strict=True, ge=0, le=10)] | None,
    Field(description="a name, or 0-10 (higher is more urgent); default normal"),
]
#: Where a job's webhooks go (the SSRF guard checks the host when the job is submitted).
WebhookUrl = Annotated[str | None, Field(max_length=2000, pattern=r"^https?://")]
