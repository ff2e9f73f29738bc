"""A client of the seed systems moves over: their documented requests replayed against the running service.

Every curl example of the Job Server's README is sent as written (``../shared/seeds/004_*.txt``), over
real HTTP to the app, with an API key added and the service's base URL in place of
``http://localhost:3000``; a real worker runs the jobs. The example answers in that README name the fields
a client reads: each must be in our answer. The GPU queue's documented ``CREATE_INSTANCE`` payload
(``002_*.txt``) goes to ``POST /v1/instances`` as the README's "Moving from the seed systems" table says,
and provisions an instance on the Novita simulator. Its MONITOR_INSTANCE and SEND_WEBHOOK payloads need
features of their own (``POST /v1/instances/monitor``, ``webhook.send@1``) and are replayed with them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from support.gpu import API_KEY, MONITOR_INTERVAL_SECONDS, PHASE_SECONDS, wait_for_job
from support.media import make_clip
from support.polling import wait_for
from support.receivers import Receiver
from support.tenants import grant, secret_of, set_limits

from gpujobs import outbound
from gpujobs.novita.sim.seed import PUBLIC_TEMPLATE_ID
from gpujobs.novita.simulator import NovitaSimulator, run_simulator

JOB_TIMEOUT_SECONDS = 90  # two shared cores: a video encode or three failing attempts take a while

# The answers the README shows, reduced to the fields they name (values are the README's own).
DEFINITIONS_ANSWER = {
    "definitions": [
        {
            "key": "encode.video",
            "version": 1,
            "defaultMaxAttempts": 2,
            "timeoutSeconds": 7200,
            "concurrencyLimit": 3,
        }
    ]
}
ENCODE_ANSWER = {"jobId": "", "status": "queued", "message": "Video encoding job created", "inputFile": ""}
VIDEO_STATUS_ANSWER = {
    "jobId": "",
    "status": "succeeded",
    "definitionKey": "encode.video",
    "outputPath": "",
    "outputFilename": "",
    "downloadUrl": "",
}
BY_STATUS = {"queued": 0, "running": 0, "succeeded": 0, "failed": 0, "cancelling": 0, "cancelled": 0}
PERFORMANCE = {"successRate": 0.875, "avgProcessingTime": 45.2, "avgQueueTime": 12.5, "retryRate": 0.15}
METRICS_ANSWER = {
    "summary": {"total": 1000, "byStatus": BY_STATUS},
    "performance": PERFORMANCE,
    "throughput": {"lastHour": 120, "lastDay": 2400, "lastWeek": 16800},
}
DEFINITION_METRICS_ANSWER = {
    "definitions": [
        {
            "definitionKey": "echo",
            "definitionVersion": 1,
            "total": 500,
            "byStatus": BY_STATUS,
            "successRate": 0.94,
            "avgProcessingTime": 2.5,
            "avgQueueTime": 0.8,
        }
    ]
}
THROUGHPUT_ANSWER = {"data": [{"period": "2024-01-01T10:00:00.000Z", "completed": 50, "failed": 5}]}

# The "Available Job Definitions" examples, body for body.
DEFINITION_EXAMPLES = [
    {"definitionKey": "echo", "definitionVersion": 1, "params": {"message": "Hello World"}},
    {
        "definitionKey": "compute.math",
        "definitionVersion": 1,
        "params": {"operation": "fibonacci", "numbers": [35]},
    },
    {
        "definitionKey": "process.data",
        "definitionVersion": 1,
        "params": {"dataset": "sales-2024", "operation": "aggregate"},
    },
    {
        "definitionKey": "process.batch",
        "definitionVersion": 1,
        "params": {"items": ["item1", "item2", "item3"], "batchSize": 5},
    },
]
CALL_API_EXAMPLE = {
    "definitionKey": "call.api",
    "definitionVersion": 1,
    "params": {"endpoint": "https://api.example.com/users", "method": "GET"},
}
FAILING_EXAMPLE = {"definitionKey": "failing", "definitionVersion": 1, "params": {}}


def has_documented_fields(answer: Any, example: Any, path: str = "") -> list[str]:
    """The fields of the README's example answer missing from ours (first item of each list)."""
    if isinstance(example, dict):
        if not isinstance(answer, dict):
            return [path or "."]
        return [
            missing
            for key, value in example.items()
            for missing in (
                has_documented_fields(answer[key], value, f"{path}.{key}")
                if key in answer
                else [f"{path}.{key}"]
            )
        ]
    if isinstance(example, list) and example:
        return has_documented_fields(answer[0], example[0], f"{path}[0]") if answer else [f"{path}[0]"]
    return []


