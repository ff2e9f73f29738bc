"""The exception tree and its one mapping to problem documents (``gpujobs.api.errors``)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field, ValidationError

from gpujobs.api.errors import ANSWERED, problem_of
from gpujobs.config import ConfigError
from gpujobs.exceptions import (
    Conflict,
    GpuJobsError,
    InvalidField,
    JobCancelled,
    NotFound,
    PermanentError,
    TransientError,
)
from gpujobs.videos import UnsupportedVideo, VideoTooLarge


class Numbers(BaseModel):
    numbers: list[int] = Field(max_length=2)
    label: str


@pytest.mark.parametrize(
    ("error", "status", "title"),
    [
        (NotFound("no job 1"), 404, "Not Found"),
        (Conflict("this dead letter was already redriven"), 409, "Conflict"),
        (UnsupportedVideo("'a.txt' is not a video file"), 415, "Unsupported Media Type"),
        (VideoTooLarge("the video is larger than 10 bytes"), 413, "Content Too Large"),
    ],
)
def test_a_refusal_answers_its_status_with_the_message_as_detail(error, status, title):
    answer = problem_of(error)
    assert (answer.status, answer.title, answer.detail, answer.extra) == (status, title, str(error), {})


def test_an_invalid_field_is_a_422_naming_the_field():
    answer = problem_of(InvalidField("webhookUrl", "URL has no host"))
    assert (answer.status, answer.title, answer.detail) == (
        422,
        "Unprocessable Content",
        "invalid value for: webhookUrl",
    )
    assert answer.extra == {"errors": [{"field": "webhookUrl", "message": "URL has no host"}]}


def test_pydantic_errors_become_one_invalid_field_per_path_under_the_prefix():
    with pytest.raises(ValidationError) as raised:
        Numbers.model_validate({"numbers": ["x", "y", 3]})
    error = InvalidField.from_validation(raised.value, ("params",))
    fields = [field for field, _ in error.errors]
    assert error.field == fields[0]
    assert {"params.numbers", "params.label"} <= set(fields)
    detail = problem_of(error).detail
    assert detail.startswith("invalid value for: ") and detail.count("params.label") == 1


def test_failures_of_jobs_and_of_configuration_have_no_http_answer():
    """They are bugs if they reach a view: Flask answers them 500 (and logs them), never as a refusal."""
    for error_class in (TransientError, PermanentError, JobCancelled, ConfigError):
        assert issubclass(error_class, GpuJobsError)
        assert not issubclass(error_class, ANSWERED)
