"""Bad input is a 4xx problem naming the field, never a 500: JSON, unstorable text, sizes, query strings."""

from __future__ import annotations

import http.client
from urllib.parse import urlsplit

import pytest

PROBLEM = "application/problem+json"


def post_raw(client, tenant, data: bytes | str, content_type: str = "application/json"):
    return client.post("/v1/jobs", data=data, headers={**tenant["headers"], "Content-Type": content_type})


@pytest.mark.parametrize(
    "raw",
    [
        "{not json",
        "[1, 2]",
        '"a string"',
        '{"definitionKey": "echo", "params": {"n": NaN}}',
        '{"definitionKey": "echo", "params": {"n": Infinity}}',
        b'{"definitionKey": "\xff\xfe"}',
        '{"definitionKey": "echo", "params": {"n": ' + "9" * 5000 + "}}",
        "[" * 100_000 + "]" * 100_000,
    ],
    ids=["truncated", "array", "string", "nan", "infinity", "bad-utf8", "huge-int", "deep-nesting"],
)
def test_a_body_that_is_not_a_json_object_is_a_400_problem(client, tenant, raw):
    response = post_raw(client, tenant, raw)
    assert response.status_code == 400 and response.content_type == PROBLEM
    assert "sys." not in response.json["detail"] and "recursion" not in response.json["detail"]


def test_why_a_body_did_not_parse_is_said_in_the_clients_terms(client, tenant):
    huge = post_raw(client, tenant, '{"params": {"n": ' + "9" * 5000 + "}}")
    assert huge.json["detail"].endswith("a number has more than 4300 digits")
    deep = post_raw(client, tenant, "[" * 100_000 + "]" * 100_000)
    assert deep.json["detail"].endswith("it is nested too deeply")


def test_a_value_no_member_of_a_union_accepts_is_one_error_under_the_fields_own_name(client, tenant):
    """pydantic reports one error per member of a union, at ``priority.constrained-int``; the client
    sent ``priority``."""
    response = client.post(
        "/v1/jobs", json={"definitionKey": "echo", "priority": "urgent"}, headers=tenant["headers"]
    )
    assert response.status_code == 422
    [error] = response.json["errors"]
    assert error["field"] == "priority"
    assert "'critical'" in error["message"] and "integer" in error["message"]
    body = {"definitionKey": "compute.math", "params": {"operation": "sum", "numbers": [1, 1e16]}}
    response = client.post("/v1/jobs", json=body, headers=tenant["headers"])
    assert [error["field"] for error in response.json["errors"]] == ["params.numbers.1"]
    body = {"definitionKey": "compute.math", "params": {"operation": "fibonacci", "numbers": [2.5]}}
    response = client.post("/v1/jobs", json=body, headers=tenant["headers"])
    assert response.json["errors"][0]["message"] == "fibonacci takes whole numbers from 0 to 10000"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"definitionKey": "echo", "params": {"message": "a\\u0000b"}}', "params.message"),
        ('{"definitionKey": "echo", "params": {"k\\u0000": 1}}', "params.k\x00"),
        ('{"definitionKey": "echo", "params": {"message": "\\ud800"}}', "params.message"),
        ('{"definitionKey": "echo", "params": {"list": ["ok", "\\u0000"]}}', "params.list.1"),
        ('{"definitionKey": "echo", "params": ' + '{"a": ' * 70 + "1" + "}" * 71, "params"),
    ],
    ids=["nul-value", "nul-key", "lone-surrogate", "nul-in-list", "too-deep"],
)
def test_text_postgresql_cannot_store_is_a_422_naming_the_field(client, tenant, body, field):
    response = post_raw(client, tenant, body)
    assert response.status_code == 422 and response.content_type == PROBLEM
    assert response.json["errors"][0]["field"].startswith(field)


def test_invalid_values_are_422_with_every_field_listed(client, tenant):
    response = client.post(
        "/v1/jobs",
        json={
            "definitionKey": "",
            "definitionVersion": 0,
            "maxAttempts": 1000,
            "webhookUrl": "ftp://x",
            "x": 1,
        },
        headers=tenant["headers"],
    )
    assert response.status_code == 422
    fields = {error["field"] for error in response.json["errors"]}
    assert {"definitionKey", "definitionVersion", "maxAttempts", "webhookUrl", "x"} <= fields


def test_params_are_checked_by_the_definition_and_named_under_params(client, tenant):
    body = {"definitionKey": "compute.math", "params": {"operation": "sum", "numbers": "nope"}}
    response = client.post("/v1/jobs", json=body, headers=tenant["headers"])
    assert response.status_code == 422
    assert response.json["errors"][0]["field"].startswith("params.numbers")


def test_a_body_that_is_not_json_is_415(client, tenant):
    assert post_raw(client, tenant, "a=1", "application/x-www-form-urlencoded").status_code == 415
    assert post_raw(client, tenant, "", "text/plain").status_code == 415


def test_an_optional_body_may_be_empty_but_not_malformed(client, tenant, dead_letter):
    path = f"/v1/dlq/{dead_letter['letter_id']}/retry"
    bad = client.post(path, data="{", headers={**tenant["headers"], "Content-Type": "application/json"})
    assert bad.status_code == 400
    assert client.post(path, headers=tenant["headers"]).status_code == 202


def test_a_query_string_with_nul_is_a_422_naming_the_parameter_on_any_route(client, tenant):
    for path in ("/v1/jobs?definitionKey=a%00b", "/v1/dlq?definitionKey=%00", "/v1/stats?x%00=1"):
        response = client.get(path, headers=tenant["headers"])
        assert response.status_code == 422 and response.content_type == PROBLEM, path


def test_an_oversized_body_is_413_with_or_without_content_length(app, tenant, live_server):
    limit = app.config["MAX_CONTENT_LENGTH"]
    url = urlsplit(live_server)

    def send(body: bytes, chunked: bool) -> int:
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
        headers = {**tenant["headers"], "Content-Type": "application/json"}
        if chunked:
            connection.request("POST", "/v1/jobs", body=iter([body]), headers=headers, encode_chunked=True)
        else:
            connection.request("POST", "/v1/jobs", body=body, headers=headers)
        status = connection.getresponse().status
        connection.close()
        return status

    big = b'{"definitionKey": "echo", "params": {"message": "' + b"x" * limit + b'"}}'
    assert send(big, chunked=False) == 413
    assert send(big, chunked=True) == 413
    assert send(b'{"definitionKey": "echo", "params": {"message": "small"}}', chunked=True) == 202


def test_a_malformed_id_in_a_path_is_named_as_such_and_an_unknown_path_as_no_route(client, tenant):
    for method, path in (("get", "/v1/jobs/not-a-uuid"), ("post", "/v1/jobs/not-a-uuid/cancel")):
        response = getattr(client, method)(path, headers=tenant["headers"])
        assert response.status_code == 404 and response.content_type == PROBLEM
        assert response.json["detail"].startswith("'not-a-uuid' is not an id: ids are UUIDs")
    unknown = client.get("/v1/nothing-here", headers=tenant["headers"])
    assert unknown.status_code == 404 and unknown.json["detail"] == "no route for GET /v1/nothing-here"
    missing = client.get("/v1/jobs/00000000-0000-4000-8000-000000000001", headers=tenant["headers"])
    assert missing.json["detail"] == "no job 00000000-0000-4000-8000-000000000001"
