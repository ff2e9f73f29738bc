"""Webhook deliveries have their own worker pool: a receiver that holds every request takes no job time."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import yaml
from support.polling import wait_for
from support.rows import job_row
from support.tenants import make_tenant

from bench.receiver import LoopbackReceiver
from gpujobs.celery_settings import JOB_QUEUES, WEBHOOK_THREADS, WORKER_QUEUES
from gpujobs.config import SETTINGS
from gpujobs.dev.devserver import process_commands, worker_command
from gpujobs.webhooks import WEBHOOKS_QUEUE

ROOT = Path(__file__).resolve().parent.parent
# How long the receiver holds each request: longer than the test waits for the other tenant's job.
HOLD_SECONDS = 20.0


def _queues_of(command: list[str]) -> tuple[str, ...]:
    return tuple(command[command.index("-Q") + 1].split(","))


def test_job_workers_never_read_the_webhooks_queue_and_the_webhook_worker_reads_only_it():
    assert WEBHOOKS_QUEUE not in WORKER_QUEUES["jobs"]
    assert set(JOB_QUEUES) <= set(WORKER_QUEUES["jobs"])
    assert _queues_of(worker_command("jobs")) == WORKER_QUEUES["jobs"]
    assert _queues_of(worker_command("webhooks")) == (WEBHOOKS_QUEUE,)


def test_the_procfile_and_compose_start_each_role_with_its_queues():
    procfile = dict(
        line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if ": " in line
    )
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for process, role in (("worker", "jobs"), ("webhooks", "webhooks")):
        assert _queues_of(procfile[process].split()) == WORKER_QUEUES[role]
        assert _queues_of(services[process]["command"]) == WORKER_QUEUES[role]


def test_a_receiver_that_holds_every_request_does_not_delay_another_tenants_job(app, client, start_worker):
    released = threading.Event()
    held: list[float] = []

    def hold(headers: dict[str, str], body: bytes) -> int:
        held.append(time.monotonic())
        released.wait(HOLD_SECONDS)
        return 204

    receiver = LoopbackReceiver(hold)
    try:
        start_worker(concurrency=1, name="jobs", role="jobs")
        start_worker(concurrency=1, name="hooks", role="webhooks")
        slow, other = make_tenant(app, "slow-receiver"), make_tenant(app, "other")
        for index in range(3):
            params = {"message": f"held {index}"}
            body = {"definitionKey": "echo", "params": params, "webhookUrl": receiver.url}
            assert client.post("/v1/jobs", json=body, headers=slow["headers"]).status_code == 202
        wait_for(lambda: held, timeout=30)  # the webhook worker is now stuck on the receiver

        started = time.monotonic()
        body = {"definitionKey": "echo", "params": {"message": "not held up"}}
        job_id = client.post("/v1/jobs", json=body, headers=other["headers"]).json["id"]
        wait_for(lambda: job_row(app, job_id).status == "succeeded", timeout=HOLD_SECONDS / 2)
        assert time.monotonic() - started < HOLD_SECONDS / 2
        assert len(held) == 1  # one delivery at a time, still held while the other job ran
    finally:
        released.set()
        receiver.close()


def test_the_webhook_worker_runs_threads_beyond_a_tenants_share_everywhere_and_job_workers_prefork():
    """Sends wait on the network: threads (no pool process per send), more than one tenant may fill."""
    procfile = dict(
        line.split(": ", 1) for line in (ROOT / "Procfile").read_text().splitlines() if ": " in line
    )
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    readme = (ROOT / "README.md").read_text()
    (in_readme,) = re.findall(r"^\| webhooks \| `([^`]+)` \|", readme, flags=re.MULTILINE)  # process table
    shipped = {
        "README": in_readme.split(),
        "Procfile": procfile["webhooks"].split(),
        "compose": services["webhooks"]["command"],
        "make run": process_commands(5000, 5555)["webhooks"],
    }
    for where, command in shipped.items():
        pool = command[command.index("--pool") + 1]
        threads = int(command[command.index("--concurrency" if "--concurrency" in command else "-c") + 1])
        assert (pool, threads) == ("threads", WEBHOOK_THREADS), where
    (share,) = [int(s.default or 0) for s in SETTINGS if s.name == "GPUJOBS_WEBHOOK_TENANT_CONCURRENCY"]
    assert 0 < share < WEBHOOK_THREADS
    for command in (procfile["worker"].split(), services["worker"]["command"], worker_command("jobs")):
        assert "--pool" not in command and "-P" not in command  # prefork: a job's hard time limit ends it