@pytest.fixture
def api(app: Flask, live_server: str, tenant: dict[str, str]) -> Iterator[Callable[..., requests.Response]]:
    """``curl`` against the running service with the tenant's key: ``api("POST", "/v1/jobs", json=...)``.

    The Job Server's examples send priority 10, which maps to ``critical``: the operator lets a migrating
    tenant use it (``tenants set-limits --max-priority critical``, README "Moving from the seed systems").
    """
    set_limits(app, tenant, max_priority=3)
    with requests.Session() as session:
        session.headers.update(tenant["headers"])

        def call(method: str, path: str, **kwargs: Any) -> requests.Response:
            return session.request(method, live_server + path, timeout=30, **kwargs)

        yield call


def job_id_of(response: requests.Response) -> str:
    """What the README's scripts do: ``jq -r '.jobId'``."""
    assert response.status_code == 202, response.text
    return response.json()["jobId"]


def test_the_job_server_readmes_job_examples_run_as_documented(app: Flask, api, worker):
    # POST /v1/jobs, the request of the reference section
    first = api(
        "POST",
        "/v1/jobs",
        json={
            "definitionKey": "echo",
            "definitionVersion": 1,
            "params": {"message": "Hello"},
            "priority": 5,
            "maxAttempts": 3,
            "idempotencyKey": "unique-key-123",
        },
    )
    job_id = job_id_of(first)
    assert (first.json()["priority"], first.json()["maxAttempts"]) == (5, 3)
    # Every "Available Job Definitions" example, then "Start and Monitor a Job"
    ids = [job_id_of(api("POST", "/v1/jobs", json=body)) for body in DEFINITION_EXAMPLES]
    monitored = job_id_of(
        api(
            "POST",
            "/v1/jobs",
            json={
                "definitionKey": "compute.math",
                "definitionVersion": 1,
                "params": {"operation": "fibonacci", "numbers": [35]},
                "priority": 10,
            },
        )
    )
    for each in [job_id, *ids, monitored]:
        wait_for_job(app, each, "succeeded", timeout=JOB_TIMEOUT_SECONDS)
    shown = api("GET", f"/v1/jobs/{monitored}").json()
    assert (shown["jobId"], shown["status"], shown["priority"]) == (monitored, "succeeded", 10)
    assert shown["result"]["results"] == [{"n": 35, "value": 9227465}]
    events = api("GET", f"/v1/jobs/{monitored}/events").json()["events"]
    assert (events[0]["type"], events[-1]["type"]) == ("job.queued", "job.succeeded")

    # GET /v1/jobs and its filters ("List All Jobs", and the reference's example)
    assert len(api("GET", "/v1/jobs").json()["items"]) == 6
    assert api("GET", "/v1/jobs?status=running").json()["items"] == []
    assert api("GET", "/v1/jobs?status=running&definitionKey=encode.video").status_code == 200
    math_jobs = api("GET", "/v1/jobs?definitionKey=compute.math").json()["items"]
    assert {job["jobId"] for job in math_jobs} == {ids[1], monitored}
    # GET /v1/definitions
    assert has_documented_fields(api("GET", "/v1/definitions").json(), DEFINITIONS_ANSWER) == []

    # failing@1 exhausts its attempts into the DLQ; list, inspect and retry it as the DLQ section does
    failed = job_id_of(api("POST", "/v1/jobs", json=FAILING_EXAMPLE))
    wait_for_job(app, failed, "failed", timeout=JOB_TIMEOUT_SECONDS)
    letters = api("GET", "/v1/dlq?limit=50").json()["items"]
    assert [letter["jobId"] for letter in letters] == [failed]
    letter = api("GET", f"/v1/dlq/{letters[0]['id']}").json()
    assert letter["job"]["jobId"] == failed and letter["attempts"] == 3
    retried = api(
        "POST",
        f"/v1/dlq/{letters[0]['id']}/retry",
        headers={"Content-Type": "application/json"},
        data='{"maxAttempts": 5}',
    )
    assert job_id_of(retried) == failed
    assert retried.json()["maxAttempts"] - retried.json()["attempt"] == 5  # five attempts more

    # "View Metrics"
    assert has_documented_fields(api("GET", "/v1/metrics").json(), METRICS_ANSWER) == []
    assert (
        has_documented_fields(api("GET", "/v1/metrics/definitions").json(), DEFINITION_METRICS_ANSWER) == []
    )
    assert (
        has_documented_fields(api("GET", "/v1/metrics/throughput?hours=24").json(), THROUGHPUT_ANSWER) == []
    )
    assert has_documented_fields(api("GET", "/v1/metrics/performance").json(), PERFORMANCE) == []
    assert api("GET", "/v1/metrics?ttl=0").json()["throughput"]["lastHour"] >= 7


