"""Evidence before belief: the client against the simulator's normal, proxy-HTML-404 and nested modes.

Only Novita's envelope saying not-found means "gone"; a 404/405 without it is transient and counted as
`no_envelope`; a delete is done only once a read shows the instance removing or removed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from support.novita import API_KEY, PHASE_SECONDS

from gpujobs.exceptions import TransientError
from gpujobs.novita import (
    CreateInstanceRequest,
    DeleteUnconfirmedError,
    Instance,
    InsufficientResourceError,
    InvalidStateError,
    NovitaClient,
    NovitaNotFoundError,
    NovitaPermanentError,
    NovitaUnrecognizedAnswerError,
    spec,
)
from gpujobs.novita.errors import error_from_response, parse_envelope
from gpujobs.novita.simulator import ManualClock, NovitaSimulator

MakeClient = Callable[..., NovitaClient]
MakeRequest = Callable[..., CreateInstanceRequest]
UNKNOWN_ID = "0123456789abcdef"


def answer(http_status: int, body: str, content_type: str = "application/json"):
    """The typed error the client raises for this answer to a GET of an instance."""
    return error_from_response(
        method="GET", path=spec.INSTANCE_PATH, http_status=http_status, body=body, content_type=content_type
    )


@pytest.mark.parametrize(
    ("http_status", "body", "content_type"),
    [
        (404, "<html><title>404 Not Found</title></html>", "text/html"),
        (404, "", ""),
        (404, '{"detail": "Not Found"}', "application/json"),  # a gateway's own JSON
        (404, '{"message": "no Route matched with those values"}', "application/json"),
        (405, "<html><title>405 Method Not Allowed</title></html>", "text/html"),
        (405, '{"error": "method not allowed"}', "application/json"),
        (404, '{"code": 404, "message": "Not Found"}', "application/json"),  # no reason, no evidence
        (404, '{"error": {"code": 404, "message": "instance not found"}}', "application/json"),
    ],
)
def test_a_404_or_405_without_novitas_envelope_is_transient_never_not_found(
    http_status: int, body: str, content_type: str
) -> None:
    error = answer(http_status, body, content_type)

    assert type(error) is NovitaUnrecognizedAnswerError and isinstance(error, TransientError)


@pytest.mark.parametrize(
    "body",
    [
        '{"code": 400, "reason": "RESOURCE_NOT_FOUND", "message": "instance not found", "metadata": {}}',
        '{"error": {"code": 400, "reason": "RESOURCE_NOT_FOUND", "message": "instance not found"}}',
        '{"error": {"code": "RESOURCE_NOT_FOUND", "message": "instance not found"}}',
        '{"error": {"code": 400, "message": "RESOURCE_NOT_FOUND: instance not found"}}',
    ],
)
def test_novitas_not_found_envelope_in_either_shape_means_gone(body: str) -> None:
    error = answer(400, body)

    assert type(error) is NovitaNotFoundError and error.reason == "RESOURCE_NOT_FOUND"


@pytest.mark.parametrize(
    "body",
    [
        '{"code": 404, "reason": "NOT_FOUND", "message": "not found", "metadata": {}}',
        '{"error": {"code": 404, "reason": "NOT_FOUND", "message": "instance not found"}}',
        '{"error": {"code": 404, "message": "RESOURCE_NOT_FOUND: instance not found"}}',
    ],
)
def test_a_404_carrying_novitas_envelope_means_gone(body: str) -> None:
    assert type(answer(404, body)) is NovitaNotFoundError


@pytest.mark.parametrize(
    "body",
    [
        '{"code": 400, "reason": "INSUFFICIENT_RESOURCE", "message": "sold out"}',
        '{"error": {"code": 400, "reason": "INSUFFICIENT_RESOURCE", "message": "sold out"}}',
        '{"error": {"code": "INSUFFICIENT_RESOURCE", "message": "sold out"}}',
        '{"error": {"code": 400, "message": "INSUFFICIENT_RESOURCE: sold out"}}',
    ],
)
def test_insufficient_resource_keeps_its_reason_in_either_envelope_shape(body: str) -> None:
    error = answer(400, body)

    assert type(error) is InsufficientResourceError and error.reason == "INSUFFICIENT_RESOURCE"


@pytest.mark.parametrize(
    "body",
    [
        '{"code": 400, "message": "invalid state change"}',
        '{"error": {"code": 400, "message": "invalid state change"}}',
    ],
)
def test_invalid_state_change_is_recognised_without_a_reason_in_either_shape(body: str) -> None:
    assert type(answer(400, body)) is InvalidStateError


def test_a_nested_envelope_without_a_known_reason_is_a_plain_permanent_error() -> None:
    error = answer(400, '{"error": {"code": 400, "message": "something new"}}')

    assert type(error) is NovitaPermanentError and error.reason is None
    assert parse_envelope('{"error": "just a string"}') is None


@pytest.mark.parametrize("key", ["sshCommand", "command"])
def test_the_ssh_command_is_read_from_either_key(key: str) -> None:
    data = {"id": "a", "name": "n", "status": "running", "connectComponentSSH": {key: "ssh -p 1 root@h"}}

    assert Instance.from_json(data).ssh_command == "ssh -p 1 root@h"


def test_the_last_start_and_stop_are_read_where_given_else_started_at_and_stopped_at() -> None:
    times = {"startedAt": "100", "stoppedAt": "200", "lastStartedAt": "300", "lastStoppedAt": "0"}
    seen = Instance.from_json({"id": "a", "name": "n", "status": "running", **times})

    assert seen.started_at == datetime.fromtimestamp(300, UTC)  # the last start
    assert seen.stopped_at == datetime.fromtimestamp(200, UTC)  # "0": no last stop given, so `stoppedAt`


# Against the simulator's fault modes -------------------------------------------------------------------


@pytest.fixture
def outcomes() -> list[tuple[str, str, str]]:
    """Every (method, path, outcome) the client reports to its call observer."""
    return []


@pytest.fixture
def counted(make_client: MakeClient, outcomes: list[tuple[str, str, str]]) -> NovitaClient:
    """A client that records its calls' outcomes, as the service counts them in gpujobs_novita_calls_total."""
    return make_client(on_call=lambda method, path, outcome: outcomes.append((method, path, outcome)))


