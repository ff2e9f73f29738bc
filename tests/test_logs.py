"""Logs: ``GPUJOBS_LOG_FORMAT=json`` gives one JSON object per line in every process, with the ids of the
work it is about, and ``GPUJOBS_LOG_LEVEL`` reaches Celery (no ``--loglevel`` on its command line)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from support.polling import wait_for

from gpujobs.config import ConfigError, load_config
from gpujobs.dev.embedded import free_port
from gpujobs.states import JOB_TERMINAL


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line parsed; a line that is not one JSON object fails the test, naming it."""
    lines = []
    for line in text.splitlines():
        if line.strip():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                pytest.fail(f"not a JSON line: {line!r}")
    return lines


def test_a_worker_logs_json_lines_with_the_job_task_and_tenant_at_the_configured_level(
    client, tenant, start_worker
):
    worker = start_worker(GPUJOBS_LOG_FORMAT="json", GPUJOBS_LOG_LEVEL="DEBUG")
    body = {"definitionKey": "echo", "definitionVersion": 1, "params": {"message": "hi"}}
    job_id = client.post("/v1/jobs", json=body, headers=tenant["headers"]).json["id"]
    wait_for(
        lambda: client.get(f"/v1/jobs/{job_id}", headers=tenant["headers"]).json["status"] in JOB_TERMINAL
    )
    wait_for(lambda: "succeeded in" in worker.log())

    lines = json_lines(worker.log())
    assert {"DEBUG", "INFO"} <= {line["level"] for line in lines}  # GPUJOBS_LOG_LEVEL, not Celery's default
    about_job = [line for line in lines if line.get("job_id") == job_id]
    loggers = {line["logger"] for line in about_job}
    # Celery's own lines (received, succeeded) and ours (the runner's) all name the job and the task.
    assert {"celery.worker.strategy", "celery.app.trace", "gpujobs.runner"} <= loggers, about_job
    assert all(line.get("task_id") for line in about_job), about_job
    assert any(line.get("tenant") == tenant["id"] for line in about_job), about_job
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)


@pytest.fixture
def web(process_env: dict[str, str], tmp_path: Path):
    """A real gunicorn web process with gunicorn's own lines configured by ``gunicorn_logconfig_dict``."""
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text(
        "from gpujobs.logs import gunicorn_logconfig_dict\nlogconfig_dict = gunicorn_logconfig_dict()\n"
    )
    port = free_port()
    log_path = tmp_path / "web.log"
    env = dict(process_env, GPUJOBS_LOG_FORMAT="json", GPUJOBS_SECRET_KEY="k" * 32)
    gunicorn = [sys.executable, "-m", "gunicorn", "-c", str(conf)]
    command = [*gunicorn, "-b", f"127.0.0.1:{port}", "gpujobs.wsgi:app"]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, log_path.read_text()
        try:
            return requests.get(f"{base}/health", timeout=2).ok
        except requests.ConnectionError:
            return False

    wait_for(up, timeout=60)
    yield base, log_path
    process.terminate()
    process.wait(timeout=20)


def test_the_api_logs_json_lines_with_the_request_id_tenant_and_job(web, tenant, app):
    base, log_path = web
    body = {"definitionKey": "echo", "definitionVersion": 1, "params": {"message": "hi"}}
    headers = {**tenant["headers"], "X-Request-ID": "req-42"}
    answer = requests.post(f"{base}/v1/jobs", json=body, headers=headers, timeout=10)
    assert answer.status_code == 202 and answer.headers["X-Request-ID"] == "req-42"
    made_up = requests.get(f"{base}/health", timeout=10).headers["X-Request-ID"]
    assert len(made_up) == 32  # none given: one is made and sent back
    job_id = answer.json()["id"]

    queued = wait_for(
        lambda: [line for line in json_lines(log_path.read_text()) if line.get("job_id") == job_id]
    )
    assert queued[0]["request_id"] == "req-42" and queued[0]["tenant"] == tenant["id"], queued
    access = wait_for(
        lambda: [line for line in json_lines(log_path.read_text()) if line["logger"] == "gunicorn.access"]
    )
    assert access, "gunicorn's access log goes through the same JSON handler"


@pytest.mark.parametrize(("name", "value"), [("GPUJOBS_LOG_FORMAT", "xml"), ("GPUJOBS_LOG_LEVEL", "LOUD")])
def test_a_bad_log_setting_stops_start_up_with_its_name(name: str, value: str, tmp_path: Path):
    with pytest.raises(ConfigError, match=name):
        load_config({name: value, "GPUJOBS_DATA_DIR": str(tmp_path)})