def test_cancelling_a_running_job_as_the_readme_does(app: Flask, api, worker):
    job_id = job_id_of(
        api("POST", "/v1/jobs", json={"definitionKey": "test.sleep", "params": {"seconds": 30}})
    )
    wait_for_job(app, job_id, "running", timeout=JOB_TIMEOUT_SECONDS)
    cancelling = api("POST", f"/v1/jobs/{job_id}/cancel")
    assert cancelling.status_code == 202 and cancelling.json()["jobId"] == job_id
    wait_for_job(app, job_id, "cancelled", timeout=JOB_TIMEOUT_SECONDS)


def test_the_call_api_example_is_accepted_as_written(api, monkeypatch):
    # This sandbox has no DNS; api.example.com has public addresses, which is all the submit check asks.
    monkeypatch.setattr(outbound, "_resolve", lambda host, port: ["93.184.215.14"])
    accepted = api("POST", "/v1/jobs", json=CALL_API_EXAMPLE)
    assert job_id_of(accepted) == accepted.json()["id"]


def test_the_job_server_readmes_video_workflow_runs_as_documented(app: Flask, api, worker, tmp_path: Path):
    clip = make_clip(tmp_path / "video.mp4")
    # "Complete Video Encoding Workflow": upload with the README's form, then status, events, download
    with clip.open("rb") as video:
        encoded = api(
            "POST", "/v1/videos/encode", files={"video": video}, data={"quality": "1080p", "priority": "10"}
        )
    job_id = job_id_of(encoded)
    assert has_documented_fields(encoded.json(), ENCODE_ANSWER) == []
    assert encoded.json()["message"] == "Video encoding job created"
    wait_for_job(app, job_id, "succeeded", timeout=JOB_TIMEOUT_SECONDS)
    status = api("GET", f"/v1/videos/{job_id}/status").json()
    assert has_documented_fields(status, VIDEO_STATUS_ANSWER) == []
    assert (status["definitionKey"], status["status"]) == ("encode.video", "succeeded")
    assert api("GET", f"/v1/jobs/{job_id}/events").json()["events"]
    download = api("GET", f"/v1/videos/{job_id}/download")
    assert download.status_code == 200 and download.content[4:8] == b"ftyp"  # an MP4
    # The reference's example with an explicit format
    with clip.open("rb") as video:
        again = api(
            "POST",
            "/v1/videos/encode",
            files={"video": video},
            data={"format": "mp4", "quality": "1080p", "priority": "10"},
        )
    assert api("GET", f"/v1/jobs/{job_id_of(again)}").json()["priority"] == 10


@pytest.fixture
def sim() -> Iterator[NovitaSimulator]:
    """The Novita simulator, as the GPU tests run it."""
    with run_simulator(API_KEY, phase_seconds=PHASE_SECONDS) as simulator:
        yield simulator


def test_the_gpu_queues_create_instance_payload_provisions_an_instance(
    app: Flask, api, tenant, sim, start_worker
):
    start_worker(
        3,
        name="gpu",
        NOVITA_API_KEY=API_KEY,
        NOVITA_BASE_URL=sim.base_url,
        GPUJOBS_MONITOR_INTERVAL_SECONDS=MONITOR_INTERVAL_SECONDS,
    )
    grant(app, tenant, "template", PUBLIC_TEMPLATE_ID)  # templates are the operator's to grant
    receiver = Receiver(secret_of(app, tenant))
    try:
        # jobQueue.addJob(JobType.CREATE_INSTANCE, {...}, JobPriority.HIGH): the payload as documented,
        # but for the seed's own instanceId (gpujobs assigns it and answers it) and the placeholders:
        # a template that exists on the account and a receiver of our own.
        payload = {
            "name": "My GPU Instance",
            "productName": "RTX 4090 24GB",
            "templateId": PUBLIC_TEMPLATE_ID,
            "gpuNum": 2,
            "rootfsSize": 100,
            "region": "CN-HK-01",
            "webhookUrl": receiver.url,
        }
        accepted = api("POST", "/v1/instances", json={**payload, "priority": "high"})
        job_id = job_id_of(accepted)
        wait_for_job(app, job_id, "succeeded", timeout=JOB_TIMEOUT_SECONDS)
        instance = api("GET", f"/v1/instances/{accepted.json()['instanceId']}").json()
        assert (instance["status"], instance["label"], instance["gpuNum"]) == (
            "running",
            "My GPU Instance",
            2,
        )
        job = api("GET", f"/v1/jobs/{job_id}").json()  # jobQueue.getJob(jobId)
        assert (job["status"], job["priority"]) == ("succeeded", "high")
        running = wait_for_event(receiver, "instance.running")
        assert running["data"]["instance"]["id"] == instance["id"]
    finally:
        receiver.close()


def wait_for_event(receiver: Receiver, event_type: str) -> dict[str, Any]:
    """The first verified delivery of ``event_type``."""
    wait_for(
        lambda: any(event["type"] == event_type for event in receiver.verified), timeout=JOB_TIMEOUT_SECONDS
    )
    return next(event for event in receiver.verified if event["type"] == event_type)