def test_a_proxy_html_404_on_a_get_is_retried_counted_logged_and_never_not_found(
    counted: NovitaClient,
    sim: NovitaSimulator,
    make_request: MakeRequest,
    outcomes: list,
    caplog: pytest.LogCaptureFixture,
) -> None:
    instance_id = counted.create_instance(make_request())
    sim.inject(proxy_html_404=2)

    with caplog.at_level(logging.WARNING, logger="gpujobs.novita"):
        assert counted.get_instance(instance_id).id == instance_id  # two 404 pages, then Novita answers

    gets = [outcome for method, path, outcome in outcomes if path == spec.INSTANCE_PATH]
    assert gets == ["no_envelope", "no_envelope", "ok"]
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("GET /gpu/instance failed with HTTP 404" in line for line in warnings)
    assert not any(API_KEY in line or instance_id in line for line in warnings)

    sim.inject(proxy_html_404=True)
    with pytest.raises(NovitaUnrecognizedAnswerError, match="HTTP 404 and a non-JSON body"):
        counted.get_instance(UNKNOWN_ID)


def test_a_proxy_html_404_on_a_delete_leaves_the_instance_running_then_the_delete_completes(
    counted: NovitaClient, sim: NovitaSimulator, make_request: MakeRequest, outcomes: list
) -> None:
    instance_id = counted.create_instance(make_request())
    sim.inject(proxy_html_404={"count": 10, "endpoint": spec.INSTANCE_DELETE_PATH})

    with pytest.raises(NovitaUnrecognizedAnswerError):
        counted.delete_instance(instance_id)

    assert [entry["status"] for entry in sim.instances()] != ["toRemove"]
    assert ("POST", spec.INSTANCE_DELETE_PATH, "no_envelope") in outcomes
    assert sim.count_calls("POST", spec.INSTANCE_DELETE_PATH) == 4  # every attempt of the call

    sim.inject(proxy_html_404=False)
    counted.delete_instance(instance_id)
    assert [entry["status"] for entry in sim.instances()] == ["toRemove"]


def test_a_delete_is_confirmed_by_a_read_after_it(
    novita: NovitaClient, sim: NovitaSimulator, make_request: MakeRequest
) -> None:
    instance_id = novita.create_instance(make_request())

    novita.delete_instance(instance_id)
    novita.delete_instance(instance_id)  # already on its way out: Novita refuses, the read confirms

    assert [(call["method"], call["endpoint"]) for call in sim.ledger()][1:] == [
        ("POST", spec.INSTANCE_DELETE_PATH),
        ("GET", spec.INSTANCE_PATH),
        ("POST", spec.INSTANCE_DELETE_PATH),
        ("GET", spec.INSTANCE_PATH),
    ]


