"""Fixtures for the GPU workflow tests: a Novita simulator over HTTP, workers pointed at it, and helpers.

The simulator runs in this process on a free port with a real clock and short lifecycle phases; workers
are real `celery worker` processes told its URL and key through their environment. Domain code called
directly from a test reads the same settings from the app's config, set here and restored afterwards.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from support.gpu import API_KEY, MONITOR_INTERVAL_SECONDS, PHASE_SECONDS
from support.receivers import Receiver
from support.tenants import secret_of

from gpujobs.novita import NovitaClient
from gpujobs.novita.simulator import NovitaSimulator, run_simulator


@pytest.fixture
def sim_options() -> dict[str, Any]:
    """Simulator settings; a test overrides this fixture (or parametrizes it) to change them."""
    return {"phase_seconds": PHASE_SECONDS}


@pytest.fixture
def sim(sim_options: dict[str, Any]) -> Iterator[NovitaSimulator]:
    """A Novita simulator for this test only (its own instances, faults and ledger)."""
    with run_simulator(API_KEY, **sim_options) as simulator:
        yield simulator


@pytest.fixture
def novita_env(sim: NovitaSimulator) -> dict[str, str]:
    """Environment overrides that point a worker at the simulator and poll quickly."""
    return {
        "NOVITA_API_KEY": API_KEY,
        "NOVITA_BASE_URL": sim.base_url,
        "GPUJOBS_MONITOR_INTERVAL_SECONDS": MONITOR_INTERVAL_SECONDS,
    }


@pytest.fixture
def novita_config(app: Flask, novita_env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """The same settings in the test process's app config, for domain code called directly."""
    values = {**novita_env, "GPUJOBS_MONITOR_INTERVAL_SECONDS": float(MONITOR_INTERVAL_SECONDS)}
    saved = {key: app.config.get(key) for key in values}
    app.config.update(values)
    yield app.config
    app.config.update(saved)


@pytest.fixture
def gpu_worker(start_worker: Callable[..., Any], novita_env: dict[str, str]) -> Iterator[Callable[..., Any]]:
    """Factory: a real worker pointed at the simulator; keyword overrides add environment variables.

    Workers are killed at the end rather than shut down warmly: the next test starts from empty tables
    and an empty broker anyway, and a warm shutdown waits out the soft-shutdown period every time.
    """
    started: list[Any] = []

    def start(concurrency: int = 3, **overrides: str) -> Any:
        started.append(start_worker(concurrency, name=f"gpu{len(started)}", **{**novita_env, **overrides}))
        return started[-1]

    yield start
    for worker in started:
        os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait()


@pytest.fixture
def novita(sim: NovitaSimulator) -> Iterator[NovitaClient]:
    """A client of the simulator for the test itself (to look at, or tamper with, Novita's side)."""
    with NovitaClient(sim.base_url, API_KEY, backoff_initial_seconds=0.01) as client:
        yield client


@pytest.fixture
def hooks(app: Flask, tenant: dict[str, str]) -> Iterator[Callable[[], Receiver]]:
    """Factory: a webhook receiver that verifies signatures with the tenant's secret."""
    made: list[Receiver] = []

    def make() -> Receiver:
        made.append(Receiver(secret_of(app, tenant)))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()
