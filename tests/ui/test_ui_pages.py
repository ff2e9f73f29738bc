"""What the pages compute and show: the chart, attempts, endpoints, refresh, redrive input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from gpujobs.extensions import db
from gpujobs.models import DeadLetter
from gpujobs.ui.display import endpoint_lines
from gpujobs.ui.figures import CHART_HEIGHT, CHART_TOP, chart
from gpujobs.ui.pages import attempts


def test_the_chart_has_one_bar_per_hour_stacked_and_scaled_to_the_busiest_hour():
    start = datetime(2026, 1, 1, tzinfo=UTC)
    hourly = [
        {"period": (start + timedelta(hours=h)).isoformat(), "completed": h, "failed": 1 if h == 23 else 0,
         "cancelled": 0}
        for h in range(24)
    ]  # fmt: skip
    drawn = chart(hourly)
    assert len(drawn["bars"]) == 24 and drawn["tallest"] == 24 and drawn["total"] == sum(range(24)) + 1
    assert drawn["bars"][0]["segments"] == []
    busiest = drawn["bars"][23]["segments"]
    assert [s["series"] for s in busiest] == ["succeeded", "failed"]
    assert busiest[-1]["y"] == CHART_TOP  # the busiest hour reaches the top of the plot
    assert all(0 <= s["y"] <= CHART_HEIGHT for bar in drawn["bars"] for s in bar["segments"])
    assert [label["text"] for label in drawn["labels"]] == ["00:00", "06:00", "12:00", "18:00", "23:00"]
    assert drawn["bars"][23]["title"] == "23:00 UTC: 23 succeeded, 1 failed, 0 cancelled"


def test_attempts_are_read_off_the_timeline_with_their_outcome_and_error():
    at = datetime(2026, 1, 1, tzinfo=UTC)
    timeline = [
        {"type": "job.queued", "attempt": 0, "data": {}, "at": at},
        {"type": "job.started", "attempt": 1, "data": {}, "at": at},
        {"type": "job.retrying", "attempt": 1, "data": {"error": "HTTP 503"}, "at": at},
        {"type": "job.started", "attempt": 2, "data": {}, "at": at},
        {"type": "job.failed", "attempt": 2, "data": {"error": "out of stock"}, "at": at},
        {"type": "job.dead_lettered", "attempt": 2, "data": {}, "at": at},
        {"type": "job.started", "attempt": 3, "data": {}, "at": at},
    ]
    rows = attempts(timeline)
    assert [(r["number"], r["outcome"], r.get("error")) for r in rows] == [
        (1, "failed, retried", "HTTP 503"), (2, "failed", "out of stock"), (3, "running", None),
    ]  # fmt: skip


def test_endpoints_become_one_line_per_port_and_the_ssh_command():
    endpoints = {"ports": [{"port": 8888, "type": "http", "endpoint": "https://e.example"}, {"port": 22}],
                 "ssh": "ssh -p 1 root@h", "empty": None}  # fmt: skip
    assert endpoint_lines(endpoints) == ["8888/http → https://e.example", "22", "ssh: ssh -p 1 root@h"]


def test_a_redrive_with_an_out_of_range_max_attempts_is_refused_and_the_letter_stays(
    app, ui_client, tenant, dead_letter
):
    _, letter_id = dead_letter(tenant)
    client = ui_client(tenant)
    for value in ("0", "101", "many"):
        response = client.post(
            f"/ui/dlq/{letter_id}/redrive", data={"csrf_token": client.csrf, "max_attempts": value}
        )
        assert response.headers["Location"] == "/ui/dlq"
        assert "maxAttempts:" in client.get("/ui/dlq").get_data(as_text=True)
    # a context of its own: the test client's requests must not run inside it
    with app.app_context():
        assert db.session.get(DeadLetter, letter_id).redriven_at is None


def test_lists_and_unfinished_jobs_refresh_themselves_and_the_sign_in_form_does_not(
    ui_client, tenant, submit_job, app
):
    client = ui_client(tenant)
    job_id = submit_job(tenant, "echo")
    for url in ("/ui/", "/ui/jobs", "/ui/dlq", "/ui/instances", f"/ui/jobs/{job_id}"):
        html = client.get(url).get_data(as_text=True)
        assert 'data-refresh="5"' in html and '<meta http-equiv="refresh" content="5">' in html, url
    assert "refresh" not in app.test_client().get("/ui/signin").get_data(as_text=True)
