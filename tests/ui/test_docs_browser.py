"""``/docs`` in a real headless Chromium: Swagger UI loads from this server alone, without a console error
or a failed request, groups operations by tag, and "try it" sends the API key and gets a real answer."""

from __future__ import annotations

from urllib.parse import urlparse

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_the_api_reference_opens_offline_and_tries_a_call_with_the_api_key(
    app, tenant, new_page, live_server, screenshot
):
    page = new_page()
    errors: list[str] = []
    sent: list[dict[str, str]] = []
    page.on("console", lambda message: message.type == "error" and errors.append(message.text))
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("requestfailed", lambda request: errors.append(f"failed: {request.url}"))
    page.on(
        "response",
        lambda response: response.status >= 400 and errors.append(f"{response.status} {response.url}"),
    )
    page.on("request", lambda request: sent.append({"url": request.url, **request.headers}))

    page.goto("/docs")
    page.wait_for_selector(".opblock-tag-section")
    tags = page.locator(".opblock-tag").all_inner_texts()
    assert {"jobs", "instances", "dlq", "schedules", "videos", "metrics"} <= {t.split()[0] for t in tags}, (
        tags
    )

    page.click("button.authorize")
    page.fill(".auth-container input", tenant["key"])
    page.click(".auth-btn-wrapper button.authorize")
    page.click("button.btn-done")

    submit = page.locator("#operations-jobs-post_jobs_submit_job")
    submit.locator(".opblock-summary").click()
    submit.locator("button.try-out__btn").click()
    assert '"definitionKey": "compute.math"' in submit.locator("textarea.body-param__text").input_value()
    submit.locator("button.execute").click()
    status = submit.locator(".live-responses-table tr.response .response-col_status").first
    status.wait_for()
    assert status.inner_text().strip() == "202"
    screenshot(page, "docs")

    calls = [request for request in sent if urlparse(request["url"]).path == "/v1/jobs"]
    assert calls and calls[0].get("authorization") == f"Bearer {tenant['key']}"
    hosts = {urlparse(request["url"]).netloc for request in sent if request["url"].startswith("http")}
    assert hosts == {urlparse(live_server).netloc}, hosts  # no CDN, no validator badge
    assert errors == []
