"""The Celery app, created inside the Flask factory so every task runs in an app context."""

from __future__ import annotations

from celery import Celery, Task
from flask import Flask

from gpujobs import celery_settings, logs
from gpujobs.broker import celery_broker_settings
from gpujobs.channel_clients import reuse_channel_clients
from gpujobs.reconnect import patch_redis_transport

# Every module that defines tasks; a worker imports them all at start.
TASK_MODULES = ["gpujobs.tasks", "gpujobs.provisioning.tasks"]


def celery_init_app(app: Flask) -> Celery:
    """Create the Celery app for ``app`` from ``gpujobs.celery_settings`` and ``REDIS_URL``."""

    class FlaskTask(Task):
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    patch_redis_transport()  # a worker survives a broker that drops mid-task (gpujobs.reconnect)
    reuse_channel_clients()  # one Redis client per broker channel, not one per operation
    celery: Celery = Celery(app.name, task_cls=FlaskTask, include=TASK_MODULES)
    celery.config_from_object(celery_settings)
    if app.config.get("REDIS_URL"):
        celery.conf.update(celery_broker_settings(app.config, celery_settings.broker_transport_options))
    logs.init_celery(celery, app.config["GPUJOBS_LOG_FORMAT"])
    celery.set_default()
    app.extensions["celery"] = celery
    return celery
