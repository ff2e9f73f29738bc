"""The OpenAPI document and /docs: every route documented, and real answers matching the documented models."""

from __future__ import annotations

import re

import pytest
from pydantic import BaseModel

from gpujobs import resources
from gpujobs.api import schemas
from gpujobs.api.openapi import documented, undocumented_routes
from gpujobs.states import JobStatus


def conforms(response, model: type[BaseModel]) -> None:
    assert response.status_code < 300, response.json
    model.model_validate_json(response.get_data(), strict=True)


def test_every_v1_route_is_documented(app):
    assert undocumented_routes(app) == []


def test_the_document_describes_auth_errors_parameters_and_idempotency(app, client):
    spec = client.get("/openapi.json").json
    assert spec["openapi"].startswith("3.1") and spec["components"]["securitySchemes"]["bearerAuth"]
    paths = spec["paths"]
    v1_rules = {rule.rule for rule in app.url_map.iter_rules() if rule.rule.startswith("/v1")}
    assert len([p for p in paths if p.startswith("/v1")]) == len(v1_rules)
    assert {"/health", "/ready", "/metrics", "/openapi.json", "/docs"} <= paths.keys()
    operation_ids = [op["operationId"] for methods in paths.values() for op in methods.values()]
    assert len(operation_ids) == len(set(operation_ids))
    submit = paths["/v1/jobs"]["post"]
    assert {"202", "400", "401", "409", "413", "415", "422", "429"} <= submit["responses"].keys()
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in submit["parameters"])
    body = submit["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/SubmitJob"}
    problem = submit["responses"]["422"]["content"]["application/problem+json"]["schema"]
    assert problem == {"$ref": "#/components/schemas/Problem"}
    listing = {p["name"]: p for p in paths["/v1/jobs"]["get"]["parameters"]}
    assert listing["status"]["schema"]["enum"] == list(JobStatus)
    assert listing["limit"]["schema"]["maximum"] == 200
    job = paths["/v1/jobs/{job_id}"]["get"]
    uuid_schema = {"type": "string", "format": "uuid"}
    assert job["parameters"][0] == {"name": "job_id", "in": "path", "required": True, "schema": uuid_schema}
    assert paths["/health"]["get"]["security"] == [] and job["security"] == [{"bearerAuth": []}]
    throughput = {p["name"]: p for p in paths["/v1/metrics/throughput"]["get"]["parameters"]}
    assert {name: parameter["schema"] for name, parameter in throughput.items()} == {
        "ttl": {"type": "integer", "minimum": 0, "maximum": 3600},  # its default is a setting
        "hours": {"type": "integer", "minimum": 1, "maximum": 168, "default": 24},
    }
    assert "GPUJOBS_METRICS_CACHE_TTL_SECONDS" in throughput["ttl"]["description"]


def test_the_docs_page_is_swagger_ui_on_this_servers_document_with_every_asset_served_here(client):
    page = client.get("/docs")
    with client.get("/docs/") as slashed:  # as people type it
        assert slashed.status_code == 308 and slashed.headers["Location"].endswith("/docs")
    assert page.status_code == 200 and page.content_type.startswith("text/html")
    html = page.get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets and all(url.startswith("/docs/") for url in assets), assets  # no CDN, no other host
    assert any(url.endswith("favicon-32x32.png") for url in assets)
    for url in assets:
        with client.get(url) as asset:  # a file response: closed here
            assert asset.status_code == 200, url
    assert "<script>" not in html  # scripts are files
    initializer = client.get("/docs/swagger-initializer.js").get_data(as_text=True)
    assert '"url": "/openapi.json"' in initializer and '"validatorUrl": null' in initializer
    with client.get("/docs/assets/../../__init__.py") as outside:
        assert outside.status_code == 404


def test_every_request_body_has_an_example_its_own_model_accepts(app, client):
    paths = client.get("/openapi.json").json["paths"]
    bodies = {
        (rule.rule, op.request): paths[_spec_path(rule.rule)]
        for rule, _, op in documented(app)
        if op is not None and op.request is not None
    }
    assert bodies
    for (rule, model), methods in bodies.items():
        for operation in methods.values():
            for content_type, media in operation.get("requestBody", {}).get("content", {}).items():
                assert "example" in media, (rule, content_type)
                if content_type == "application/json":
                    model.model_validate(media["example"])


def _spec_path(rule: str) -> str:
    return re.sub(r"<(?:\w+(?:\([^)]*\))?:)?(\w+)>", r"{\1}", rule)


@pytest.mark.parametrize(
    ("path", "model"),
    [
        ("/v1/jobs", schemas.JobPage),
        ("/v1/jobs/{job_id}", resources.Job),
        ("/v1/jobs/{job_id}/events", schemas.JobEvents),
        ("/v1/jobs/{job_id}/deliveries", schemas.DeliveryList),
        ("/v1/dlq", schemas.DeadLetterPage),
        ("/v1/dlq/{letter_id}", schemas.DeadLetterDetail),
        ("/v1/definitions", schemas.DefinitionList),
        ("/v1/stats", schemas.Stats),
        ("/v1/metrics", schemas.MetricsOverview),
        ("/v1/metrics/definitions", schemas.DefinitionMetricsList),
        ("/v1/metrics/throughput?hours=5", schemas.Throughput),
        ("/v1/metrics/performance", schemas.Performance),
        ("/health", schemas.Health),
        ("/ready", schemas.Readiness),
    ],
)
def test_real_answers_match_their_documented_models(client, tenant, delivery, dead_letter, path, model):
    ids = {"job_id": delivery["job_id"], "letter_id": dead_letter["letter_id"]}
    conforms(client.get(path.format(**ids), headers=tenant["headers"]), model)


def test_answers_of_the_writing_routes_match_their_documented_models(
    client, tenant, submit, delivery, dead_letter
):
    conforms(submit(tenant, priority=3, maxAttempts=2, webhookUrl="http://127.0.0.1:9/x"), resources.Job)
    conforms(client.post(f"/v1/jobs/{delivery['job_id']}/cancel", headers=tenant["headers"]), resources.Job)
    redeliver = f"/v1/jobs/{delivery['job_id']}/deliveries/{delivery['delivery_id']}/redeliver"
    conforms(client.post(redeliver, headers=tenant["headers"]), resources.Delivery)
    redrive = f"/v1/dlq/{dead_letter['letter_id']}/retry"
    conforms(client.post(redrive, headers=tenant["headers"]), resources.Job)
    problem = client.post("/v1/jobs", json={"nope": 1}, headers=tenant["headers"])
    schemas.Problem.model_validate_json(problem.get_data(), strict=True)
