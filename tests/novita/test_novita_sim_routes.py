"""The simulator serves every path of docs/novita-api.md §2 with validation and ledger entries, and answers
any other path or method with Novita's envelope behind the auth check, recorded as `unknown`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import requests
from support.novita import API_KEY, PHASE_SECONDS

from gpujobs.novita import CreateInstanceRequest, InvalidStateError, NetworkStorageMount, NovitaClient, spec
from gpujobs.novita.sim import seed
from gpujobs.novita.simulator import ManualClock, NovitaSimulator

Call = Callable[..., requests.Response]


@pytest.fixture
def call(sim: NovitaSimulator) -> Call:
    """`call("GET", "/templates", params=...)` or `call("POST", "/template/create", json=...)`, keyed."""

    def send(method: str, path: str, *, key: str = API_KEY, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
        return requests.request(method, sim.base_url + path, headers=headers, timeout=5, **kwargs)

    return send


def reason(response: requests.Response) -> str:
    return response.json()["reason"]


ALL_TEMPLATES = {"channel": "private", "isMyCommunity": "true"}


def test_templates_are_listed_created_read_and_deleted(call: Call, sim: NovitaSimulator) -> None:
    official = call("GET", spec.TEMPLATES_PATH, params={"channel": "official", "isMyCommunity": "false"})
    assert [t["Id"] for t in official.json()["template"]] == [seed.PUBLIC_TEMPLATE_ID]

    body = {
        "template": {
            "name": "mine",
            "image": "ubuntu:22.04",
            "rootfsSize": 20,
            "ports": [{"type": "http", "ports": [8080]}],
            "envs": [{"key": "A", "value": "1"}],
        }
    }
    created = call("POST", spec.TEMPLATE_CREATE_PATH, json=body).json()
    template_id = created["templateId"]
    mine = call("GET", spec.TEMPLATE_PATH, params={"templateId": template_id}).json()["template"]
    assert (mine["Id"], mine["channel"], mine["ports"]) == (template_id, "private", body["template"]["ports"])
    listed = call("GET", spec.TEMPLATES_PATH, params={**ALL_TEMPLATES, "name": "MIN"}).json()
    assert (listed["total"], listed["template"][0]["Id"]) == (1, template_id)

    deleted = call("POST", spec.TEMPLATE_DELETE_PATH, json={"templateId": template_id})
    assert deleted.json() == {"templateId": template_id}
    gone = call("GET", spec.TEMPLATE_PATH, params={"templateId": template_id})
    assert (gone.status_code, reason(gone)) == (400, "TEMPLATE_NOT_FOUND")
    assert sim.unknown_calls() == [] and sim.count_calls("POST", spec.TEMPLATE_CREATE_PATH) == 1


@pytest.mark.parametrize(
    ("method", "path", "payload"),
    [
        ("GET", spec.TEMPLATES_PATH, {"params": {"isMyCommunity": "true"}}),  # channel is required
        ("GET", spec.TEMPLATES_PATH, {"params": {"channel": "private"}}),  # isMyCommunity too
        ("POST", spec.TEMPLATE_CREATE_PATH, {"json": {"template": {"name": "x", "rootfsSize": 20}}}),
        ("POST", spec.TEMPLATE_CREATE_PATH, {"json": {"template": {"name": "x", "image": "i"}}}),
        (
            "POST",
            spec.TEMPLATE_CREATE_PATH,
            {"json": {"template": {"name": "x", "image": "i", "rootfsSize": 20, "ports": [{"type": "udp"}]}}},
        ),
        ("POST", spec.TEMPLATE_DELETE_PATH, {"json": {}}),
        ("POST", spec.REGISTRY_AUTH_SAVE_PATH, {"json": {"name": "n", "username": "u"}}),
        ("POST", spec.REGISTRY_AUTH_DELETE_PATH, {"json": {}}),
        ("POST", spec.NETWORK_STORAGE_CREATE_PATH, {"json": {"clusterId": "as-sgp-2", "storageName": "s"}}),
        ("POST", spec.NETWORK_STORAGE_CREATE_PATH, {"json": {"clusterId": "nowhere", "storageSize": 5}}),
        ("POST", spec.INSTANCE_EDIT_PATH, {"json": {"ports": []}}),
        ("GET", spec.CPU_PRODUCTS_PATH, {"params": {"clusterId": "nowhere"}}),
    ],
)
def test_bad_requests_to_the_new_paths_answer_validator_param(
    call: Call, method: str, path: str, payload: dict[str, Any]
) -> None:
    response = call(method, path, **payload)

    assert (response.status_code, reason(response)) == (400, "VALIDATOR_PARAM")


def test_an_official_template_cannot_be_deleted(call: Call) -> None:
    response = call("POST", spec.TEMPLATE_DELETE_PATH, json={"templateId": seed.PUBLIC_TEMPLATE_ID})

    assert (response.status_code, reason(response)) == (400, "REQUEST")


def test_registry_auths_are_saved_without_an_id_and_deleted_unless_in_use(
    call: Call, novita: NovitaClient
) -> None:
    assert (
        call(
            "POST", spec.REGISTRY_AUTH_SAVE_PATH, json={"name": "n", "username": "u", "password": "p"}
        ).json()
        == {}
    )
    (saved,) = [auth for auth in novita.list_registry_auths() if auth.name == "n"]
    assert saved.credential == "u:p"

    novita.create_instance(
        CreateInstanceRequest(
            name="uses-auth",
            product_id="4090.16c62g",
            cluster_id="as-sgp-2",
            image_url="ubuntu:22.04",
            rootfs_size_gb=20,
            image_auth_id=saved.id,
        )
    )
    in_use = call("POST", spec.REGISTRY_AUTH_DELETE_PATH, json={"id": saved.id})
    assert (in_use.status_code, reason(in_use)) == (400, "IMAGE_AUTH_IN_USE")
    seeded_in_template = call("POST", spec.REGISTRY_AUTH_DELETE_PATH, json={"id": seed.REGISTRY_AUTH_ID})
    assert reason(seeded_in_template) == "IMAGE_AUTH_IN_USE"
    unknown = call("POST", spec.REGISTRY_AUTH_DELETE_PATH, json={"id": "no-such-auth"})
    assert reason(unknown) == "RESOURCE_NOT_FOUND"


def test_network_storage_is_created_listed_grown_and_deleted_unless_in_use(
    call: Call, novita: NovitaClient
) -> None:
    unsupported = call(
        "POST",
        spec.NETWORK_STORAGE_CREATE_PATH,
        json={"clusterId": "cn-hongkong-1", "storageName": "s", "storageSize": 10},
    )
    assert reason(unsupported) == "CUR_CLUSTER_NETWORK_STORAGE_NOT_SUPPORT"
    created = call(
        "POST",
        spec.NETWORK_STORAGE_CREATE_PATH,
        json={"clusterId": "as-sgp-2", "storageName": "s", "storageSize": 10},
    ).json()
    storage_id = created["storageId"]
    listed = call("GET", spec.NETWORK_STORAGES_PATH, params={"storageName": "S"}).json()
    assert (listed["total"], listed["data"][0]["storageId"], listed["data"][0]["clusterId"]) == (
        1,
        storage_id,
        "as-sgp-2",
    )

    shrink = call("POST", spec.NETWORK_STORAGE_UPDATE_PATH, json={"storageId": storage_id, "storageSize": 5})
    assert reason(shrink) == "VALIDATOR_PARAM"
    grow = call("POST", spec.NETWORK_STORAGE_UPDATE_PATH, json={"storageId": storage_id, "storageSize": 20})
    assert grow.status_code == 200
    assert call("GET", spec.NETWORK_STORAGES_PATH).json()["data"][0]["storageSize"] == 20

    novita.create_instance(
        CreateInstanceRequest(
            name="mounts",
            product_id="4090.16c62g",
            cluster_id="as-sgp-2",
            image_url="ubuntu:22.04",
            rootfs_size_gb=20,
            network_storages=(NetworkStorageMount(storage_id),),
        )
    )
    in_use = call("POST", spec.NETWORK_STORAGE_DELETE_PATH, json={"storageId": storage_id})
    assert reason(in_use) == "NETWORK_STORAGE_IN_USE"
    unknown = call("POST", spec.NETWORK_STORAGE_DELETE_PATH, json={"storageId": "no-such-storage"})
    assert reason(unknown) == "NETWORK_STORAGE_NOT_FOUND"


def test_cpu_products_are_listed_and_filtered_by_cluster(call: Call) -> None:
    everywhere = call("GET", spec.CPU_PRODUCTS_PATH).json()["data"]
    in_singapore = call("GET", spec.CPU_PRODUCTS_PATH, params={"clusterId": "as-sgp-2"}).json()["data"]

    assert len(everywhere) == len(seed.CPU_PRODUCTS) and [p["id"] for p in in_singapore] == ["cpu.4c8g"]


def test_an_instance_is_edited_ports_replaced_and_root_disk_grown(call: Call, novita: NovitaClient) -> None:
    instance_id = novita.create_instance(
        CreateInstanceRequest(
            name="edit-me",
            product_id="4090.16c62g",
            cluster_id="as-sgp-2",
            image_url="ubuntu:22.04",
            rootfs_size_gb=20,
        )
    )
    body = {"instanceId": instance_id, "ports": [{"port": 9000, "type": "http"}], "expandRootDisk": 30}
    assert call("POST", spec.INSTANCE_EDIT_PATH, json=body).json() == {}

    edited = novita.get_instance(instance_id)
    assert ([m.port for m in edited.port_mappings], edited.rootfs_size_gb) == ([9000], 50)
    reserved = call(
        "POST",
        spec.INSTANCE_EDIT_PATH,
        json={"instanceId": instance_id, "ports": [{"port": 2222, "type": "tcp"}]},
    )
    assert reason(reserved) == "VALIDATOR_PARAM"
    too_big = call(
        "POST", spec.INSTANCE_EDIT_PATH, json={"instanceId": instance_id, "expandRootDisk": 100_000}
    )
    assert reason(too_big) == "VALIDATOR_PARAM"
    unknown = call("POST", spec.INSTANCE_EDIT_PATH, json={"instanceId": "0123456789abcdef"})
    assert reason(unknown) == "RESOURCE_NOT_FOUND"


@pytest.mark.parametrize(
    ("method", "path", "status", "expected_reason"),
    [
        ("GET", "/gpu/instance/get", 404, "NOT_FOUND"),  # the wrong path an unofficial guide lists
        ("POST", "/gpu/instance/list", 404, "NOT_FOUND"),
        ("POST", spec.CLUSTERS_PATH, 405, "METHOD_NOT_ALLOWED"),
        ("GET", spec.INSTANCE_DELETE_PATH, 405, "METHOD_NOT_ALLOWED"),
        ("DELETE", spec.INSTANCE_PATH, 405, "METHOD_NOT_ALLOWED"),
    ],
)
def test_an_unknown_path_or_method_answers_novitas_envelope_and_is_recorded(
    call: Call, sim: NovitaSimulator, method: str, path: str, status: int, expected_reason: str
) -> None:
    response = call(method, path)

    assert response.headers["Content-Type"].startswith("application/json")
    assert (response.status_code, response.json()["code"], reason(response)) == (
        status,
        status,
        expected_reason,
    )
    (recorded,) = sim.unknown_calls()
    assert (recorded["method"], recorded["endpoint"], recorded["status"]) == (method, path, status)


def test_an_unknown_path_is_behind_the_auth_check_and_still_recorded(
    call: Call, sim: NovitaSimulator
) -> None:
    response = call("GET", "/no/such/path", key="sk_wrong")

    assert (response.status_code, reason(response)) == (401, "UNAUTHORIZED")
    assert [(c["endpoint"], c["status"]) for c in sim.unknown_calls()] == [("/no/such/path", 401)]


def test_a_call_outside_the_api_prefix_is_recorded_as_unknown(sim: NovitaSimulator) -> None:
    response = requests.get(f"{sim.url}/openapi/v1/clusters", timeout=5)

    assert response.status_code == 404
    assert [c["path"] for c in sim.unknown_calls()] == ["/openapi/v1/clusters"]


def test_the_fault_switches_show_in_the_injection_settings(sim: NovitaSimulator, call: Call) -> None:
    sim.inject(proxy_html_404=True, nested_error_envelope=True)
    shown = requests.get(f"{sim.url}/_sim/inject", timeout=5).json()
    assert (shown["proxy_html_404"], shown["nested_error_envelope"]) == (True, True)

    proxied = call("GET", spec.CLUSTERS_PATH, key="sk_wrong")  # a proxy answers before any key check
    assert proxied.status_code == 404 and proxied.headers["Content-Type"].startswith("text/html")

    requests.post(f"{sim.url}/_sim/inject", json={"proxy_html_404": False}, timeout=5).raise_for_status()
    nested = call("GET", "/no/such/path")
    assert nested.json() == {
        "error": {"code": 404, "message": "NOT_FOUND: no such API path GET /no/such/path"}
    }


def test_an_upgrade_resets_a_running_instance_onto_a_new_image(
    call: Call, novita: NovitaClient, make_request: Callable[..., CreateInstanceRequest], clock: ManualClock
) -> None:
    instance_id = novita.create_instance(make_request())
    not_yet = call(
        "POST", spec.INSTANCE_UPGRADE_PATH, json={"instanceId": instance_id, "imageUrl": "ubuntu:24.04"}
    )
    assert (not_yet.status_code, not_yet.json()["message"]) == (400, spec.INVALID_STATE_CHANGE_MESSAGE)
    clock.advance(10 * PHASE_SECONDS)

    assert (
        call(
            "POST", spec.INSTANCE_UPGRADE_PATH, json={"instanceId": instance_id, "imageUrl": "ubuntu:24.04"}
        ).json()
        == {}
    )
    resetting = novita.get_instance(instance_id)
    assert (resetting.status, resetting.image_url) == ("toReset", "ubuntu:24.04")
    clock.advance(10 * PHASE_SECONDS)
    assert novita.get_instance(instance_id).is_running
    missing_image = call("POST", spec.INSTANCE_UPGRADE_PATH, json={"instanceId": instance_id})
    assert reason(missing_image) == "VALIDATOR_PARAM"


def test_an_instance_becomes_a_subscription_then_is_renewed_and_no_longer_deletable(
    call: Call, novita: NovitaClient, make_request: Callable[..., CreateInstanceRequest], clock: ManualClock
) -> None:
    instance_id = novita.create_instance(make_request())
    creating = call("POST", spec.INSTANCE_RENEW_PATH, json={"instanceId": instance_id, "month": 1})
    assert reason(creating) == "CREATING_INSTANCE_NOT_SUPPORT_RENEWAL"
    clock.advance(10 * PHASE_SECONDS)
    on_demand = call("POST", spec.INSTANCE_RENEW_PATH, json={"instanceId": instance_id, "month": 1})
    assert reason(on_demand) == "UNSUPPORTED_BILLING_MODE"
    thirteen = call("POST", spec.INSTANCE_TO_MONTHLY_PATH, json={"instanceId": instance_id, "month": 13})
    assert reason(thirteen) == "VALIDATOR_PARAM"

    assert (
        call("POST", spec.INSTANCE_TO_MONTHLY_PATH, json={"instanceId": instance_id, "month": 1}).json() == {}
    )
    assert call("POST", spec.INSTANCE_RENEW_PATH, json={"instanceId": instance_id, "month": 2}).json() == {}
    assert novita.get_instance(instance_id).billing_mode == "monthly"
    with pytest.raises(InvalidStateError, match="PREPAID_INSTANCE_NOT_SUPPORT_RELEASE"):
        novita.delete_instance(instance_id)
