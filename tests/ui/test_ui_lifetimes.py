"""The dashboard shows how long an instance with a lifetime has left, and what happens then."""

from __future__ import annotations

from sqlalchemy import func, update
from support.gpu import provision

from gpujobs.extensions import db
from gpujobs.models import Instance


def test_instance_views_show_the_time_left_and_what_happens_at_the_deadline(app, client, ui_client, tenant):
    accepted = provision(client, tenant, maxRuntimeSeconds=7200, onExpiry="stop")
    plain = provision(client, tenant)
    page = ui_client(tenant)

    html = page.get("/ui/instances").get_data(as_text=True)
    assert "Time left" in html
    assert "1 h 59 m left (then stop)" in html
    job_page = page.get(f"/ui/jobs/{accepted['jobId']}").get_data(as_text=True)
    assert "1 h 59 m left (then stop)" in job_page
    assert "left (then" not in page.get(f"/ui/jobs/{plain['jobId']}").get_data(as_text=True)

    with app.app_context():  # the deadline passed
        db.session.execute(
            update(Instance).values(expires_at=func.now()).where(Instance.max_runtime_seconds.is_not(None))
        )
        db.session.commit()
    assert "expired (stop)" in page.get("/ui/instances").get_data(as_text=True)
