"""The dashboard shows what each instance has cost so far, beside its price."""

from __future__ import annotations

import uuid

from sqlalchemy import update
from support.gpu import provision

from gpujobs.extensions import db
from gpujobs.models import Instance


def test_instance_views_show_the_accrued_cost(app, client, ui_client, tenant):
    accepted = provision(client, tenant)
    page = ui_client(tenant)
    assert "Spent" in page.get("/ui/instances").get_data(as_text=True)
    assert "spent" not in page.get(f"/ui/jobs/{accepted['jobId']}").get_data(as_text=True)

    with app.app_context():  # as the cost sweep leaves it: 1/100,000 USD units, here $12.35
        db.session.execute(
            update(Instance)
            .where(Instance.id == uuid.UUID(accepted["instanceId"]))
            .values(cost_units=1_234_567)
        )
        db.session.commit()
    assert "$12.35" in page.get("/ui/instances").get_data(as_text=True)
    assert "$12.35 spent" in page.get(f"/ui/jobs/{accepted['jobId']}").get_data(as_text=True)
