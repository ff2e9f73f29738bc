"""The fault-injection scenarios in a short form: every accepted job survives every fault, once."""

from __future__ import annotations

import pytest

from bench.faults import (
    REDIS_DOWN_SECONDS,
    REPUBLISH_AFTER_SECONDS,
    SWEEP_LATENCY_ALLOWANCE_SECONDS,
    SWEEP_SECONDS,
    run,
    run_failover,
)


@pytest.mark.slow  # a whole deployment, faulted: about 90 s
def test_no_accepted_job_is_lost_or_completed_twice_through_kills_wipes_outages_and_pauses(tmp_path):
    report = run(jobs=40, work_ms=200, data_dir=tmp_path)
    assert report.accepted > 0
    assert report.lost == 0 and report.not_terminal == 0
    assert report.duplicate_completions == 0
    assert report.server_errors_5xx == 0  # PostgreSQL down means 503, never 500
    assert report.statuses == {"succeeded": report.accepted}
    # Redis down 10 s and back empty while jobs ran: no worker or beat process was replaced.
    assert f"Redis down {REDIS_DOWN_SECONDS:g} s, back empty" in report.recovery_seconds
    assert report.pids_changed == 0
    # A message lost from a busy queue was sent again within the bound, while messages still waited.
    assert report.lost_message_republished_after is not None
    bound = REPUBLISH_AFTER_SECONDS + SWEEP_SECONDS + SWEEP_LATENCY_ALLOWANCE_SECONDS
    assert REPUBLISH_AFTER_SECONDS <= report.lost_message_republished_after <= bound
    assert report.lost_message_queue_at_republish
    assert report.ok


@pytest.mark.slow  # a Sentinel deployment and a whole service on it: about 40 s
def test_no_accepted_job_is_lost_through_a_sentinel_failover_and_no_process_is_restarted(tmp_path):
    report = run_failover(jobs=20, work_ms=200, data_dir=tmp_path)
    assert report.accepted > 0
    assert report.lost == 0 and report.not_terminal == 0
    assert report.duplicate_completions == 0 and report.server_errors_5xx == 0
    assert report.statuses == {"succeeded": report.accepted}
    assert report.failover_seconds is not None and report.pids_changed == 0
    assert report.ok
