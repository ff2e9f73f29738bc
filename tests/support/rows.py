"""Detached copies of rows, read in a context of their own so a test can poll while workers commit.

Each call pushes its own app context: Flask-SQLAlchemy removes the session when the context ends, so a
poll never sees an object cached by an earlier one.
"""

from __future__ import annotations

import uuid

from flask import Flask
from sqlalchemy import select

from gpujobs.extensions import db
from gpujobs.models import Instance, Job, JobEvent


def job_row(app: Flask, job_id: str | uuid.UUID) -> Job:
    """A detached copy of a job row."""
    with app.app_context():
        job = db.session.get(Job, uuid.UUID(str(job_id)))
        db.session.expunge(job)
    return job


def instance_row(app: Flask, instance_id: str | uuid.UUID) -> Instance:
    """A detached copy of an instance row."""
    with app.app_context():
        instance = db.session.get(Instance, uuid.UUID(str(instance_id)))
        db.session.expunge(instance)
    return instance


def events(app: Flask, job_id: str | uuid.UUID) -> list[JobEvent]:
    """A job's timeline, detached."""
    with app.app_context():
        rows = db.session.scalars(
            select(JobEvent).where(JobEvent.job_id == uuid.UUID(str(job_id))).order_by(JobEvent.id)
        ).all()
        db.session.expunge_all()
    return list(rows)


def event_types(app: Flask, job_id: str | uuid.UUID) -> list[str]:
    """The types of a job's events, oldest first."""
    return [event.type for event in events(app, job_id)]
