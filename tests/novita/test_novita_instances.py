"""Contract tests for creating, reading and listing instances, including paging and not-found quirks."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from support.novita import API_KEY, PHASE_SECONDS, REMOVED_GRACE_SECONDS

from gpujobs.exceptions import TransientError
from gpujobs.novita import (
    CreateInstanceRequest,
    EnvVar,
    NetworkStorageMount,
    NovitaClient,
    NovitaNotFoundError,
    NovitaUnrecognizedAnswerError,
    PortSpec,
)
from gpujobs.novita.sim import seed
from gpujobs.novita.simulator import ManualClock, NovitaSimulator, run_simulator

MakeRequest = Callable[..., CreateInstanceRequest]


def _create_many(novita: NovitaClient, make_request: MakeRequest, count: int) -> list[str]:
    # 3090s exist in every cluster, two per cluster: eight in all.
    return [
        novita.create_instance(
            make_request(name=f"batch-{n}", product_id="3090.16c92g", cluster_id=seed.CLUSTERS[n % 4].id)
        )
        for n in range(count)
    ]


def test_create_returns_a_16_hex_id_and_the_instance_has_the_requested_fields(
    novita: NovitaClient, make_request: MakeRequest
) -> None:
    request = make_request(
        gpu_num=2,
        ports=(PortSpec(8080, "http"), PortSpec(22, "tcp")),
        envs=(EnvVar("MODE", "test"),),
        command="python serve.py",
    )

    instance_id = novita.create_instance(request)
    instance = novita.get_instance(instance_id)

    assert re.fullmatch(r"[0-9a-f]{16}", instance_id)
    assert (instance.id, instance.name, instance.cluster_id) == (instance_id, "job-1", "as-sgp-2")
    assert (instance.product_id, instance.product_name) == ("4090.16c62g", "RTX 4090 24GB")
    assert (instance.image_url, instance.rootfs_size_gb, instance.billing_mode) == (
        "ubuntu:22.04",
        20,
        "onDemand",
    )
    assert instance.created_at is not None


def test_numbers_sent_as_strings_are_parsed_to_ints(novita: NovitaClient, make_request: MakeRequest) -> None:
    instance = novita.get_instance(novita.create_instance(make_request(gpu_num=2)))

    # The simulator sends gpuNum "2", cpuNum "32" and memory "124", as Novita does.
    assert (instance.gpu_num, instance.cpu_num, instance.memory_gb) == (2, 32, 124)
    # ...and "" stands in for null.
    assert instance.spot_status is None and instance.status_error is None


def test_get_has_port_endpoints_and_list_items_do_not(
    novita: NovitaClient, make_request: MakeRequest
) -> None:
    instance_id = novita.create_instance(make_request(ports=(PortSpec(8188, "http"), PortSpec(22, "tcp"))))

    got = novita.get_instance(instance_id)
    listed = novita.list_instances()[0]

    assert got.endpoint_for(8188) == f"https://{instance_id}-8188.as-sgp-2.gpu-instance.novita.ai"
    assert (got.endpoint_for(22) or "").startswith("proxy.as-sgp-2.gpu-instance.novita.ai:")
    assert [(m.port, m.type, m.endpoint) for m in listed.port_mappings] == [
        (8188, "http", None),
        (22, "tcp", None),
    ]


def test_network_storages_are_sent_with_a_capital_id(
    novita: NovitaClient, make_request: MakeRequest, sim: NovitaSimulator
) -> None:
    novita.create_instance(make_request(network_storages=(NetworkStorageMount("384d629d-aaaa"),)))

    assert sim.instances()[0]["networkStorageIds"] == ["384d629d-aaaa"]


def test_rootfs_under_the_minimum_is_raised_to_ten_gb(
    novita: NovitaClient, make_request: MakeRequest
) -> None:
    instance = novita.get_instance(novita.create_instance(make_request(rootfs_size_gb=4)))

    assert instance.rootfs_size_gb == 10


def test_create_without_a_cluster_lets_novita_pick_one_with_room(
    novita: NovitaClient, make_request: MakeRequest, sim: NovitaSimulator
) -> None:
    instance = novita.get_instance(
        novita.create_instance(make_request(product_id="H100-80GB.16c128g", cluster_id=None))
    )

    assert instance.cluster_id == "us-ca-6"


def test_list_instances_pages_until_total_is_reached(
    novita: NovitaClient, make_request: MakeRequest, sim: NovitaSimulator
) -> None:
    created = _create_many(novita, make_request, 7)

    listed = novita.list_instances(page_size=3)

    assert sorted(instance.id for instance in listed) == sorted(created)
    # pageNum 0 and 1 are both the first page on a 1-based server: 0, 1, 2, 3 hold all seven.
    assert sim.count_calls("GET", "/gpu/instances") == 4


def test_list_instances_pages_correctly_when_the_server_counts_pages_from_zero(
    make_request: MakeRequest,
) -> None:
    with run_simulator(API_KEY, phase_seconds=0, page_base=0) as zero_based:
        novita = NovitaClient(zero_based.base_url, API_KEY)
        created = _create_many(novita, make_request, 7)

        listed = novita.list_instances(page_size=3)

        assert sorted(instance.id for instance in listed) == sorted(created)
        assert zero_based.count_calls("GET", "/gpu/instances") == 3
        novita.close()


def test_list_instances_never_requests_more_than_max_pages(
    novita: NovitaClient, make_request: MakeRequest, sim: NovitaSimulator
) -> None:
    _create_many(novita, make_request, 5)

    novita.list_instances(page_size=1, max_pages=3)

    assert sim.count_calls("GET", "/gpu/instances") == 3


def test_list_instances_filters_by_fuzzy_name_and_exact_status(
    novita: NovitaClient, make_request: MakeRequest, clock: ManualClock
) -> None:
    first = novita.create_instance(make_request(name="render-a"))
    clock.advance(100 * PHASE_SECONDS)
    novita.create_instance(make_request(name="render-b"))
    novita.create_instance(make_request(name="train-c"))

    assert {i.name for i in novita.list_instances(name="render")} == {"render-a", "render-b"}
    assert [i.id for i in novita.list_instances(status="running")] == [first]


def test_find_instances_by_name_matches_exactly_not_fuzzily(
    novita: NovitaClient, make_request: MakeRequest
) -> None:
    wanted = novita.create_instance(make_request(name="job-1"))
    novita.create_instance(make_request(name="job-10"))

    assert [instance.id for instance in novita.find_instances_by_name("job-1")] == [wanted]
    assert novita.find_instances_by_name("job-2") == []


@pytest.mark.parametrize("not_found_status", [400, 404])
def test_an_unknown_instance_raises_not_found_when_novitas_envelope_says_so(
    novita: NovitaClient, sim: NovitaSimulator, not_found_status: int
) -> None:
    sim.inject(not_found_status=not_found_status)

    with pytest.raises(NovitaNotFoundError):
        novita.get_instance("0123456789abcdef")


def test_a_success_answer_without_an_id_is_not_evidence_that_the_instance_is_gone(
    novita: NovitaClient, sim: NovitaSimulator
) -> None:
    sim.inject(not_found_status=200)

    with pytest.raises(NovitaUnrecognizedAnswerError) as caught:
        novita.get_instance("0123456789abcdef")

    assert isinstance(caught.value, TransientError)


def test_a_deleted_instance_is_listed_as_removed_then_disappears(
    novita: NovitaClient, make_request: MakeRequest, clock: ManualClock, sim: NovitaSimulator
) -> None:
    instance_id = novita.create_instance(make_request())
    novita.delete_instance(instance_id)
    clock.advance(2 * PHASE_SECONDS)

    removed = novita.get_instance(instance_id)
    assert (removed.status, removed.is_gone, removed.is_being_removed) == ("removed", True, True)
    assert [i.status for i in novita.list_instances()] == ["removed"]

    clock.advance(REMOVED_GRACE_SECONDS)
    with pytest.raises(NovitaNotFoundError):
        novita.get_instance(instance_id)
    assert novita.list_instances() == []
    assert [entry["status"] for entry in sim.instances()] == ["removed"]
