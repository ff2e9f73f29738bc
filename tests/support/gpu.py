"""Constants and helpers of the GPU workflow tests: the simulator's settings, requests, the monitor chain."""

from __future__ import annotations

import base64
import json
import time
import uuid
from datetime import datetime
from typing import Any

from flask import Flask

from gpujobs.models import Job
from gpujobs.novita import CreateInstanceRequest, NovitaClient
from support.polling import wait_for
from support.rows import job_row

API_KEY = "sk_test_gpu_workflow"
# Each lifecycle phase (pending, toCreate, creating, pulling, ...) lasts this long: create to running ~1 s.
PHASE_SECONDS = 0.25
MONITOR_INTERVAL_SECONDS = "0.3"
IMAGE = "pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime"
REQUEST = {"productName": "RTX 4090 24GB", "region": "CN-HK-01", "imageUrl": IMAGE}


def novita_name(app: Flask, job_id: str | uuid.UUID) -> str:
    """The Novita name of a create job's instance under the deployment's prefix (`GPUJOBS_INSTANCE_PREFIX`
    or the one stored in the database)."""
    from gpujobs.provisioning.records import name_prefix

    with app.app_context():
        return f"{name_prefix()}{job_id}"


def provision(client: Any, tenant: dict[str, str], **changes: Any) -> dict[str, Any]:
    """POST /v1/instances with the default request plus `changes`; asserts the 202 and returns its body."""
    response = client.post("/v1/instances", json={**REQUEST, **changes}, headers=tenant["headers"])
    assert response.status_code == 202, response.json
    return response.json


def wait_for_job(app: Flask, job_id: str, *statuses: str, timeout: float = 30.0) -> Job:
    """Wait until the job is in one of `statuses` (running the dispatch sweep, as beat would)."""
    from gpujobs.sweeps import dispatch_due

    def done() -> Job | None:
        with app.app_context():
            dispatch_due()
        job = job_row(app, job_id)
        return job if job.status in statuses else None

    return wait_for(done, timeout=timeout, interval=0.2)  # type: ignore[return-value]


def next_monitor_look(app: Flask) -> list[Any] | None:
    """Take the next message of the `monitor` queue off Redis (no worker runs) and return its args, once
    its time has come: a worker holds a look until its ETA (the monitor interval), and a chain run at once
    would spend its looks before the simulator's instance had time to move."""
    import redis

    raw = redis.Redis.from_url(app.config["REDIS_URL"]).rpop("monitor")
    if raw is None:
        return None
    envelope = json.loads(raw)
    if eta := envelope["headers"].get("eta"):
        time.sleep(max(0.0, datetime.fromisoformat(eta).timestamp() - time.time()))
    args, _kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
    return args


def look(app: Flask, args: list[Any]) -> None:
    """Run one monitor look (the task's body) in this process."""
    from gpujobs.provisioning import monitor

    with app.app_context():
        monitor.poll(monitor.Watch.from_args(*args))


def run_looks(app: Flask, *, max_looks: int = 50) -> None:
    """Run the queued monitor looks in this process, at once, until the chain publishes no more."""
    for _ in range(max_looks):
        args = next_monitor_look(app)
        if args is None:
            break
        look(app, args)


def run_chain(
    app: Flask, tenant_id: str, params: dict[str, Any], *, max_looks: int = 50, **options: Any
) -> tuple[str, str]:
    """Run create -> monitor in this process, task by task, until the job ends; returns (job id, instance id).

    Needs the simulator's settings in the app config (the `novita_config` fixture); `options` go to
    `create.submit` (e.g. `webhook_url`).
    """
    from gpujobs import runner
    from gpujobs.operations import JobOptions
    from gpujobs.provisioning import create

    with app.app_context():
        job, instance = create.submit(uuid.UUID(tenant_id), params, JobOptions(**options))
        ids = str(job.id), str(instance.id)
        runner.run_job(job.id)
    run_looks(app, max_looks=max_looks)
    return ids


def create_at_novita(novita: NovitaClient, name: str, cluster_id: str = "as-sgp-2") -> str:
    """Create an instance at Novita directly, as a crashed worker or another tool would have; its id."""
    request = CreateInstanceRequest(
        name=name,
        product_id="4090.16c62g",
        cluster_id=cluster_id,
        image_url="ubuntu:22.04",
        rootfs_size_gb=20,
    )
    return novita.create_instance(request)
