"""A tenant's pages show its own figures only: another tenant's load changes nothing a tenant can see.

The broker's queue depths are the whole cluster's load, so they are on the operator's ``/metrics`` and
not on the overview; the overview's limits and Novita grants are the signed-in tenant's.
"""

from __future__ import annotations

import re

from support.tenants import grant, make_tenant

CSRF = re.compile(r'(name="csrf[-_]token"\s+(?:value|content)=")[^"]*"')


def overview_text(client) -> str:
    """The overview page without its per-request form tokens."""
    return CSRF.sub(r'\1"', client.get("/ui/").get_data(as_text=True))


def test_another_tenants_load_changes_nothing_on_a_tenants_overview_or_v1_figures(
    app, client, ui_client, tenant, submit_job
):
    other = make_tenant(app, "busy")
    page = ui_client(tenant)
    paths = ("/v1/stats", "/v1/metrics?ttl=0", "/v1/metrics/throughput?ttl=0", "/v1/limits")
    before = overview_text(page), [client.get(path, headers=tenant["headers"]).json for path in paths]
    for index in range(37):
        submit_job(other, "echo", {"message": str(index)}, priority=("low", "normal", "high")[index % 3])
    after = overview_text(page), [client.get(path, headers=tenant["headers"]).json for path in paths]
    assert after == before
    assert "data-queue" not in after[0] and "Broker queues" not in after[0]
    assert 'data-limit="runningJobs"' in after[0]


def test_the_overview_lists_only_the_tenants_own_grants(app, ui_client, tenant):
    other = make_tenant(app, "other")
    grant(app, tenant, "template", "tpl-acme")
    grant(app, tenant, "registry_auth", "auth-acme")
    mine = overview_text(ui_client(tenant))
    theirs = overview_text(ui_client(other))
    assert 'data-template="tpl-acme"' in mine and 'data-registry-auth="auth-acme"' in mine
    assert "tpl-acme" not in theirs and "auth-acme" not in theirs
