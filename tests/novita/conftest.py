"""Fixtures for the Novita contract tests: a simulator over real HTTP with a manual clock, and a client.

Every test gets a fresh simulator on a free port, so tests never see each other's instances or faults.
Backoff is tiny so retry tests take milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from support.novita import API_KEY, PHASE_SECONDS, REMOVED_GRACE_SECONDS

from gpujobs.novita import CreateInstanceRequest, NovitaClient
from gpujobs.novita.simulator import ManualClock, NovitaSimulator, run_simulator


@pytest.fixture
def clock() -> ManualClock:
    """Time for the simulator; advances only when a test says so."""
    return ManualClock()


@pytest.fixture
def sim(clock: ManualClock) -> Iterator[NovitaSimulator]:
    """A simulator serving over HTTP on a free local port."""
    with run_simulator(
        API_KEY, clock=clock, phase_seconds=PHASE_SECONDS, removed_grace_seconds=REMOVED_GRACE_SECONDS
    ) as simulator:
        yield simulator


@pytest.fixture
def make_client(sim: NovitaSimulator) -> Iterator[Callable[..., NovitaClient]]:
    """Factory for clients of `sim` with fast backoff; overrides go to NovitaClient."""
    clients: list[NovitaClient] = []

    def make(**overrides: Any) -> NovitaClient:
        options: dict[str, Any] = {
            "connect_timeout_seconds": 2.0,
            "read_timeout_seconds": 5.0,
            "max_attempts": 4,
            "backoff_initial_seconds": 0.005,
            "backoff_max_seconds": 0.05,
        }
        options.update(overrides)
        base_url = options.pop("base_url", sim.base_url)
        client = NovitaClient(base_url, options.pop("api_key", API_KEY), **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def novita(make_client: Callable[..., NovitaClient]) -> NovitaClient:
    """The default client."""
    return make_client()


@pytest.fixture
def make_request() -> Callable[..., CreateInstanceRequest]:
    """Factory for a valid create request (an RTX 4090 in Singapore); keyword overrides change fields."""

    def make(**overrides: Any) -> CreateInstanceRequest:
        fields: dict[str, Any] = {
            "name": "job-1",
            "product_id": "4090.16c62g",
            "cluster_id": "as-sgp-2",
            "image_url": "ubuntu:22.04",
            "rootfs_size_gb": 20,
        }
        fields.update(overrides)
        return CreateInstanceRequest(**fields)

    return make