def test_a_delete_whose_read_shows_the_instance_staying_is_not_done(
    novita: NovitaClient, sim: NovitaSimulator, make_request: MakeRequest
) -> None:
    instance_id = novita.create_instance(make_request())
    # Something in front answers the delete with a success but never passes it on.
    sim.inject(fail_next={"status": 200, "endpoint": spec.INSTANCE_DELETE_PATH})
    with pytest.raises(DeleteUnconfirmedError) as caught:
        novita.delete_instance(instance_id)
    assert isinstance(caught.value, TransientError)
    assert [entry["status"] for entry in sim.instances()] != ["toRemove"]

    # Novita takes the delete, but every read is answered `{}`: not evidence either way, so not done.
    sim.inject(fail_next={"status": 200, "endpoint": spec.INSTANCE_PATH})
    with pytest.raises(NovitaUnrecognizedAnswerError):
        novita.delete_instance(instance_id)

    prepaid = novita.create_instance(make_request(name="prepaid", billing_mode="monthly"))
    with pytest.raises(InvalidStateError, match="PREPAID_INSTANCE_NOT_SUPPORT_RELEASE"):
        novita.delete_instance(prepaid)


@pytest.mark.parametrize("nested", [False, True])
def test_an_unknown_instance_is_not_found_in_either_envelope_shape(
    novita: NovitaClient, sim: NovitaSimulator, nested: bool
) -> None:
    sim.inject(nested_error_envelope=nested)

    with pytest.raises(NovitaNotFoundError):
        novita.get_instance(UNKNOWN_ID)
    with pytest.raises(NovitaNotFoundError):
        novita.delete_instance(UNKNOWN_ID)


@pytest.mark.parametrize("nested", [False, True])
def test_insufficient_resource_keeps_its_reason_against_the_simulator_in_either_shape(
    novita: NovitaClient, sim: NovitaSimulator, make_request: MakeRequest, nested: bool
) -> None:
    sim.inject(nested_error_envelope=nested)
    sim.set_capacity("4090.16c62g", "as-sgp-2", 0)

    with pytest.raises(InsufficientResourceError) as caught:
        novita.create_instance(make_request())

    assert caught.value.reason == "INSUFFICIENT_RESOURCE"
    assert sim.ledger()[-1]["status"] == 400


def test_a_client_run_through_an_instances_life_makes_no_unknown_call(
    novita: NovitaClient, sim: NovitaSimulator, make_request: MakeRequest, clock: ManualClock
) -> None:
    novita.list_clusters()
    novita.list_products("RTX 4090")
    novita.get_template("1")
    novita.list_registry_auths()
    instance_id = novita.create_instance(make_request())
    clock.advance(10 * PHASE_SECONDS)
    novita.stop_instance(instance_id)
    clock.advance(10 * PHASE_SECONDS)
    novita.start_instance(instance_id)
    clock.advance(10 * PHASE_SECONDS)
    novita.restart_instance(instance_id)
    novita.list_instances()
    novita.delete_instance(instance_id)

    assert sim.count_calls() > 10 and sim.unknown_calls() == []


def test_a_documented_reason_without_a_code_is_still_novitas_envelope() -> None:
    error = answer(400, '{"reason": "INSUFFICIENT_RESOURCE", "message": "sold out"}')

    assert type(error) is InsufficientResourceError and error.reason == "INSUFFICIENT_RESOURCE"
    assert type(answer(404, '{"reason": "SOMETHING", "message": "x"}')) is NovitaUnrecognizedAnswerError


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1713162260", datetime(2024, 4, 15, 6, 24, 20, tzinfo=UTC)),
        ("1713162260000", datetime(2024, 4, 15, 6, 24, 20, tzinfo=UTC)),  # milliseconds
        ("99999999999999999999", None),  # no calendar holds it: None, not an error for the whole answer
        ("0", None),
        ("", None),
    ],
)
def test_run_times_in_seconds_or_milliseconds_are_read_and_impossible_ones_are_none(value, expected) -> None:
    seen = Instance.from_json({"id": UNKNOWN_ID, "name": "x", "status": "running", "createdAt": value})

    assert seen.created_at == expected
