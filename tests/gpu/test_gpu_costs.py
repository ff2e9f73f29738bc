"""GPU cost: the sweep charges billed time at each instance's price; `/v1/metrics/cost` and Prometheus
read what it accrued."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import select, update
from support.gpu import REQUEST, run_chain, run_looks
from support.rows import instance_row
from support.tenants import make_tenant

from gpujobs import runner
from gpujobs.api.metrics import Cost
from gpujobs.extensions import db
from gpujobs.models import Instance, InstanceCostHour
from gpujobs.novita.simulator import ManualClock
from gpujobs.provisioning import costs
from gpujobs.provisioning.reconcile import reconcile

PRICE_UNITS = 35_000  # $0.35/h
T0 = datetime(2026, 1, 5, 10, 15, tzinfo=UTC)


@pytest.fixture
def sim_clock() -> ManualClock:
    """Novita's clock, from now on moved only by the test (its start and stop times follow it)."""
    return ManualClock(time.time())


@pytest.fixture
def sim_options(sim_clock):
    """Instant lifecycles, and deleted instances vanish from Novita's list at once."""
    return {"phase_seconds": 0, "removed_grace_seconds": 0, "clock": sim_clock}


def add_instance(app, tenant, *, novita_status="running", since=T0, status="running", **values) -> uuid.UUID:
    """An instance row as the create step leaves it, its cost accrued up to ``since``."""
    instance_id = uuid.uuid4()
    with app.app_context():
        db.session.add(
            Instance(
                id=instance_id,
                tenant_id=uuid.UUID(tenant["id"]),
                name=f"gpujobs-{uuid.uuid4()}",
                novita_id=f"nv-{instance_id.hex[:12]}",
                status=status,
                novita_status=novita_status,
                price_per_hour_units=values.pop("price", PRICE_UNITS),
                product_name=values.pop("product_name", "RTX 4090 24GB"),
                gpu_num=1,
                endpoints={},
                cost_accrued_at=since,
                **values,
            )
        )
        db.session.commit()
    return instance_id


def accrue(app, now: datetime) -> dict:
    with app.app_context():
        return costs.accrue(now)


def accrued(app, instance_id: uuid.UUID) -> tuple[Decimal, dict[datetime, Decimal]]:
    """The instance's total (1/100,000 USD) and its amounts by clock hour."""
    with app.app_context():
        total = db.session.get_one(Instance, instance_id).cost_units
        hours = dict(
            db.session.execute(
                select(InstanceCostHour.hour, InstanceCostHour.units).where(
                    InstanceCostHour.instance_id == instance_id
                )
            ).all()
        )
    return total, hours


def set_novita_status(app, instance_id: uuid.UUID, novita_status: str) -> None:
    with app.app_context():
        db.session.execute(
            update(Instance).where(Instance.id == instance_id).values(novita_status=novita_status)
        )
        db.session.commit()


@pytest.mark.parametrize(
    ("novita_status", "billed"),
    [
        (None, False),
        ("pending", False),
        ("toCreate", False),
        ("creating", False),
        ("pulling", True),  # Novita bills from the image pull on
        ("running", True),
        ("stopping", True),
        ("exited", False),  # the GPU is not billed while exited
        ("removing", True),
        ("removed", False),
        ("freezing", True),  # unknown meaning: counted, a guard rail errs on the side of spending
        ("someNewStatus", True),
    ],
)
def test_novita_bills_from_the_image_pull_until_the_instance_exits_or_is_removed(novita_status, billed):
    assert costs.is_billed(novita_status) is billed


def test_billed_time_is_charged_at_the_instance_price_and_split_by_clock_hour(app, tenant):
    instance_id = add_instance(app, tenant)
    assert accrue(app, T0 + timedelta(minutes=90))["charged"] == 1
    total, hours = accrued(app, instance_id)
    assert total == Decimal("52500")  # 1.5 h at 35,000 units/h: $0.525
    ten = T0.replace(minute=0)
    assert hours == {
        ten: Decimal("26250"),  # 10:15-11:00
        ten + timedelta(hours=1): Decimal("26250"),  # 11:00-11:45
    }


