"""Dashboard sign-in, session cookie, CSRF and tenant isolation, through the Flask test client."""

from __future__ import annotations

import uuid

import pytest
from support.tenants import make_tenant
from support.ui import csrf_of

from gpujobs.extensions import db
from gpujobs.models import DashboardSession, Instance, Job
from gpujobs.tenants import list_keys, revoke_key
from gpujobs.ui.signin import COOKIE_NAME, DashboardSessionInterface


def session_cookie(client):
    return client.get_cookie(COOKIE_NAME, path="/ui")


def set_cookie_header(response) -> str:
    return next(h for h in response.headers.getlist("Set-Cookie") if h.startswith(COOKIE_NAME))


def test_a_valid_api_key_signs_in_and_the_cookie_holds_the_tenant_but_never_the_key(app, tenant):
    client = app.test_client()
    token = csrf_of(client.get("/ui/signin").get_data(as_text=True))
    response = client.post("/ui/signin", data={"api_key": tenant["key"], "csrf_token": token})
    assert response.status_code == 302 and response.headers["Location"] == "/ui/"
    assert tenant["key"] not in response.headers["Location"]
    cookie = set_cookie_header(response)
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/ui" in cookie
    assert "Secure" not in cookie  # plain http on localhost only
    raw = session_cookie(client).value
    assert tenant["key"] not in raw
    data = DashboardSessionInterface().get_signing_serializer(app).loads(raw)
    assert set(data) == {"tenant_id", "key_id", "session_id", "nonce"} and data["tenant_id"] == tenant["id"]
    assert tenant["name"] in client.get("/ui/").get_data(as_text=True)


@pytest.mark.parametrize("base_url", ["https://localhost", "http://dashboard.example.com"])
def test_the_session_cookie_is_secure_everywhere_but_plain_http_on_localhost(app, tenant, base_url):
    client = app.test_client()
    response = client.get("/ui/signin", base_url=base_url)
    assert "Secure" in set_cookie_header(response)


def test_a_wrong_api_key_is_refused_with_401_and_no_session(app, tenant):
    client = app.test_client()
    token = csrf_of(client.get("/ui/signin").get_data(as_text=True))
    response = client.post("/ui/signin", data={"api_key": "gj_wrong", "csrf_token": token})
    assert response.status_code == 401 and "not valid" in response.get_data(as_text=True)
    assert client.get("/ui/jobs").status_code == 302


def test_pages_without_a_session_send_to_sign_in_and_come_back_after_it(app, tenant):
    client = app.test_client()
    response = client.get("/ui/jobs?status=failed")
    assert response.status_code == 302 and response.headers["Location"].startswith("/ui/signin?next=")
    html = client.get(response.headers["Location"]).get_data(as_text=True)
    assert 'name="next" value="/ui/jobs?status=failed"' in html
    response = client.post(
        "/ui/signin",
        data={"api_key": tenant["key"], "csrf_token": csrf_of(html), "next": "/ui/jobs?status=failed"},
    )
    assert response.headers["Location"] == "/ui/jobs?status=failed"


@pytest.mark.parametrize("target", ["//evil.example/ui/", "https://evil.example/", "/v1/jobs", "/ui\\..\\x"])
def test_sign_in_never_redirects_outside_the_dashboard(app, tenant, target):
    client = app.test_client()
    token = csrf_of(client.get("/ui/signin").get_data(as_text=True))
    response = client.post("/ui/signin", data={"api_key": tenant["key"], "csrf_token": token, "next": target})
    assert response.headers["Location"] == "/ui/"


def test_signing_out_ends_the_session_on_the_server_so_a_copied_cookie_is_refused(app, ui_client, tenant):
    client = ui_client(tenant)
    copied = session_cookie(client).value
    response = client.post("/ui/signout", data={"csrf_token": client.csrf})
    assert response.status_code == 302
    assert client.get("/ui/").status_code == 302
    replay = app.test_client()
    replay.set_cookie(COOKIE_NAME, copied, path="/ui")
    assert replay.get("/ui/").status_code == 302
    with app.app_context():
        assert db.session.query(DashboardSession).count() == 0


def test_revoking_the_api_key_ends_the_sessions_it_opened(app, ui_client, tenant):
    client, other = ui_client(tenant), ui_client(tenant)
    assert client.get("/ui/").status_code == 200 and other.get("/ui/").status_code == 200
    # a context of its own: the test client's requests must not run inside it
    with app.app_context():
        (key,) = list_keys(tenant["name"])
        assert revoke_key(key.id)
    assert client.get("/ui/").status_code == 302 and other.get("/ui/").status_code == 302
    assert app.test_client().get("/v1/jobs", headers=tenant["headers"]).status_code == 401


