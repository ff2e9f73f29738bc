"""The overview shows the tenant's GPU quotas with their use, as ``GET /v1/limits`` does."""

from __future__ import annotations

from decimal import Decimal

from support.gpu import REQUEST
from support.tenants import set_limits


def test_the_overview_shows_instances_and_usd_per_hour_against_their_quotas(app, client, ui_client, tenant):
    set_limits(app, tenant, max_instances=4, max_usd_per_hour=Decimal("2.5"))
    body = {**REQUEST, "maxPricePerHour": 0.75}
    assert client.post("/v1/instances", json=body, headers=tenant["headers"]).status_code == 202
    html = ui_client(tenant).get("/ui/").get_data(as_text=True)
    assert '<td class="num" data-limit="instances">1 of 4</td>' in html
    assert '<td class="num" data-limit="usdPerHour">$0.75 of $2.50</td>' in html