def test_a_second_sweep_at_the_same_moment_charges_nothing_more(app, tenant):
    instance_id = add_instance(app, tenant)
    accrue(app, T0 + timedelta(hours=1))
    assert accrue(app, T0 + timedelta(hours=1))["charged"] == 0
    assert accrued(app, instance_id)[0] == Decimal(PRICE_UNITS)


def test_an_exited_instance_costs_nothing_until_it_runs_again(app, tenant):
    instance_id = add_instance(app, tenant)
    accrue(app, T0 + timedelta(hours=1))
    set_novita_status(app, instance_id, "exited")
    accrue(app, T0 + timedelta(hours=3))  # stopped for two hours: the mark moves on, nothing is charged
    set_novita_status(app, instance_id, "running")
    accrue(app, T0 + timedelta(hours=3, minutes=30))
    assert accrued(app, instance_id)[0] == Decimal(PRICE_UNITS) * Decimal("1.5")


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


@pytest.mark.parametrize(
    ("novita_status", "started", "stopped", "spans"),
    [
        # Without Novita's times: all the time since the last look while billed, none otherwise.
        ("running", None, None, [(0, 60)]),
        ("exited", None, None, []),
        # Stopped since the last look: billed up to Novita's stop, however late it was seen.
        ("exited", -30, 20, [(0, 20)]),
        ("exited", None, 20, [(0, 20)]),  # a pull that failed: never started, billed until it exited
        # Started again since the last look: billed from Novita's start.
        ("running", 40, -10, [(40, 60)]),
        # Stopped and started again since the last look: the time between is not billed.
        ("running", 40, 20, [(0, 20), (40, 60)]),
        # A first start (no stop) leaves the image pull before it billed.
        ("running", 40, None, [(0, 60)]),
        # Times before the last look change nothing: no time is charged twice.
        ("running", -20, -40, [(0, 60)]),
        ("exited", -40, -20, []),
        ("stopping", -40, -20, [(0, 60)]),
        # A stop after the sweep's moment (another clock) is charged only up to the moment.
        ("exited", -40, 90, [(0, 60)]),
    ],
)
def test_novitas_last_start_and_stop_bound_the_billed_time_since_the_last_look(
    novita_status, started, stopped, spans
):
    def when(minutes: float | None) -> datetime | None:
        return None if minutes is None else at(minutes)

    billed = costs.billed_spans(at(0), at(60), novita_status, when(started), when(stopped))
    assert billed == [(at(start), at(end)) for start, end in spans]


def hours_at_price(hours: timedelta) -> Decimal:
    return PRICE_UNITS * Decimal(hours.total_seconds()) / 3600


def test_a_stop_seen_late_is_charged_up_to_novitas_stop_and_a_restart_from_its_start(
    app, tenant, sim, sim_clock, novita, novita_config
):
    _, instance_id = run_chain(app, tenant["id"], REQUEST)
    mark = instance_row(app, instance_id).cost_accrued_at
    novita_id = instance_row(app, instance_id).novita_id
    assert instance_row(app, instance_id).novita_started_at <= mark  # the monitor kept Novita's start
    accrue(app, mark + timedelta(minutes=20))  # a sweep while it runs

    sim_clock.advance(40 * 60)
    novita.stop_instance(novita_id)  # stopped at Novita 40 minutes in, behind our back
    with app.app_context():
        reconcile()
    stopped = instance_row(app, instance_id).novita_stopped_at
    assert instance_row(app, instance_id).novita_status == "exited"
    assert abs(stopped - (mark + timedelta(minutes=40))) < timedelta(seconds=30)
    accrue(app, mark + timedelta(hours=3))  # the sweep after: up to Novita's stop, not to now, nor to 20 min
    charged = accrued(app, instance_id)[0]
    assert charged == pytest.approx(hours_at_price(stopped - mark), abs=Decimal("0.01"))

    sim_clock.advance(4 * 3600)  # Novita: 4 h 40 min in
    novita.start_instance(novita_id)
    with app.app_context():
        reconcile()
    started = instance_row(app, instance_id).novita_started_at
    assert started > mark + timedelta(hours=4)
    accrue(app, mark + timedelta(hours=6))  # from Novita's start, not from the last sweep (3 h)
    restarted = hours_at_price(mark + timedelta(hours=6) - started)
    assert accrued(app, instance_id)[0] == pytest.approx(charged + restarted, abs=Decimal("0.01"))