def test_revoking_one_tenants_key_leaves_another_tenants_sessions_alone(app, ui_client, tenant):
    other_tenant = make_tenant(app, "globex")
    mine, theirs = ui_client(tenant), ui_client(other_tenant)
    with app.app_context():
        (key,) = list_keys(other_tenant["name"])
        revoke_key(key.id)
    assert mine.get("/ui/").status_code == 200 and theirs.get("/ui/").status_code == 302


def test_a_session_row_of_another_key_does_not_open_the_dashboard(app, ui_client, tenant):
    other_tenant = make_tenant(app, "globex")
    mine, theirs = ui_client(tenant), ui_client(other_tenant)
    forged = dict(DashboardSessionInterface().get_signing_serializer(app).loads(session_cookie(mine).value))
    stolen = DashboardSessionInterface().get_signing_serializer(app).loads(session_cookie(theirs).value)
    forged["session_id"] = stolen["session_id"]  # even with the app's signing key, rows stay bound to keys
    probe = app.test_client()
    probe.set_cookie(
        COOKIE_NAME, DashboardSessionInterface().get_signing_serializer(app).dumps(forged), path="/ui"
    )
    assert probe.get("/ui/").status_code == 302


def _action_urls(job_id: uuid.UUID, letter_id: uuid.UUID) -> list[str]:
    return [
        f"/ui/jobs/{job_id}/cancel",
        f"/ui/dlq/{letter_id}/redrive",
        f"/ui/jobs/{job_id}/deliveries/{uuid.uuid4()}/redeliver",
        f"/ui/instances/{uuid.uuid4()}/stop",
        "/ui/signout",
    ]


@pytest.mark.parametrize("token", [None, "", "0" * 64])
def test_forms_without_a_valid_csrf_token_are_refused_with_400(
    ui_client, tenant, submit_job, dead_letter, token
):
    client = ui_client(tenant)
    job_id = submit_job(tenant, "echo")
    _, letter_id = dead_letter(tenant)
    data = {} if token is None else {"csrf_token": token}
    for url in _action_urls(job_id, letter_id):
        response = client.post(url, data=data)
        assert response.status_code == 400, url
        assert "CSRF" in response.get_data(as_text=True)
    signin = client.post("/ui/signin", data={"api_key": tenant["key"], **data})
    assert signin.status_code == 400


def test_a_token_from_another_session_is_refused(app, ui_client, tenant, submit_job):
    other = make_tenant(app, "globex")
    stolen = ui_client(other).csrf
    client = ui_client(tenant)
    job_id = submit_job(tenant, "echo")
    assert client.post(f"/ui/jobs/{job_id}/cancel", data={"csrf_token": stolen}).status_code == 400
    assert client.post(f"/ui/jobs/{job_id}/cancel", data={"csrf_token": client.csrf}).status_code == 302


def test_the_token_issued_before_sign_in_stops_working_after_it(app, tenant):
    client = app.test_client()
    before = csrf_of(client.get("/ui/signin").get_data(as_text=True))
    client.post("/ui/signin", data={"api_key": tenant["key"], "csrf_token": before})
    assert client.post("/ui/signout", data={"csrf_token": before}).status_code == 400


def test_another_tenants_jobs_letters_and_instances_answer_404_on_pages_and_actions(
    app, ui_client, tenant, submit_job, dead_letter
):
    owner_job = submit_job(tenant, "echo")
    _, letter_id = dead_letter(tenant)
    intruder = ui_client(make_tenant(app, "globex"))
    assert intruder.get(f"/ui/jobs/{owner_job}").status_code == 404
    assert intruder.get("/ui/jobs/not-a-uuid").status_code == 404
    for address in ("/ui/jobs/not-a-uuid", "/ui/no-such-page", "/ui/jobs/x/y/z"):  # routed or not: a page
        missing = intruder.get(address)
        assert missing.status_code == 404 and missing.mimetype == "text/html", address
    assert intruder.get("/v1/no-such-route").mimetype == "application/problem+json"
    for url in _action_urls(owner_job, letter_id)[:-1]:
        assert intruder.post(url, data={"csrf_token": intruder.csrf}).status_code == 404, url
    # a context of its own: the test client's requests must not run inside it
    with app.app_context():
        assert db.session.get(Job, owner_job).status == "queued"
    html = intruder.get("/ui/jobs").get_data(as_text=True)
    assert str(owner_job) not in html and "No jobs" in html
    assert str(letter_id) not in intruder.get("/ui/dlq").get_data(as_text=True)


