"""Schedules run by beat's domain function with injected clocks: on time, once per tick, never twice."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text, update

from gpujobs import schedules
from gpujobs.exceptions import InvalidField, NotFound
from gpujobs.extensions import db
from gpujobs.models import Job, Schedule

T0 = datetime(2024, 5, 6, 10, 2, tzinfo=UTC)


def at(hour: int, minute: int, second: float = 0, day: int = 6) -> datetime:
    return datetime(2024, 5, day, hour, minute, tzinfo=UTC) + timedelta(seconds=second)


def make_schedule(tenant: dict, name: str = "every-5-min", cron: str = "*/5 * * * *", **options) -> Schedule:
    options.setdefault("now", T0)
    return schedules.create(
        uuid.UUID(tenant["id"]),
        name=name,
        cron=cron,
        definition_key=options.pop("definition_key", "echo"),
        definition_version=1,
        params=options.pop("params", {"message": name}),
        **options,
    )


def scheduled_jobs() -> list[Job]:
    return list(db.session.scalars(select(Job).where(Job.idempotency_key.like("schedule:%"))))


def test_a_schedule_fires_at_its_tick_and_not_a_moment_before(app_context, tenant):
    schedule = make_schedule(tenant, priority="high")
    assert schedule.next_run_at == at(10, 5)
    assert schedules.run_due_schedules(now=at(10, 4, 59.999)) == 0
    assert schedules.run_due_schedules(now=at(10, 5)) == 1
    assert schedules.run_due_schedules(now=at(10, 5, 30)) == 0
    [job] = scheduled_jobs()
    assert (job.definition_key, job.params["message"], job.priority, job.status) == (
        "echo",
        "every-5-min",
        2,
        "queued",
    )
    assert job.idempotency_key == f"schedule:{schedule.id}:2024-05-06T10:05:00+00:00"
    schedule = db.session.get(Schedule, schedule.id)
    assert (schedule.next_run_at, schedule.last_run_at) == (at(10, 10), at(10, 5))


def test_ticks_missed_during_downtime_run_once_and_the_schedule_goes_on_from_now(app_context, tenant):
    schedule = make_schedule(tenant)
    assert schedules.run_due_schedules(now=at(13, 47)) == 1  # 44 ticks were missed
    assert schedules.run_due_schedules(now=at(13, 47, 10)) == 0
    [job] = scheduled_jobs()
    assert job.idempotency_key.endswith(":2024-05-06T10:05:00+00:00")  # the first missed tick
    assert db.session.get(Schedule, schedule.id).next_run_at == at(13, 50)
    assert schedules.run_due_schedules(now=at(13, 50)) == 1


def test_two_beats_racing_on_the_same_tick_queue_each_schedule_once(app, app_context, tenant):
    ids = {make_schedule(tenant, name=f"s{i}").id for i in range(20)}
    start, counts = threading.Barrier(4), []

    def beat() -> None:
        # one context per thread, as each beat process has its own
        with app.app_context():
            start.wait()
            counts.append(schedules.run_due_schedules(now=at(10, 5, 1)))

    threads = [threading.Thread(target=beat) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    jobs = scheduled_jobs()
    assert sum(counts) == 20 and len(jobs) == 20
    assert {key.split(":")[1] for key in (job.idempotency_key for job in jobs)} == {str(i) for i in ids}


def test_a_schedule_another_beat_holds_is_skipped_not_waited_for(app_context, tenant):
    schedule = make_schedule(tenant)
    with db.engine.connect() as other_beat:
        other_beat.execute(text("SELECT 1 FROM schedules WHERE id = :id FOR UPDATE"), {"id": schedule.id})
        assert schedules.run_due_schedules(now=at(10, 5)) == 0
        other_beat.rollback()
    assert schedules.run_due_schedules(now=at(10, 5)) == 1


def test_a_tick_already_queued_is_not_queued_again_even_from_a_rewound_row(app_context, tenant):
    schedule = make_schedule(tenant)
    assert schedules.run_due_schedules(now=at(10, 5)) == 1
    # As if the row came back from a backup taken before that tick ran.
    db.session.execute(update(Schedule).where(Schedule.id == schedule.id).values(next_run_at=at(10, 5)))
    db.session.commit()
    assert schedules.run_due_schedules(now=at(10, 6)) == 0
    assert len(scheduled_jobs()) == 1
    assert db.session.get(Schedule, schedule.id).next_run_at == at(10, 10)  # not stuck on the old tick


def test_a_broken_schedule_is_moved_on_without_a_job_and_does_not_stop_the_others(app_context, tenant):
    broken = make_schedule(tenant, name="broken")
    make_schedule(tenant, name="fine")
    db.session.execute(update(Schedule).where(Schedule.id == broken.id).values(definition_key="retired"))
    db.session.commit()
    assert schedules.run_due_schedules(now=at(10, 5)) == 1
    assert [job.params["message"] for job in scheduled_jobs()] == ["fine"]
    assert db.session.get(Schedule, broken.id).next_run_at == at(10, 10)


def test_a_paused_schedule_never_fires_and_resumes_from_its_next_tick(app_context, tenant):
    schedule = make_schedule(tenant)
    tenant_id = uuid.UUID(tenant["id"])
    assert schedules.change(schedule.id, tenant_id, enabled=False).enabled is False
    assert schedules.run_due_schedules(now=at(12, 0)) == 0
    resumed = schedules.change(schedule.id, tenant_id, enabled=True, now=at(12, 1))
    assert resumed.enabled and resumed.next_run_at == at(12, 5)  # the ticks missed while paused are dropped
    assert schedules.run_due_schedules(now=at(12, 4)) == 0
    assert schedules.run_due_schedules(now=at(12, 5)) == 1
    with pytest.raises(NotFound):  # another tenant's
        schedules.change(schedule.id, uuid.uuid4(), enabled=False)


def test_a_daily_schedule_keeps_its_local_time_across_a_daylight_saving_change(app_context, tenant):
    start = datetime(2024, 3, 9, 12, 0, tzinfo=UTC)
    schedule = make_schedule(tenant, cron="0 9 * * *", timezone="America/New_York", now=start)
    assert schedule.next_run_at == datetime(2024, 3, 9, 14, 0, tzinfo=UTC)  # 09:00 EST
    assert schedules.run_due_schedules(now=schedule.next_run_at) == 1
    after_change = db.session.get(Schedule, schedule.id).next_run_at
    assert after_change == datetime(2024, 3, 10, 13, 0, tzinfo=UTC)  # 09:00 EDT


@pytest.mark.parametrize(
    ("cron", "after", "expected"),
    [
        # Clocks go back in Berlin at 03:00 CEST on 27 Oct 2024: 02:30 happens twice, runs once.
        ("30 2 * * *", datetime(2024, 10, 27, 0, 30, tzinfo=UTC), datetime(2024, 10, 28, 1, 30, tzinfo=UTC)),
        # An hourly job still runs in both of those hours.
        ("0 * * * *", datetime(2024, 10, 27, 0, 0, tzinfo=UTC), datetime(2024, 10, 27, 1, 0, tzinfo=UTC)),
        # Clocks go forward at 02:00 CET on 31 Mar 2024: 02:30 does not exist, it runs at 03:00.
        ("30 2 * * *", datetime(2024, 3, 30, 12, 0, tzinfo=UTC), datetime(2024, 3, 31, 1, 0, tzinfo=UTC)),
        ("@daily", datetime(2024, 5, 6, 21, 59, tzinfo=UTC), datetime(2024, 5, 6, 22, 0, tzinfo=UTC)),
    ],
)
def test_the_next_run_follows_the_wall_clock_of_the_time_zone(cron, after, expected):
    assert schedules.next_run_after(cron, "Europe/Berlin", after) == expected


@pytest.mark.parametrize(
    ("cron", "timezone", "field"),
    [
        ("61 * * * *", "UTC", "cron"),
        ("* * * * * *", "UTC", "cron"),
        ("0 0 31 2 *", "UTC", "cron"),
        ("@reboot", "UTC", "cron"),
        ("H * * * *", "UTC", "cron"),
        ("* * * * *", "Mars/Olympus_Mons", "timezone"),
        ("* * * * *", "../../etc/passwd", "timezone"),
    ],
)
def test_unusable_crons_and_time_zones_are_refused_naming_the_field(cron, timezone, field):
    with pytest.raises(InvalidField) as raised:
        schedules.next_run_after(cron, timezone, T0)
    assert raised.value.field == field
