"""Every built-in definition submitted over HTTP (``POST /v1/jobs``) and run by a real Celery worker."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from support.media import ffmpeg_pids_writing_to, make_clip
from support.polling import wait_for

from gpujobs.definitions import video
from gpujobs.extensions import db
from gpujobs.states import JOB_TERMINAL as TERMINAL
from gpujobs.sweeps import dispatch_due, rescue_stuck


def run_over_http(client, tenant, key: str, params: dict[str, Any], **options: Any) -> dict[str, Any]:
    """Submit a job through the API and wait for the worker to finish it."""
    body = {"definitionKey": key, "definitionVersion": 1, "params": params, **options}
    accepted = client.post("/v1/jobs", json=body, headers=tenant["headers"])
    assert accepted.status_code == 202, accepted.json

    def finished() -> dict[str, Any] | None:
        job = client.get(accepted.headers["Location"], headers=tenant["headers"]).json
        return job if job["status"] in TERMINAL else None

    return wait_for(finished, timeout=90, interval=0.2)


def progress_events(client, tenant, job: dict[str, Any]) -> list[dict[str, Any]]:
    events = client.get(f"/v1/jobs/{job['id']}/events", headers=tenant["headers"]).json["events"]
    return [event["data"] for event in events if event["type"] == "job.progress"]


def test_echo_returns_its_message_through_a_worker(client, tenant, worker):
    job = run_over_http(client, tenant, "echo", {"message": "hello", "data": {"n": 1}})
    assert job["status"] == "succeeded" and job["result"] == {"message": "hello", "data": {"n": 1}}


def test_failing_with_one_attempt_ends_failed_in_the_dead_letter_queue(client, tenant, worker):
    job = run_over_http(client, tenant, "failing", {}, maxAttempts=1)
    assert (job["status"], job["attempt"], job["deadLettered"]) == ("failed", 1, True)
    assert "attempt 1" in job["error"]
    letters = client.get("/v1/dlq", headers=tenant["headers"]).json["items"]
    assert [letter["jobId"] for letter in letters] == [job["id"]]


def test_compute_math_returns_exact_fibonacci_numbers(client, tenant, worker):
    job = run_over_http(client, tenant, "compute.math", {"operation": "fibonacci", "numbers": [10, 90]})
    assert job["result"]["results"] == [{"n": 10, "value": 55}, {"n": 90, "value": "2880067194370816120"}]


def test_process_data_aggregates_records_by_group(client, tenant, worker):
    rows = [{"region": "eu", "sales": 10}, {"region": "us", "sales": 5}, {"region": "eu", "sales": 2.5}]
    params = {"operation": "aggregate", "data": rows, "field": "sales", "groupBy": "region"}
    groups = run_over_http(client, tenant, "process.data", params)["result"]["groups"]
    assert {group["key"]: (group["count"], group["sum"]) for group in groups} == {
        "eu": (2, 12.5),
        "us": (1, 5),
    }


class _Recorder(BaseHTTPRequestHandler):
    """Answers every POST with JSON and remembers what it received."""

    received: list[tuple[str, str | None, Any]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.received.append((self.path, self.headers.get("X-Trace"), body))
        payload = json.dumps({"pong": body["ping"]}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def local_api() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    _Recorder.received = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_call_api_makes_a_real_http_request_to_a_local_server(client, tenant, worker, local_api):
    endpoint = f"http://127.0.0.1:{local_api.server_port}/hooks/ping"
    params = {"endpoint": endpoint, "method": "POST", "headers": {"X-Trace": "t-1"}, "body": {"ping": 7}}
    job = run_over_http(client, tenant, "call.api", params)
    assert job["status"] == "succeeded", job["error"]
    assert (job["result"]["statusCode"], job["result"]["body"]) == (201, {"pong": 7})
    assert _Recorder.received == [("/hooks/ping", "t-1", {"ping": 7})]


def test_process_batch_reports_progress_after_each_batch(client, tenant, worker):
    items = ["Alpha", "alpha ", "Beta", "gamma", "Delta", "epsilon", "ZETA"]
    job = run_over_http(client, tenant, "process.batch", {"items": items, "batchSize": 3})
    assert (job["result"]["processed"], job["result"]["batches"], job["result"]["uniqueCount"]) == (7, 3, 6)
    progress = progress_events(client, tenant, job)
    assert [event["processed"] for event in progress] == [3, 6, 7]
    assert [event["percent"] for event in progress] == [42.86, 85.71, 100.0]


def test_encode_video_transcodes_an_upload_to_webm(client, tenant, worker, app):
    storage = app.config["GPUJOBS_STORAGE_DIR"]
    make_clip(
        video.upload_dir(storage, tenant["id"]) / "through_worker.mp4", seconds=1, size="160x120", rate=10
    )
    params = {"inputFile": "through_worker.mp4", "format": "webm", "resolution": "720p", "quality": "low"}
    job = run_over_http(client, tenant, "encode.video", params)
    assert job["status"] == "succeeded", job["error"]
    result = job["result"]
    assert (result["width"], result["height"], result["format"]) == (960, 720, "webm")
    output = video.output_path(storage, job["id"], "webm")
    assert output.stat().st_size == result["sizeBytes"] > 0
    assert progress_events(client, tenant, job)[-1]["percent"] == 100


def test_ffmpeg_dies_with_the_pool_process_that_ran_it_and_the_job_goes_on(client, tenant, worker, app):
    storage = app.config["GPUJOBS_STORAGE_DIR"]
    make_clip(
        video.upload_dir(storage, tenant["id"]) / "killed_worker.mp4", seconds=10, size="640x480", rate=30
    )
    params = {"inputFile": "killed_worker.mp4", "resolution": "4k", "quality": "high"}
    body = {"definitionKey": "encode.video", "definitionVersion": 1, "params": params}
    accepted = client.post("/v1/jobs", json=body, headers=tenant["headers"])
    assert accepted.status_code == 202, accepted.json
    partial = video.output_path(storage, accepted.json["id"], "mp4").with_suffix("")  # <outputs>/<job id>
    ffmpeg = wait_for(lambda: ffmpeg_pids_writing_to(partial), timeout=60)
    pool_process = int(Path(f"/proc/{ffmpeg[0]}/stat").read_text().split(") ")[1].split()[1])
    assert pool_process in worker.child_pids()
    os.kill(pool_process, signal.SIGKILL)  # what the OOM killer or a hard time limit does
    wait_for(lambda: ffmpeg[0] not in ffmpeg_pids_writing_to(partial), timeout=5)

    def encoding_again() -> bool:
        """The sweeps beat would run: the lease rescue gives the job a new attempt, with a new FFmpeg."""
        with app.app_context():
            rescue_stuck()
            dispatch_due()
            db.session.remove()
        return bool(set(ffmpeg_pids_writing_to(partial)) - set(ffmpeg))

    wait_for(encoding_again, timeout=60, interval=0.5)
    client.post(f"/v1/jobs/{accepted.json['id']}/cancel", headers=tenant["headers"])


def test_routes_generate_beats_the_given_order(client, tenant, worker):
    rng = random.Random(11)
    locations = [
        {"id": f"L{i}", "lat": rng.uniform(40.6, 40.9), "lng": rng.uniform(-74.1, -73.8)} for i in range(30)
    ]
    job = run_over_http(client, tenant, "routes.generate", {"locations": locations})
    result = job["result"]
    assert sorted(stop["index"] for stop in result["stops"]) == list(range(30))
    assert result["totalDistanceKm"] < result["naiveDistanceKm"] and result["stoppedEarly"] is False