def test_a_stop_through_the_api_is_charged_up_to_novitas_stop_as_its_monitor_saw_it(
    app, client, tenant, sim, sim_clock, novita_config
):
    _, instance_id = run_chain(app, tenant["id"], REQUEST)
    mark = instance_row(app, instance_id).cost_accrued_at
    sim_clock.advance(40 * 60)
    stop = client.post(f"/v1/instances/{instance_id}/stop", headers=tenant["headers"]).json
    with app.app_context():
        runner.run_job(uuid.UUID(stop["jobId"]))
    run_looks(app)
    row = instance_row(app, instance_id)
    assert (row.status, row.novita_status) == ("stopped", "exited")
    accrue(app, mark + timedelta(hours=2))
    assert accrued(app, instance_id)[0] == pytest.approx(
        hours_at_price(row.novita_stopped_at - mark), abs=Decimal("0.01")
    )
    assert abs(row.novita_stopped_at - (mark + timedelta(minutes=40))) < timedelta(seconds=30)


def test_time_a_sweep_charged_before_a_stop_was_seen_stays_charged(
    app, tenant, sim, sim_clock, novita, novita_config
):
    _, instance_id = run_chain(app, tenant["id"], REQUEST)
    mark = instance_row(app, instance_id).cost_accrued_at
    sim_clock.advance(40 * 60)
    novita.stop_instance(instance_row(app, instance_id).novita_id)
    accrue(app, mark + timedelta(hours=1))  # the stop not seen yet: still running as far as we know
    with app.app_context():
        reconcile()
    accrue(app, mark + timedelta(hours=2))
    # The counter never goes back: the hour stays; nothing after it is charged.
    assert accrued(app, instance_id)[0] == pytest.approx(Decimal(PRICE_UNITS), abs=Decimal("0.01"))


def test_without_novitas_times_a_stop_counts_from_the_look_that_saw_it(app, tenant):
    instance_id = add_instance(app, tenant)
    accrue(app, T0 + timedelta(hours=1))
    set_novita_status(app, instance_id, "stopping")  # billed until the exit is seen
    accrue(app, T0 + timedelta(hours=2))
    set_novita_status(app, instance_id, "exited")
    accrue(app, T0 + timedelta(hours=3))
    assert accrued(app, instance_id)[0] == Decimal(PRICE_UNITS) * 2


def test_instances_novita_no_longer_has_or_never_priced_are_not_charged(app, tenant):
    deleted = add_instance(app, tenant, status="deleted")
    lost = add_instance(app, tenant, status="lost")
    creating = add_instance(app, tenant, novita_status="creating", status="creating")
    report = accrue(app, T0 + timedelta(hours=1))
    assert (report["looked"], report["charged"]) == (1, 0)
    assert [accrued(app, row)[0] for row in (deleted, lost, creating)] == [0, 0, 0]


def test_a_create_on_the_simulator_is_charged_from_its_create_and_stops_once_deleted(
    app, tenant, sim, novita, novita_config, monkeypatch
):
    _, instance_id = run_chain(app, tenant["id"], REQUEST)
    row = instance_row(app, instance_id)
    assert row.novita_status == "running" and row.price_per_hour_units == PRICE_UNITS
    accrue(app, row.cost_accrued_at + timedelta(minutes=30))
    assert accrued(app, uuid.UUID(instance_id))[0] == Decimal(PRICE_UNITS) / 2

    novita.delete_instance(row.novita_id)  # deleted at Novita behind our back: the row is marked lost
    with app.app_context():
        assert reconcile()["lost"] == [instance_id]
    accrue(app, row.cost_accrued_at + timedelta(hours=5))
    assert accrued(app, uuid.UUID(instance_id))[0] == Decimal(PRICE_UNITS) / 2


