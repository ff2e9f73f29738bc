"""gpujobs' Celery settings under Celery's conventional module name, for tools that look for one.

The settings live, one comment each, in ``gpujobs/celery_settings.py``; the app loads them from there
itself, so the package works from any directory and never imports this module.
"""

from gpujobs.celery_settings import (  # noqa: F401  (re-exported: this module only names them)
    JOB_QUEUES,
    SERVICE_QUEUES,
    accept_content,
    beat_schedule,
    broker_channel_error_retry,
    broker_connection_max_retries,
    broker_connection_retry,
    broker_connection_retry_on_startup,
    broker_transport_options,
    broker_url,
    enable_utc,
    result_backend,
    task_acks_late,
    task_default_queue,
    task_ignore_result,
    task_queues,
    task_reject_on_worker_lost,
    task_routes,
    task_send_sent_event,
    task_serializer,
    task_soft_time_limit,
    task_time_limit,
    timezone,
    worker_cancel_long_running_tasks_on_connection_loss,
    worker_enable_soft_shutdown_on_idle,
    worker_max_tasks_per_child,
    worker_prefetch_multiplier,
    worker_send_task_events,
    worker_soft_shutdown_timeout,
)
