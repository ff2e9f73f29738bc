"""Secrets (API key, registry and SSH passwords, env values) never reach reprs, errors or logs."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from support.novita import API_KEY

from gpujobs.novita import (
    CreateInstanceRequest,
    EnvVar,
    NovitaAuthError,
    NovitaClient,
    NovitaError,
)
from gpujobs.novita.sim import seed
from gpujobs.novita.simulator import NovitaSimulator

MakeClient = Callable[..., NovitaClient]
MakeRequest = Callable[..., CreateInstanceRequest]

REGISTRY_PASSWORD = "acme-registry-pw"
ENV_SECRET = "hf_secret_token_value"


def test_the_client_repr_does_not_contain_the_api_key(novita: NovitaClient) -> None:
    assert API_KEY not in repr(novita)
    assert API_KEY not in str(novita)


def test_registry_auths_templates_and_create_requests_hide_credentials_in_repr(
    novita: NovitaClient, make_request: MakeRequest
) -> None:
    auth = novita.list_registry_auths()[0]
    request = make_request(image_auth=auth.credential, envs=(EnvVar("HF_TOKEN", ENV_SECRET),))

    assert auth.password == REGISTRY_PASSWORD
    for shown in (repr(auth), repr(request), repr(novita.get_template(seed.PUBLIC_TEMPLATE_ID))):
        assert REGISTRY_PASSWORD not in shown and ENV_SECRET not in shown


def test_instances_do_not_keep_the_ssh_password(novita: NovitaClient, make_request: MakeRequest) -> None:
    instance = novita.get_instance(novita.create_instance(make_request()))

    assert "password" not in repr(instance).lower()


def test_an_auth_error_message_does_not_contain_the_key(make_client: MakeClient) -> None:
    with pytest.raises(NovitaAuthError) as caught:
        make_client(api_key="sk_live_do_not_print").list_clusters()

    assert "sk_live_do_not_print" not in str(caught.value)
    assert "sk_live_do_not_print" not in repr(caught.value)


def test_no_log_record_contains_the_api_key_or_registry_credentials(
    make_client: MakeClient, make_request: MakeRequest, sim: NovitaSimulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    novita = make_client()
    errors: list[NovitaError] = []

    # A busy session: retries, a lost create, a private pull with credentials, an auth failure.
    sim.inject(fail_next={"count": 2, "status": 429}, lose_next_creates=1)
    credential = novita.get_registry_auth_credential(seed.REGISTRY_AUTH_ID)
    request = make_request(
        image_url="registry.example.com/acme/worker:1.0",
        image_auth=credential,
        envs=(EnvVar("HF_TOKEN", ENV_SECRET),),
    )
    for attempt in (
        lambda: novita.create_instance(request),
        lambda: make_client(api_key="sk_bad").list_clusters(),
    ):
        try:
            attempt()
        except NovitaError as exc:
            errors.append(exc)
    novita.create_instance(make_request(name="job-2", image_auth=credential))
    novita.list_instances()

    assert len(errors) == 2
    assert any("novita POST /gpu/instance/create" in record.getMessage() for record in caplog.records)
    texts = [record.getMessage() for record in caplog.records] + [str(error) for error in errors]
    for secret in (API_KEY, REGISTRY_PASSWORD, credential, ENV_SECRET):
        assert not [text for text in texts if secret in text]