def test_the_cost_endpoint_answers_the_tenants_spend_by_hour_instance_and_product(app, client, tenant):
    now = datetime.now(UTC)
    trainer = add_instance(app, tenant, since=now - timedelta(minutes=90), label="trainer")
    add_instance(app, tenant, since=now - timedelta(minutes=60), price=145_000, product_name="H100 SXM 80GB")
    other = make_tenant(app, "globex")
    add_instance(app, other, since=now - timedelta(minutes=60))
    accrue(app, now)

    body = client.get("/v1/metrics/cost?hours=24", headers=tenant["headers"]).json
    assert body["hours"] == 24 and len(body["byHour"]) == 24
    assert body["totalUsd"] == pytest.approx(0.35 * 1.5 + 1.45, abs=1e-5)
    assert sum(point["usd"] for point in body["byHour"]) == pytest.approx(body["totalUsd"], abs=1e-5)
    assert [item["productName"] for item in body["byProduct"]] == ["H100 SXM 80GB", "RTX 4090 24GB"]
    assert body["byInstance"][1] == {
        "instanceId": str(trainer),
        "label": "trainer",
        "productName": "RTX 4090 24GB",
        "gpuNum": 1,
        "usd": pytest.approx(0.525, abs=1e-5),
    }
    shown = client.get(f"/v1/instances/{trainer}", headers=tenant["headers"]).json
    assert shown["costUsd"] == pytest.approx(0.525, abs=1e-5)
    theirs = client.get("/v1/metrics/cost", headers=other["headers"]).json
    assert theirs["totalUsd"] == pytest.approx(0.35, abs=1e-5)
    assert len(theirs["byInstance"]) == 1


@pytest.mark.parametrize("hours", ["0", "721", "a day"])
def test_a_cost_window_outside_one_to_720_hours_is_refused_with_a_problem(client, tenant, hours):
    response = client.get(f"/v1/metrics/cost?hours={hours}", headers=tenant["headers"])
    assert response.status_code == 422 and response.content_type == "application/problem+json"
    assert "hours" in str(response.json)


def test_prometheus_counts_usd_by_tenant_and_the_counter_only_grows(app, client, tenant):
    instance_id = add_instance(app, tenant)
    accrue(app, T0 + timedelta(hours=1))

    def counted() -> float:
        text = client.get("/metrics").get_data(as_text=True)
        [value] = re.findall(r'^gpujobs_gpu_cost_usd_total\{tenant="acme"\} (\S+)$', text, re.MULTILINE)
        return float(value)

    assert counted() == pytest.approx(0.35)
    set_novita_status(app, instance_id, "exited")
    accrue(app, T0 + timedelta(hours=2))
    assert counted() == pytest.approx(0.35)
    with app.app_context():  # what the API lists and what Prometheus counts are two views of one figure
        db.session.execute(update(Instance).values(status="deleted"))
        db.session.commit()
    assert counted() == pytest.approx(0.35)
    promtool = shutil.which("promtool")
    if promtool:
        exposition = client.get("/metrics").get_data()
        checked = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True)
        assert checked.returncode == 0 and not checked.stdout.strip(), (checked.stdout, checked.stderr)


def test_the_openapi_document_describes_the_cost_answer_its_window_and_the_cost_fields(app, client, tenant):
    spec = client.get("/openapi.json").json
    cost = spec["paths"]["/v1/metrics/cost"]["get"]
    assert cost["parameters"][0]["schema"] == {"type": "integer", "minimum": 1, "maximum": 720, "default": 24}
    assert cost["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Cost"
    }
    assert "422" in cost["responses"]
    schemas = spec["components"]["schemas"]
    assert {"totalUsd", "byHour", "byInstance", "byProduct"} <= schemas["Cost"]["properties"].keys()
    assert "costUsd" in schemas["Instance"]["properties"]
    assert "instancePrefix" in schemas["MonitoringConfig"]["properties"]
    add_instance(app, tenant)
    accrue(app, T0 + timedelta(hours=1))
    response = client.get("/v1/metrics/cost?hours=720", headers=tenant["headers"])
    Cost.model_validate_json(response.get_data())
