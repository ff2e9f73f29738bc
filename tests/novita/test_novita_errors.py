"""Contract tests for error mapping and retries: every documented reason, 429/5xx, HTML bodies, timeouts."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest
from support.novita import PHASE_SECONDS

from gpujobs.dev.embedded import free_port
from gpujobs.exceptions import PermanentError, TransientError
from gpujobs.novita import (
    AccountLimitError,
    ClusterUnavailableError,
    CreateInstanceRequest,
    EnvVar,
    InsufficientResourceError,
    InvalidRequestError,
    InvalidStateError,
    NovitaAuthError,
    NovitaClient,
    NovitaConnectionError,
    NovitaNotFoundError,
    NovitaPermanentError,
    NovitaProtocolError,
    NovitaServerError,
    NovitaUnrecognizedAnswerError,
    PortSpec,
    RateLimitedError,
    spec,
)
from gpujobs.novita.errors import CreateOutcomeUnknownError
from gpujobs.novita.simulator import ManualClock, NovitaSimulator

MakeClient = Callable[..., NovitaClient]
MakeRequest = Callable[..., CreateInstanceRequest]

# Written out independently of the client's own table, so a wrong mapping there fails here.
EXPECTED_ERROR_CLASS = {
    "UNAUTHORIZED": NovitaAuthError,
    "FORBIDDEN": NovitaAuthError,
    "INVALID_API_KEY": NovitaAuthError,
    "RATE_LIMIT_EXCEEDED": RateLimitedError,
    "UNKNOWN": NovitaServerError,
    "RESOURCE_NOT_FOUND": NovitaNotFoundError,
    "TEMPLATE_NOT_FOUND": NovitaNotFoundError,
    "VALIDATOR_PARAM": InvalidRequestError,
    "REQUEST": InvalidRequestError,
    "INVALID_COMMAND_PARAM": InvalidRequestError,
    "UNSUPPORTED_BILLING_MODE": InvalidRequestError,
    "IMAGE_NOT_FOUND": InvalidRequestError,
    "NETWORK_NOT_FOUND": InvalidRequestError,
    "NETWORK_STORAGE_NOT_FOUND": InvalidRequestError,
    "CUR_CLUSTER_NETWORK_STORAGE_NOT_SUPPORT": InvalidRequestError,
    "TEMPLATE_IS_PRIVATE": InvalidRequestError,
    "CONFLICT": InvalidStateError,
    "DEPENDENT_RESOURCE_STATE": InvalidStateError,
    "PREPAID_INSTANCE_NOT_SUPPORT_RELEASE": InvalidStateError,
    "CREATING_INSTANCE_NOT_SUPPORT_RENEWAL": InvalidStateError,
    "NETWORK_STORAGE_IN_USE": InvalidStateError,
    "IMAGE_AUTH_IN_USE": InvalidStateError,
    "INSUFFICIENT_RESOURCE": InsufficientResourceError,
    "MIGRATE_INSUFFICIENT_RESOURCE": InsufficientResourceError,
    "CLUSTER_STATUS": ClusterUnavailableError,
    "NODE_STATUS": ClusterUnavailableError,
    "OPERATION_LIMIT": AccountLimitError,
    "BALANCE_NOT_ENOUGH": AccountLimitError,
    "EXPIRED_OR_BALANCE_NOT_ENOUGH": AccountLimitError,
    "CREATE_INSTANCE_LIMIT": AccountLimitError,
}
TRANSIENT_REASONS = {"RATE_LIMIT_EXCEEDED", "UNKNOWN"}


def test_the_expected_error_table_covers_every_documented_reason() -> None:
    assert set(EXPECTED_ERROR_CLASS) == set(spec.ERROR_REASONS)


@pytest.mark.parametrize("reason", sorted(EXPECTED_ERROR_CLASS))
def test_every_documented_reason_raises_its_typed_error(
    make_client: MakeClient, sim: NovitaSimulator, reason: str
) -> None:
    sim.inject(fail_next={"count": 1, "reason": reason})

    with pytest.raises(EXPECTED_ERROR_CLASS[reason]) as caught:
        make_client(max_attempts=1).list_clusters()

    error = caught.value
    assert (error.reason, error.http_status) == (reason, spec.ERROR_REASONS[reason].http_status)
    assert isinstance(error, TransientError if reason in TRANSIENT_REASONS else PermanentError)
    assert reason in str(error)


def test_an_undocumented_reason_in_a_400_is_a_generic_permanent_error(
    novita: NovitaClient, sim: NovitaSimulator
) -> None:
    sim.inject(fail_next={"status": 400, "reason": "SOMETHING_NEW", "message": "a brand new rule"})

    with pytest.raises(NovitaPermanentError) as caught:
        novita.list_clusters()

    assert type(caught.value) is NovitaPermanentError
    assert "a brand new rule" in str(caught.value)


def test_the_invalid_state_change_message_is_recognised_whatever_the_reason(
    novita: NovitaClient, sim: NovitaSimulator
) -> None:
    sim.inject(fail_next={"status": 400, "reason": "REQUEST", "message": "invalid state change"})

    with pytest.raises(InvalidStateError):
        novita.list_clusters()


@pytest.mark.parametrize(("auth_failure_status", "reason"), [(401, "UNAUTHORIZED"), (403, "INVALID_API_KEY")])
def test_a_wrong_api_key_raises_an_auth_error_without_retrying(
    make_client: MakeClient, sim: NovitaSimulator, auth_failure_status: int, reason: str
) -> None:
    sim.inject(auth_failure_status=auth_failure_status)

    with pytest.raises(NovitaAuthError) as caught:
        make_client(api_key="sk_wrong").list_clusters()

    assert (caught.value.http_status, caught.value.reason) == (auth_failure_status, reason)
    assert sim.count_calls() == 1


def test_a_missing_api_key_raises_an_auth_error(make_client: MakeClient) -> None:
    with pytest.raises(NovitaAuthError):
        make_client(api_key="").list_products()


def test_a_rate_limited_get_is_retried_then_succeeds(novita: NovitaClient, sim: NovitaSimulator) -> None:
    sim.inject(fail_next={"count": 2, "status": 429})

    assert len(novita.list_clusters()) == 4
    assert [call["status"] for call in sim.ledger()] == [429, 429, 200]


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_server_errors_on_a_get_are_retried_then_succeed(
    novita: NovitaClient, sim: NovitaSimulator, status: int
) -> None:
    sim.inject(fail_next={"count": 1, "status": status})

    assert novita.list_registry_auths()
    assert sim.count_calls() == 2


def test_retries_give_up_after_max_attempts_with_a_transient_error(
    make_client: MakeClient, sim: NovitaSimulator
) -> None:
    sim.inject(fail_next={"count": 10, "status": 503})

    with pytest.raises(NovitaServerError) as caught:
        make_client(max_attempts=3).list_clusters()

    assert isinstance(caught.value, TransientError)
    assert sim.count_calls() == 3


def test_retry_after_is_respected_before_the_next_attempt(
    make_client: MakeClient, sim: NovitaSimulator
) -> None:
    sim.inject(fail_next={"count": 1, "status": 429, "retry_after_seconds": 0.3})
    started = time.monotonic()

    make_client(backoff_max_seconds=1.0).list_clusters()

    assert time.monotonic() - started >= 0.3
    assert sim.count_calls() == 2


def test_a_long_retry_after_is_raised_at_once_for_the_engine_to_reschedule(
    novita: NovitaClient, sim: NovitaSimulator
) -> None:
    sim.inject(fail_next={"count": 1, "status": 429, "retry_after_seconds": 120})

    with pytest.raises(RateLimitedError) as caught:
        novita.list_clusters()

    assert caught.value.retry_after_seconds == 120
    assert sim.count_calls() == 1


def test_an_html_error_page_gives_a_clear_transient_error_not_a_crash(
    novita: NovitaClient, sim: NovitaSimulator
) -> None:
    sim.inject(fail_next={"count": 10, "status": 502, "html": True})

    with pytest.raises(NovitaServerError) as caught:
        novita.list_clusters()

    message = str(caught.value)
    assert "non-JSON body (text/html" in message and "502 | api.novita.ai | Cloudflare" in message


def test_an_html_403_from_cloudflare_is_an_auth_error(novita: NovitaClient, sim: NovitaSimulator) -> None:
    sim.inject(fail_next={"count": 1, "status": 403, "html": True})

    with pytest.raises(NovitaAuthError, match="non-JSON body"):
        novita.list_clusters()


def test_a_base_url_that_is_not_http_is_a_permanent_error_without_retries(make_client: MakeClient) -> None:
    with pytest.raises(NovitaPermanentError, match="not a valid http"):
        make_client(base_url="api.novita.ai/gpu-instance/openapi/v1").list_clusters()


def test_a_wrong_base_url_is_a_transient_unrecognized_answer_not_not_found(
    make_client: MakeClient, sim: NovitaSimulator
) -> None:
    with pytest.raises(NovitaUnrecognizedAnswerError, match=r"non-JSON body .*check the base URL") as caught:
        make_client(base_url=f"{sim.url}/openapi/v1").list_clusters()

    assert isinstance(caught.value, TransientError) and not isinstance(caught.value, NovitaNotFoundError)


@pytest.mark.parametrize(
    "overrides",
    [
        {"gpu_num": 9},
        {"gpu_num": 0},
        {"rootfs_size_gb": 7000},
        {"rootfs_size_gb": 2000},  # above this product's maxRootFS
        {"command": "x" * 3000},
        {"image_url": ""},
        {"kind": "tpu"},
        {"product_id": "no-such-product"},
        {"cluster_id": "no-such-cluster"},
        {"billing_mode": "hourly"},
        {"image_auth": "no-colon"},
    ],
)
def test_invalid_create_parameters_raise_invalid_request(
    novita: NovitaClient, make_request: MakeRequest, overrides: dict[str, object]
) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        novita.create_instance(make_request(**overrides))

    assert caught.value.reason in ("VALIDATOR_PARAM", "UNSUPPORTED_BILLING_MODE")


@pytest.mark.parametrize("port", [2222, 2223, 2224, 70000])
def test_reserved_and_out_of_range_ports_are_rejected(
    novita: NovitaClient, make_request: MakeRequest, port: int
) -> None:
    with pytest.raises(InvalidRequestError, match="reserved"):
        novita.create_instance(make_request(ports=(PortSpec(port, "tcp"),)))


def test_more_than_a_hundred_envs_are_rejected(novita: NovitaClient, make_request: MakeRequest) -> None:
    with pytest.raises(InvalidRequestError, match="envs"):
        novita.create_instance(make_request(envs=tuple(EnvVar(f"K{n}", "v") for n in range(101))))


def test_a_lost_create_response_raises_outcome_unknown_and_the_instance_exists(
    novita: NovitaClient, make_request: MakeRequest, sim: NovitaSimulator
) -> None:
    sim.inject(lose_next_creates=1)

    with pytest.raises(CreateOutcomeUnknownError) as caught:
        novita.create_instance(make_request(name="lost-1"))

    assert isinstance(caught.value, TransientError)
    assert [instance.name for instance in novita.find_instances_by_name("lost-1")] == ["lost-1"]
    assert sim.count_calls("POST", spec.INSTANCE_CREATE_PATH) == 1
    assert [(call["lost"], call["status"]) for call in sim.ledger() if call["method"] == "POST"] == [
        (True, None)
    ]


def test_a_create_is_not_retried_after_a_server_error(
    novita: NovitaClient, make_request: MakeRequest, sim: NovitaSimulator
) -> None:
    sim.inject(fail_next={"count": 1, "status": 503, "endpoint": spec.INSTANCE_CREATE_PATH})

    with pytest.raises(CreateOutcomeUnknownError):
        novita.create_instance(make_request())

    assert sim.count_calls("POST", spec.INSTANCE_CREATE_PATH) == 1


@pytest.mark.parametrize("html", [True, False])
def test_a_create_answered_with_success_but_no_instance_id_is_an_unknown_outcome(
    novita: NovitaClient, make_request: MakeRequest, sim: NovitaSimulator, html: bool
) -> None:
    sim.inject(fail_next={"status": 200, "html": html, "endpoint": spec.INSTANCE_CREATE_PATH})

    with pytest.raises(CreateOutcomeUnknownError):
        novita.create_instance(make_request())


def test_a_get_answered_with_an_html_success_page_is_a_transient_protocol_error(
    novita: NovitaClient, sim: NovitaSimulator
) -> None:
    sim.inject(fail_next={"status": 200, "html": True, "count": 10})

    with pytest.raises(NovitaProtocolError, match="not a JSON object") as caught:
        novita.list_clusters()
    assert isinstance(caught.value, TransientError)


def test_a_get_answered_once_with_an_html_success_page_is_retried_and_answers(
    novita: NovitaClient, sim: NovitaSimulator
) -> None:
    sim.inject(fail_next={"status": 200, "html": True})

    assert novita.list_clusters()


def test_an_action_answered_with_an_html_success_page_counts_as_accepted(
    novita: NovitaClient, make_request: MakeRequest, sim: NovitaSimulator
) -> None:
    instance_id = novita.create_instance(make_request())
    sim.inject(fail_next={"status": 200, "html": True, "endpoint": spec.INSTANCE_STOP_PATH})

    novita.stop_instance(instance_id)  # no error: a 2xx is accepted whatever its body


def test_a_create_is_retried_after_429_because_nothing_was_created(
    novita: NovitaClient, make_request: MakeRequest, sim: NovitaSimulator
) -> None:
    sim.inject(fail_next={"count": 2, "status": 429, "endpoint": spec.INSTANCE_CREATE_PATH})

    novita.create_instance(make_request())

    assert sim.count_calls("POST", spec.INSTANCE_CREATE_PATH) == 3
    assert len(sim.instances()) == 1


def test_a_create_that_times_out_raises_outcome_unknown_and_the_instance_appears(
    make_client: MakeClient, make_request: MakeRequest, sim: NovitaSimulator
) -> None:
    sim.inject(latency_seconds=0.4)

    with pytest.raises(CreateOutcomeUnknownError):
        make_client(read_timeout_seconds=0.1).create_instance(make_request(name="slow-1"))

    # The server finishes the work after the client gave up.
    deadline = time.monotonic() + 5
    while not sim.instances() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [entry["name"] for entry in sim.instances()] == ["slow-1"]


def test_a_create_against_a_closed_port_is_a_connection_error_not_an_unknown_outcome(
    make_client: MakeClient, make_request: MakeRequest
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    novita = make_client(base_url=f"http://127.0.0.1:{closed_port}{spec.BASE_PATH}", max_attempts=2)

    with pytest.raises(NovitaConnectionError) as caught:
        novita.create_instance(make_request())

    assert not isinstance(caught.value, CreateOutcomeUnknownError)
    assert caught.value.request_sent is False


def test_a_get_that_times_out_is_retried_then_raises_a_transient_error(
    make_client: MakeClient, sim: NovitaSimulator
) -> None:
    sim.inject(latency_seconds=0.3)

    with pytest.raises(NovitaConnectionError) as caught:
        make_client(read_timeout_seconds=0.05, max_attempts=2).list_clusters()

    assert isinstance(caught.value, TransientError) and caught.value.request_sent is True


def test_a_lost_stop_response_is_retried_and_the_invalid_state_answer_counts_as_done(
    novita: NovitaClient, make_request: MakeRequest, sim: NovitaSimulator, clock: ManualClock
) -> None:
    instance_id = novita.create_instance(make_request())
    clock.advance(10 * PHASE_SECONDS)
    sim.inject(lose_next_responses={"count": 1, "endpoint": spec.INSTANCE_STOP_PATH})

    novita.stop_instance(instance_id)

    assert [call["status"] for call in sim.ledger() if call["endpoint"] == spec.INSTANCE_STOP_PATH] == [
        None,
        400,
    ]
    assert novita.get_instance(instance_id).status == "toStop"


def test_a_lost_delete_response_is_retried_and_counts_as_done(
    novita: NovitaClient, make_request: MakeRequest, sim: NovitaSimulator
) -> None:
    instance_id = novita.create_instance(make_request())
    sim.inject(lose_next_responses={"count": 1, "endpoint": spec.INSTANCE_DELETE_PATH})

    novita.delete_instance(instance_id)

    assert sim.count_calls("POST", spec.INSTANCE_DELETE_PATH) == 2
    assert novita.get_instance(instance_id).is_being_removed


def test_an_action_rejected_by_429_then_invalid_state_is_still_an_error(
    novita: NovitaClient, make_request: MakeRequest, sim: NovitaSimulator
) -> None:
    instance_id = novita.create_instance(make_request())
    sim.inject(fail_next={"count": 1, "status": 429, "endpoint": spec.INSTANCE_START_PATH})

    # A 429 means Novita did nothing, so the later "invalid state change" is real: the instance is pending.
    with pytest.raises(InvalidStateError):
        novita.start_instance(instance_id)


def test_every_attempt_is_told_to_the_call_observer_with_its_outcome(
    make_client: MakeClient, sim: NovitaSimulator
) -> None:
    seen: list[tuple[str, str, str]] = []
    client = make_client(max_attempts=3, on_call=lambda *call: seen.append(call))
    sim.inject(fail_next={"count": 1, "status": 503, "endpoint": "/clusters"})
    client.list_clusters()  # a 503, then the retry succeeds
    with pytest.raises(NovitaNotFoundError):
        client.get_instance("no-such-instance")
    unreachable = make_client(
        base_url=f"http://127.0.0.1:{free_port()}", max_attempts=1, on_call=lambda *call: seen.append(call)
    )
    with pytest.raises(NovitaConnectionError):
        unreachable.list_clusters()
    assert seen[:2] == [("GET", "/clusters", "5xx"), ("GET", "/clusters", "ok")]
    assert seen[2][:2] == ("GET", "/gpu/instance") and seen[2][2] in ("4xx", "5xx")
    assert len(seen) == 4 and seen[3] == ("GET", "/clusters", "no_answer")
