"""The simulator's own surface: admin endpoints, ledger, auth, determinism, threads, standalone serve."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from support.novita import API_KEY
from support.processes import sigint_by_default

from gpujobs.novita import CreateInstanceRequest, InsufficientResourceError, NovitaClient, NovitaError, spec
from gpujobs.novita.simulator import NovitaSimulator, run_simulator

MakeClient = Callable[..., NovitaClient]
MakeRequest = Callable[..., CreateInstanceRequest]
REPO_ROOT = Path(__file__).resolve().parents[2]
SERVE_STARTUP_TIMEOUT_SECONDS = 10


def test_admin_endpoints_inject_faults_read_the_ledger_and_reset_over_http(
    novita: NovitaClient, make_request: MakeRequest, sim: NovitaSimulator
) -> None:
    admin = f"{sim.url}/_sim"
    injected = requests.post(f"{admin}/inject", json={"fail_next": {"count": 1, "status": 429}}, timeout=5)
    assert injected.status_code == 200 and injected.json()["fail_next"][0]["status"] == 429

    novita.create_instance(make_request())

    calls = requests.get(f"{admin}/ledger", timeout=5).json()["calls"]
    assert [(c["method"], c["endpoint"], c["status"]) for c in calls] == [
        ("POST", spec.INSTANCE_CREATE_PATH, 429),
        ("POST", spec.INSTANCE_CREATE_PATH, 200),
    ]
    assert len(requests.get(f"{admin}/instances", timeout=5).json()["instances"]) == 1

    assert requests.post(f"{admin}/reset", timeout=5).status_code == 200
    assert requests.get(f"{admin}/ledger", timeout=5).json() == {"calls": []}
    assert requests.get(f"{admin}/instances", timeout=5).json() == {"instances": []}


def test_unknown_or_invalid_inject_options_are_rejected_with_400(sim: NovitaSimulator) -> None:
    for options in ({"explode": True}, {"auth_failure_status": 500}, {"reclaim_instances": ["nope"]}):
        assert requests.post(f"{sim.url}/_sim/inject", json=options, timeout=5).status_code == 400


def test_the_api_requires_the_bearer_key_and_the_admin_routes_do_not(sim: NovitaSimulator) -> None:
    url = f"{sim.base_url}{spec.CLUSTERS_PATH}"

    unauthorized = requests.get(url, timeout=5)
    assert unauthorized.status_code == 401
    assert unauthorized.json() == {
        "code": 401,
        "reason": "UNAUTHORIZED",
        "message": "API key is missing or incorrect",
        "metadata": {},
    }
    assert requests.get(url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=5).status_code == 200
    assert requests.get(f"{sim.url}/_sim/ledger", timeout=5).status_code == 200


def test_the_ledger_shows_the_client_sends_its_user_agent_and_json_content_type_on_every_call(
    novita: NovitaClient, sim: NovitaSimulator
) -> None:
    novita.list_clusters()
    novita.list_products()

    calls = sim.ledger()
    assert {call["user_agent"].split("/")[0] for call in calls} == {"gpujobs"}
    assert {call["content_type"] for call in calls} == {"application/json"}


def test_the_instance_ledger_keeps_deleted_instances(make_request: MakeRequest) -> None:
    with run_simulator(API_KEY, phase_seconds=0, removed_grace_seconds=0) as instant:
        client = NovitaClient(instant.base_url, API_KEY)
        instance_id = client.create_instance(make_request())
        client.delete_instance(instance_id)

        assert client.list_instances() == []
        assert [(i["id"], i["status"], i["holdsCapacity"]) for i in instant.instances()] == [
            (instance_id, "removed", False)
        ]
        client.close()


def test_concurrent_creates_never_exceed_capacity(make_client: MakeClient, make_request: MakeRequest) -> None:
    outcomes: list[str] = []
    lock = threading.Lock()

    def create(n: int) -> None:
        client = make_client()
        request = make_request(name=f"c-{n}", product_id="H100-80GB.16c128g", cluster_id="us-ca-6")
        try:
            client.create_instance(request)
            result = "created"
        except InsufficientResourceError:
            result = "full"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=create, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes) == ["created"] * 8 + ["full"] * 8


def _statuses_under_random_errors() -> list[str]:
    with run_simulator(API_KEY, inject={"error_rate": 0.5, "seed": 7}) as flaky:
        client = NovitaClient(flaky.base_url, API_KEY, max_attempts=1)
        for _ in range(12):
            with contextlib.suppress(NovitaError):
                client.list_clusters()
        client.close()
        return [str(call["status"]) for call in flaky.ledger()]


def test_random_error_injection_is_deterministic_for_a_seed() -> None:
    first = _statuses_under_random_errors()

    assert first == _statuses_under_random_errors()
    assert "200" in first and set(first) - {"200"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_runs_a_standalone_simulator_until_interrupted() -> None:
    port = _free_port()
    code = f"from gpujobs.novita.simulator import serve; serve('127.0.0.1', {port}, 'sk_standalone')"
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=sigint_by_default,
    )
    try:
        base_url = f"http://127.0.0.1:{port}{spec.BASE_PATH}"
        deadline = time.monotonic() + SERVE_STARTUP_TIMEOUT_SECONDS
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/_sim/ledger", timeout=1)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline or process.poll() is not None:
                    pytest.fail(f"simulator did not start: {process.stderr.read() if process.stderr else ''}")
                time.sleep(0.05)

        with NovitaClient(base_url, "sk_standalone") as client:
            assert len(client.list_clusters()) == 4
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        finally:
            process.kill()  # a no-op once it has exited; ends a simulator that ignored SIGINT
            process.communicate()  # reaps it and closes its pipes

    assert process.returncode == 0


def test_instance_ids_are_unique_across_simulator_restarts(make_request: MakeRequest) -> None:
    ids = []
    for _ in range(2):  # the same seed each time, as `make run` restarts it over a kept database
        with (
            run_simulator(API_KEY, phase_seconds=0) as restarted,
            NovitaClient(restarted.base_url, API_KEY) as client,
        ):
            ids.append(client.create_instance(make_request()))
    assert ids[0] != ids[1]
