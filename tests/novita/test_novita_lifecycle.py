"""Contract tests for instance lifecycles, capacity and invalid state changes, driven by a manual clock."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from support.novita import API_KEY, PHASE_SECONDS

from gpujobs.exceptions import PermanentError
from gpujobs.novita import (
    CreateInstanceRequest,
    Instance,
    InsufficientResourceError,
    InvalidStateError,
    NovitaClient,
    PlacementError,
)
from gpujobs.novita.sim import seed
from gpujobs.novita.simulator import ManualClock, NovitaSimulator, run_simulator

MakeRequest = Callable[..., CreateInstanceRequest]


def _statuses(novita: NovitaClient, clock: ManualClock, instance_id: str, phases: int) -> list[str]:
    """The status after each phase boundary, starting with the current one."""
    seen = [novita.get_instance(instance_id).status]
    for _ in range(phases):
        clock.advance(PHASE_SECONDS)
        seen.append(novita.get_instance(instance_id).status)
    return seen


def _running(novita: NovitaClient, clock: ManualClock, request: CreateInstanceRequest) -> str:
    instance_id = novita.create_instance(request)
    clock.advance(10 * PHASE_SECONDS)
    assert novita.get_instance(instance_id).is_running
    return instance_id


def test_create_walks_pending_to_create_creating_pulling_running_as_the_clock_advances(
    novita: NovitaClient, make_request: MakeRequest, clock: ManualClock
) -> None:
    instance_id = novita.create_instance(make_request())

    assert _statuses(novita, clock, instance_id, 4) == [
        "pending",
        "toCreate",
        "creating",
        "pulling",
        "running",
    ]
    running = novita.get_instance(instance_id)
    assert running.started_at is not None and running.started_at.timestamp() == clock()


def test_stop_then_start_walk_through_their_phases(
    novita: NovitaClient, make_request: MakeRequest, clock: ManualClock
) -> None:
    instance_id = _running(novita, clock, make_request())

    novita.stop_instance(instance_id)
    assert _statuses(novita, clock, instance_id, 2) == ["toStop", "stopping", "exited"]
    assert novita.get_instance(instance_id).stopped_at is not None

    novita.start_instance(instance_id)
    assert _statuses(novita, clock, instance_id, 2) == ["toStart", "starting", "running"]


def test_restart_walks_to_restarting_then_running(
    novita: NovitaClient, make_request: MakeRequest, clock: ManualClock
) -> None:
    instance_id = _running(novita, clock, make_request())

    novita.restart_instance(instance_id)

    assert _statuses(novita, clock, instance_id, 2) == ["toRestart", "restarting", "running"]


def test_delete_walks_to_removed_and_frees_the_gpu(
    novita: NovitaClient, make_request: MakeRequest, clock: ManualClock
) -> None:
    request = make_request(product_id="H100-80GB.16c128g", cluster_id="us-ca-6", gpu_num=8)
    instance_id = _running(novita, clock, request)
    assert not novita.list_products(product_name="H100", cluster_id="us-ca-6")[0].in_stock

    novita.delete_instance(instance_id)

    assert _statuses(novita, clock, instance_id, 2) == ["toRemove", "removing", "removed"]
    assert novita.list_products(product_name="H100", cluster_id="us-ca-6")[0].in_stock
    novita.create_instance(request)


def test_start_while_running_is_an_invalid_state_change(
    novita: NovitaClient, make_request: MakeRequest, clock: ManualClock
) -> None:
    instance_id = _running(novita, clock, make_request())

    with pytest.raises(InvalidStateError, match="invalid state change"):
        novita.start_instance(instance_id)


def test_stop_while_exited_is_an_invalid_state_change(
    novita: NovitaClient, make_request: MakeRequest, clock: ManualClock
) -> None:
    instance_id = _running(novita, clock, make_request())
    novita.stop_instance(instance_id)
    clock.advance(10 * PHASE_SECONDS)

    with pytest.raises(InvalidStateError):
        novita.stop_instance(instance_id)


def test_creating_beyond_capacity_raises_insufficient_resource(
    novita: NovitaClient, make_request: MakeRequest
) -> None:
    request = make_request(product_id="H100-80GB.16c128g", cluster_id="us-ca-6")
    novita.create_instance(make_request(product_id="H100-80GB.16c128g", cluster_id="us-ca-6", gpu_num=7))
    novita.create_instance(request)

    with pytest.raises(InsufficientResourceError) as caught:
        novita.create_instance(request)

    assert caught.value.reason == "INSUFFICIENT_RESOURCE"
    assert caught.value.http_status == 400
    assert isinstance(caught.value, PlacementError) and isinstance(caught.value, PermanentError)


def test_always_out_of_stock_product_cannot_be_created(
    novita: NovitaClient, make_request: MakeRequest
) -> None:
    with pytest.raises(InsufficientResourceError):
        novita.create_instance(make_request(product_id="5090.16c120g", cluster_id="as-sgp-2"))


def test_start_after_the_gpu_was_taken_raises_insufficient_resource(
    novita: NovitaClient, make_request: MakeRequest, clock: ManualClock, sim: NovitaSimulator
) -> None:
    instance_id = _running(novita, clock, make_request())
    novita.stop_instance(instance_id)
    clock.advance(10 * PHASE_SECONDS)
    sim.set_capacity("4090.16c62g", "as-sgp-2", 0)

    with pytest.raises(InsufficientResourceError):
        novita.start_instance(instance_id)


def test_out_of_stock_cluster_injection_rejects_creates_there_only(
    novita: NovitaClient, make_request: MakeRequest, sim: NovitaSimulator
) -> None:
    sim.inject(out_of_stock_clusters=["as-sgp-2"])

    with pytest.raises(InsufficientResourceError):
        novita.create_instance(make_request(cluster_id="as-sgp-2"))
    assert not novita.list_products(product_name="4090", cluster_id="as-sgp-2")[0].in_stock
    novita.create_instance(make_request(cluster_id="us-ca-6"))


def test_image_pull_failure_ends_exited_with_a_status_error(
    novita: NovitaClient, make_request: MakeRequest, clock: ManualClock, sim: NovitaSimulator
) -> None:
    sim.inject(fail_pull_images=["ubuntu:22.04"])
    instance_id = novita.create_instance(make_request())

    assert _statuses(novita, clock, instance_id, 4)[-2:] == ["pulling", "exited"]
    failed = novita.get_instance(instance_id)
    assert failed.has_failed and failed.status_error is not None
    assert (failed.status_error.state, failed.status_error.message) == ("pulling", "pull image failed")


def test_private_image_without_registry_auth_fails_to_pull(
    novita: NovitaClient, make_request: MakeRequest, clock: ManualClock
) -> None:
    instance_id = novita.create_instance(make_request(image_url="registry.example.com/acme/worker:1.0"))
    clock.advance(10 * PHASE_SECONDS)

    assert novita.get_instance(instance_id).has_failed


def test_private_image_pulls_with_image_auth_as_username_colon_password(
    novita: NovitaClient, make_request: MakeRequest, clock: ManualClock
) -> None:
    credential = novita.get_registry_auth_credential(seed.REGISTRY_AUTH_ID)
    instance_id = novita.create_instance(
        make_request(image_url="registry.example.com/acme/worker:1.0", image_auth=credential)
    )
    clock.advance(10 * PHASE_SECONDS)

    assert novita.get_instance(instance_id).is_running


def test_private_template_pulls_with_its_auth_id(novita: NovitaClient, clock: ManualClock) -> None:
    template = novita.get_template(seed.PRIVATE_TEMPLATE_ID)
    request = CreateInstanceRequest.from_template(
        template, name="tpl", product_id="4090.16c62g", cluster_id="us-ca-6"
    )
    instance_id = novita.create_instance(request)
    clock.advance(10 * PHASE_SECONDS)

    assert novita.get_instance(instance_id).is_running


def test_spot_reclaim_takes_a_running_instance_to_exited(
    novita: NovitaClient, make_request: MakeRequest, clock: ManualClock, sim: NovitaSimulator
) -> None:
    instance_id = _running(novita, clock, make_request(billing_mode="spot"))

    sim.reclaim(instance_id)
    seen = []
    for _ in range(3):
        instance = novita.get_instance(instance_id)
        seen.append((instance.status, instance.spot_status))
        clock.advance(PHASE_SECONDS)

    assert seen == [("running", "notified"), ("running", "reclaiming"), ("exited", "terminated")]


def test_a_prepaid_instance_cannot_be_released(novita: NovitaClient, make_request: MakeRequest) -> None:
    instance_id = novita.create_instance(make_request(billing_mode="monthly"))

    with pytest.raises(InvalidStateError) as caught:
        novita.delete_instance(instance_id)

    assert caught.value.reason == "PREPAID_INSTANCE_NOT_SUPPORT_RELEASE"


def test_zero_phase_durations_make_instances_run_at_once(make_request: MakeRequest) -> None:
    with (
        run_simulator(API_KEY, phase_seconds=0) as instant,
        NovitaClient(instant.base_url, API_KEY) as novita,
    ):
        instance_id = novita.create_instance(make_request())
        assert novita.get_instance(instance_id).status == "running"
        novita.delete_instance(instance_id)
        assert novita.get_instance(instance_id).status == "removed"


def test_real_time_phases_complete_after_their_short_durations(make_request: MakeRequest) -> None:
    with run_simulator(API_KEY, phase_seconds=0.05) as timed, NovitaClient(timed.base_url, API_KEY) as novita:
        instance_id = novita.create_instance(make_request())
        assert novita.get_instance(instance_id).status in ("pending", "toCreate")

        deadline = time.monotonic() + 5
        while not novita.get_instance(instance_id).is_running and time.monotonic() < deadline:
            time.sleep(0.02)

        assert novita.get_instance(instance_id).is_running


def test_unknown_status_values_are_kept_as_plain_strings() -> None:
    instance = Instance.from_json({"id": "abc", "name": "x", "status": "hibernating", "statusError": {}})

    assert instance.status == "hibernating"
    assert not instance.is_known_status
    assert not (instance.is_running or instance.is_gone or instance.has_failed)
