"""The fault-injection scenario in a short form: every accepted job survives every fault, once."""

from __future__ import annotations

import pytest

from bench.faults import run


@pytest.mark.slow  # a whole deployment, faulted: about 30 s
def test_no_accepted_job_is_lost_or_completed_twice_through_kills_wipes_outages_and_pauses(tmp_path):
    report = run(jobs=40, work_ms=200, data_dir=tmp_path)
    assert report.accepted > 0
    assert report.lost == 0 and report.not_terminal == 0
    assert report.duplicate_completions == 0
    assert report.server_errors_5xx == 0  # PostgreSQL down means 503, never 500
    assert report.statuses == {"succeeded": report.accepted}