SECRET_PARAMS = {
    "message": "<script>alert('xss')</script>",
    "data": {
        "password": "hunter2-password",
        "nested": {"apiKey": "sk-nested-apikey", "list": [{"Auth_Token": "tok-in-list"}]},
        "envs": [{"key": "HF_TOKEN", "value": "hf-env-secret"}, {"key": "MODEL", "value": "llama"}],
        "registry": "https://user:registry-pass@registry.example.com/v2?access_token=url-token&tag=1",
        "privateKey": "pem-private-key",
        "credentials": {"user": "ops"},
    },
}
SECRETS = (
    "hunter2-password",
    "sk-nested-apikey",
    "tok-in-list",
    "hf-env-secret",
    "registry-pass",
    "url-token",
    "pem-private-key",
)


def test_secret_params_are_masked_on_every_page(ui_client, tenant, submit_job, dead_letter):
    queued = submit_job(
        tenant, "echo", SECRET_PARAMS, webhook_url="http://127.0.0.1:9/hook?token=hook-secret"
    )
    failed, _ = dead_letter(tenant, "echo", SECRET_PARAMS)
    client = ui_client(tenant)
    pages = [
        "/ui/",
        "/ui/jobs",
        "/ui/dlq",
        f"/ui/jobs/{queued}",
        f"/ui/jobs/{failed}",
        "/ui/jobs?status=failed",
    ]
    for url in pages:
        html = client.get(url).get_data(as_text=True)
        for secret in (*SECRETS, "hook-secret"):
            assert secret not in html, f"{secret} shown on {url}"
    job_page = client.get(f"/ui/jobs/{queued}").get_data(as_text=True)
    assert job_page.count("••••") >= 7 and "llama" in job_page and "registry.example.com" in job_page
    assert "<script>alert" not in job_page and "&lt;script&gt;alert" in job_page


def test_pages_carry_a_strict_content_security_policy_and_are_never_cached(ui_client, tenant):
    response = ui_client(tenant).get("/ui/")
    policy = response.headers["Content-Security-Policy"]
    assert (
        "default-src 'none'" in policy
        and "script-src 'self'" in policy
        and "frame-ancestors 'none'" in policy
    )
    assert response.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize("query", ["status=nope", "cursor=%%%", "limit=0", "limit=500"])
def test_bad_list_parameters_are_refused_as_the_api_refuses_them_in_a_page(ui_client, tenant, query):
    response = ui_client(tenant).get(f"/ui/jobs?{query}")
    assert response.status_code == 422 and response.mimetype == "text/html"
    assert query.split("=")[0] in response.get_data(as_text=True)


def test_the_dashboard_leaves_the_api_sessionless(client, tenant):
    response = client.get("/v1/jobs", headers=tenant["headers"])
    assert response.status_code == 200 and "Set-Cookie" not in response.headers


def test_an_instance_action_its_status_does_not_allow_is_refused_with_the_reason(app, ui_client, tenant):
    instance_id = uuid.uuid4()
    # a context of its own: the test client's requests must not run inside it
    with app.app_context():
        db.session.add(
            Instance(id=instance_id, tenant_id=uuid.UUID(tenant["id"]), name="gpujobs-x", status="running")
        )
        db.session.commit()
    client = ui_client(tenant)
    response = client.post(f"/ui/instances/{instance_id}/start", data={"csrf_token": client.csrf})
    assert response.status_code == 302
    assert "Refused: cannot start" in client.get(response.headers["Location"]).get_data(as_text=True)
    assert (
        client.post(f"/ui/instances/{instance_id}/reboot", data={"csrf_token": client.csrf}).status_code
        == 404
    )


def test_header_values_of_a_job_are_masked_on_its_page_whatever_their_names(
    app, ui_client, tenant, submit_job
):
    params = {"url": "http://127.0.0.1:9/", "payload": {}, "headers": {"X-Custom": "value-in-params"}}
    job_id = submit_job(tenant, "webhook.send", params, webhook_headers={"X-Other": "value-on-the-job"})
    page = ui_client(tenant).get(f"/ui/jobs/{job_id}").get_data(as_text=True)
    assert "X-Custom" in page
    assert "value-in-params" not in page and "value-on-the-job" not in page
