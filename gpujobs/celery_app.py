"""The Celery app, created inside the Flask factory so every task runs in an app context."""

from __future__ import annotations

from celery import Celery, Task
from flask import Flask

from gpujobs.broker import celery_broker_settings

# Every module that defines tasks; a worker imports them all at start.
TASK_MODULES = ["gpujobs.tasks", "gpujobs.provisioning.tasks"]


def celery_init_app(app: Flask) -> Celery:
    """Create the Celery app for ``app`` from the top-level ``celeryconfig`` and ``REDIS_URL``."""

    class FlaskTask(Task):
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery = Celery(app.name, task_cls=FlaskTask, include=TASK_MODULES)
    celery.config_from_object("celeryconfig")
    if app.config.get("REDIS_URL"):
        celery.conf.update(celery_broker_settings(app.config))
    celery.set_default()
    app.extensions["celery"] = celery
    return celery
