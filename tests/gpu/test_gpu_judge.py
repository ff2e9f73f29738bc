"""What one look concludes from Novita's view of an instance (`monitor.judge`), and the watch it carries."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from gpujobs.novita import Instance as NovitaInstance
from gpujobs.provisioning.monitor import CREATE, START, Verdict, Watch, judge

NOW = datetime.now(UTC)


def exited(**times: datetime) -> NovitaInstance:
    return NovitaInstance(id="0123456789abcdef", name="gpujobs-x", status="exited", **times)


def test_a_create_left_stopped_is_started_once_whether_or_not_novita_reports_start_times():
    assert judge(CREATE, exited()).verdict == Verdict.START  # a server that sends no startedAt
    assert judge(CREATE, exited(created_at=NOW)).verdict == Verdict.START


def test_an_instance_that_exits_again_after_gpujobs_started_it_fails_instead_of_being_restarted():
    """NOVITA_API.md §8: `exited` without a stop request is a failure; a server that sends no start times
    would otherwise have a crashing container restarted until the create timed out, billing."""
    judgement = judge(CREATE, exited(), started_by_us=True)
    assert (judgement.verdict, judgement.reason) == (
        Verdict.FAIL,
        "the instance exited again after gpujobs started it",
    )


def test_an_instance_novita_reports_started_before_that_exits_fails_at_once():
    judgement = judge(CREATE, exited(created_at=NOW, started_at=NOW))
    assert (judgement.verdict, judgement.reason) == (
        Verdict.FAIL,
        "the instance exited without a stop request",
    )
    assert judge(START, exited(started_at=NOW)).verdict == Verdict.FAIL


def test_a_watch_carries_its_start_through_the_task_arguments_and_reads_a_look_published_without_it():
    watch = Watch(uuid.uuid4(), 2, uuid.uuid4(), CREATE, 1.0, 1.0, 600.0, 5.0, started_by_us=True)
    args = [str(watch.job_id), watch.attempt, *watch.handoff().args]
    assert Watch.from_args(*args) == watch
    older = Watch.from_args(*args[:-1])  # a look published before the flag was carried
    assert older.started_by_us is False and older.interval == 5.0
