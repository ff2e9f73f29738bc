"""Contract tests for spot billing in the simulator: validation, the reclaim injection, migrate."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import requests
from support.novita import PHASE_SECONDS

from gpujobs.novita import (
    CreateInstanceRequest,
    InsufficientResourceError,
    InvalidRequestError,
    InvalidStateError,
    NovitaClient,
)
from gpujobs.novita.simulator import ADMIN_PREFIX, ManualClock, NovitaSimulator

MakeRequest = Callable[..., CreateInstanceRequest]


def _reclaimed(
    novita: NovitaClient, clock: ManualClock, sim: NovitaSimulator, request: CreateInstanceRequest
) -> str:
    """A spot instance that ran, was reclaimed over the admin route, and is now exited and terminated."""
    instance_id = novita.create_instance(request)
    clock.advance(10 * PHASE_SECONDS)
    response = requests.post(
        f"{sim.url}{ADMIN_PREFIX}/inject", json={"reclaim_instances": [instance_id]}, timeout=5
    )
    assert response.status_code == 200, response.text
    clock.advance(3 * PHASE_SECONDS)
    seen = novita.get_instance(instance_id)
    assert (seen.status, seen.spot_status, seen.billing_mode) == ("exited", "terminated", "spot")
    return instance_id


def test_spot_is_refused_for_a_product_without_a_spot_price(
    novita: NovitaClient, make_request: MakeRequest
) -> None:
    # Product 26 lists spot among its billing methods, but its spotPrice is "0": Novita does not sell it so.
    with pytest.raises(InvalidRequestError) as caught:
        novita.create_instance(make_request(product_id="26", cluster_id="eu-ger-2", billing_mode="spot"))
    assert caught.value.reason == "UNSUPPORTED_BILLING_MODE"


def test_no_spot_capacity_refuses_spot_creates_but_not_on_demand_ones(
    novita: NovitaClient, make_request: MakeRequest, sim: NovitaSimulator
) -> None:
    sim.inject(no_spot_capacity=True)
    with pytest.raises(InsufficientResourceError):
        novita.create_instance(make_request(billing_mode="spot"))
    assert novita.create_instance(make_request())


def test_migrate_runs_a_reclaimed_spot_instance_again_under_the_same_id(
    novita: NovitaClient, make_request: MakeRequest, clock: ManualClock, sim: NovitaSimulator
) -> None:
    instance_id = _reclaimed(novita, clock, sim, make_request(billing_mode="spot"))
    novita.migrate_instance(instance_id)
    assert novita.get_instance(instance_id).status == "migrating"
    clock.advance(PHASE_SECONDS)
    seen = novita.get_instance(instance_id)
    assert (seen.status, seen.spot_status) == ("running", "running")
    assert sim.count_calls("POST", "/gpu/instance/migrate") == 1


def test_migrate_is_refused_for_a_running_instance_and_without_capacity(
    novita: NovitaClient, make_request: MakeRequest, clock: ManualClock, sim: NovitaSimulator
) -> None:
    running = novita.create_instance(make_request(billing_mode="spot"))
    clock.advance(10 * PHASE_SECONDS)
    with pytest.raises(InvalidStateError):
        novita.migrate_instance(running)

    reclaimed = _reclaimed(novita, clock, sim, make_request(name="job-2", billing_mode="spot"))
    sim.inject(no_spot_capacity=True)
    with pytest.raises(InsufficientResourceError) as caught:
        novita.migrate_instance(reclaimed)
    assert caught.value.reason == "MIGRATE_INSUFFICIENT_RESOURCE"
