"""Masking by default: the one masking function, and every surface that shows a job through it."""

from __future__ import annotations

import json
import uuid

import pytest
from support.ui import csrf_of

from gpujobs import jobs, webhooks
from gpujobs.extensions import db
from gpujobs.masking import MASK, is_secret_name, mask_secrets, mask_text, mask_url
from gpujobs.models import Job, WebhookDelivery
from gpujobs.registry import get_definition

SECRET_NAMES = [
    "cookie", "Cookie", "Set-Cookie", "OPENAI_KEY", "aws_secret_access_key", "x-api-key", "apiKey",
    "accessKey", "private_key", "HF_TOKEN", "token_count", "refreshToken", "client_secret", "SECRET",
    "password", "DB_PASSWORD", "passwd", "Authorization", "proxy-authorization", "X-Auth", "credentials",
    "X-Hub-Signature",
]  # fmt: skip
PLAIN_NAMES = ["key", "name", "message", "url", "Content-Type", "width", "monkey", "sort", "keyframes"]


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_names_that_look_secret_are_masked(name: str) -> None:
    assert is_secret_name(name)
    assert mask_secrets({name: "v", "nested": [{name: "v"}]}) == {name: MASK, "nested": [{name: MASK}]}


@pytest.mark.parametrize("name", PLAIN_NAMES)
def test_plain_names_are_shown(name: str) -> None:
    assert not is_secret_name(name)
    assert mask_secrets({name: "v"}) == {name: "v"}


def test_mask_secrets_hides_every_secret_looking_key_at_any_depth_and_keeps_the_rest() -> None:
    params = {
        "Password": "a", "db": {"pass": "b", "host": "h"}, "items": [{"apiKey": "c"}, {"api-key": "d"}],
        "client_secret": "e", "AUTHORIZATION": "f", "credentials": {"u": "g"}, "private_key": "h",
        "token_count": 3, "envs": [{"key": "HF_TOKEN", "value": "i"}, {"name": "MODEL", "value": "llama"}],
    }  # fmt: skip
    masked = mask_secrets(params)
    assert masked["Password"] == masked["db"]["pass"] == masked["items"][0]["apiKey"] == MASK
    assert masked["items"][1]["api-key"] == masked["client_secret"] == masked["AUTHORIZATION"] == MASK
    assert masked["credentials"] == masked["private_key"] == masked["token_count"] == MASK
    assert masked["envs"] == [{"key": "HF_TOKEN", "value": MASK}, {"name": "MODEL", "value": "llama"}]
    assert masked["db"]["host"] == "h" and params["Password"] == "a"  # the original is untouched


def test_a_secret_named_entry_that_holds_nothing_shows_nothing() -> None:
    """A null `imageAuthId` shown as a mask would claim a registry credential was sent."""
    assert mask_secrets({"imageAuthId": None, "password": ""}) == {"imageAuthId": None, "password": MASK}


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        (
            "https://u:pw@host.example/x?token=t&page=2",
            f"https://{MASK}@host.example/x?token={MASK}&page={MASK}",
        ),
        ("https://host.example/a?b=1", f"https://host.example/a?b={MASK}"),
        ("https://host.example/cb#access_token=t", f"https://host.example/cb#{MASK}"),
        ("https://host.example/a?opaque", f"https://host.example/a?opaque={MASK}"),
        ("https://host.example/plain/path", "https://host.example/plain/path"),
        (None, None),
    ],
)
def test_mask_url_hides_userinfo_query_values_and_fragments_but_keeps_names_and_path(
    url: str | None, masked: str | None
) -> None:
    assert mask_url(url) == masked


def test_urls_inside_text_and_inside_values_are_masked() -> None:
    error = "GET https://api.example/v1?api_key=k1 failed: 500 (see http://u:p@h.example/)"
    assert (
        mask_text(error)
        == f"GET https://api.example/v1?api_key={MASK} failed: 500 (see http://{MASK}@h.example/)"
    )
    assert mask_secrets({"callback": "https://h.example/?x=k"}) == {
        "callback": f"https://h.example/?x={MASK}"
    }
    assert mask_text("no url here") == "no url here" and mask_text(None) is None


SECRETS = ("s3cr3t-auth", "s3cr3t-cookie", "s3cr3t-openai", "s3cr3t-query", "s3cr3t-hook", "s3cr3t-user")


def test_a_call_api_job_shows_no_secret_in_the_api_the_dashboard_or_its_webhook_body(
    app, client, tenant
) -> None:
    params = {
        "endpoint": "http://127.0.0.1:9/v1/thing?token=s3cr3t-query",
        "method": "POST",
        "headers": {
            "Authorization": "Bearer s3cr3t-auth", "Cookie": "sid=s3cr3t-cookie",
            "X-Openai-Key": "s3cr3t-openai",
        },
        "body": {"callback": "https://bob:s3cr3t-user@cb.example/done"},
    }  # fmt: skip
    submitted = client.post(
        "/v1/jobs",
        json={
            "definitionKey": "call.api",
            "params": params,
            "webhookUrl": "http://127.0.0.1:9/hook?sig=s3cr3t-hook",
        },
        headers=tenant["headers"],
    )
    assert submitted.status_code == 202, submitted.json
    job_id = uuid.UUID(submitted.json["id"])
    with app.app_context():
        job = db.session.get_one(Job, job_id)
        claim = jobs.claim(job.id, get_definition(job.definition_key, job.definition_version), 60)
        error = "POST http://127.0.0.1:9/v1/thing?token=s3cr3t-query failed: ConnectionRefusedError"
        jobs.fail_attempt(job.id, claim.attempt, error, retryable=False, retry_delay_seconds=0)
        webhooks.record_job_event(job.id)  # as the runner does after a terminal transition
        db.session.commit()
        webhook_bodies = [json.dumps(d.payload) for d in db.session.query(WebhookDelivery).all()]
    assert webhook_bodies
    headers = tenant["headers"]
    seen = [submitted.get_data(as_text=True), *webhook_bodies]
    for path in (
        f"/v1/jobs/{job_id}",
        f"/v1/jobs/{job_id}/events",
        f"/v1/jobs/{job_id}/deliveries",
        "/v1/dlq",
    ):
        response = client.get(path, headers=headers)
        assert response.status_code == 200
        seen.append(response.get_data(as_text=True))
    dashboard = app.test_client()
    token = csrf_of(dashboard.get("/ui/signin").get_data(as_text=True))
    dashboard.post("/ui/signin", data={"api_key": tenant["key"], "csrf_token": token})
    page = dashboard.get(f"/ui/jobs/{job_id}")
    assert page.status_code == 200
    seen.append(page.get_data(as_text=True))
    for text in seen:
        assert not [s for s in SECRETS if s in text]
    shown = client.get(f"/v1/jobs/{job_id}", headers=headers).json
    assert shown["params"]["headers"] == {"Authorization": MASK, "Cookie": MASK, "X-Openai-Key": MASK}
    assert shown["error"].startswith(f"POST http://127.0.0.1:9/v1/thing?token={MASK} failed")
