"""Scale: the same calls at 10^4 and at 10^6 jobs, p50/p99 side by side, and the plans of their SQL.

python -m bench.scale [--sizes 10000,1000000] [--quick] [--calls 200]

One embedded PostgreSQL per size and one Redis (``gpujobs.dev.embedded``, migrations applied as
``bench.cluster`` does). The app is called in-process through its test client: the figures are the
service's own cost (auth, rate limit, SQL, JSON) without HTTP noise; sweeps are called as beat's tasks
call them. Calls alternate between the sizes, so load from other processes hits every size alike.
Jobs are seeded at a constant rate (``JOBS_PER_HOUR``): a bigger table is longer history, not more
current work, so the in-flight jobs are the same few hundred at every size. Seeding runs as a restore
would (``session_replication_role = replica``: no triggers), then rebuilds the counters with migration
``b2_api``'s own backfill, then ``VACUUM ANALYZE``.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import itertools
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import event, text

from bench.cluster import ROOT
from bench.load import percentile
from gpujobs.dev.embedded import EmbeddedPostgres, EmbeddedRedis

JOBS_PER_HOUR = 2000  # "thousands of jobs an hour": 10^6 jobs are ~3 weeks of history, 10^4 are 5 hours
BATCH_ROWS = 50_000  # rows per seeding transaction
RETENTION_HOURS = 90 * 24  # months of history are kept; cleanup's rows are older than this
IN_FLIGHT = (200, 250, 300)  # the newest k rows below each bound are queued / retrying / running
DEFINITIONS = ("echo", "compute.math", "gpu.instance.create", "encode.video")
DUE_JOBS, SWEEP_CALLS, CLEANUP_CALLS, PAGE = 100, 30, 30, 50
TARGET_MS, TARGET_RATIO = 50.0, 2.0
SEQ_SCAN = re.compile(r"Seq Scan on (jobs|job_events)\b")

SEED_SQL = """
WITH g AS (
    SELECT k, random() AS r1, random() AS r2, random() AS r3, random() AS r4, random() AS r5,
           CAST(:newest AS timestamptz) - k * make_interval(secs => :step) AS created,
           CAST(:others AS uuid[]) AS others, CAST(:definitions AS text[]) AS defs
    FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint) - 1) AS k
), s AS (
    SELECT g.*, CASE WHEN k < :queued THEN 'queued' WHEN k < :retrying THEN 'retrying'
                     WHEN k < :running THEN 'running' WHEN r3 < 0.85 THEN 'succeeded'
                     WHEN r3 < 0.95 THEN 'failed' ELSE 'cancelled' END AS status
    FROM g
), t AS (
    SELECT s.*, CASE WHEN status NOT IN ('queued', 'cancelled') THEN created + r4 * interval '5 s' END AS run,
           CASE WHEN status IN ('succeeded', 'failed', 'cancelled')
                THEN created + (6 + r4 * 120) * interval '1 s' END AS fin
    FROM s
), new AS (
    INSERT INTO jobs (id, tenant_id, definition_key, definition_version, params, priority, status, attempt,
                      max_attempts, timeout_seconds, result, error, cancel_requested, dead_lettered,
                      created_at, queued_at, published_at, started_at, finished_at, next_retry_at,
                      lease_expires_at, updated_at, webhook_url)
    SELECT gen_random_uuid(),
           CASE WHEN r1 < 0.9 THEN CAST(:main AS uuid) ELSE others[1 + k % cardinality(others)] END,
           defs[1 + floor(r2 * r2 * cardinality(defs))::int], 1, '{"message": "scale"}', 1, status,
           CASE WHEN status IN ('queued', 'cancelled') THEN 0 WHEN status = 'failed' THEN 3
                ELSE 1 + (r4 < 0.05)::int END,
           3, 86400, CASE WHEN status = 'succeeded' THEN '{"ok": true}'::jsonb END,
           CASE WHEN status IN ('failed', 'retrying') THEN 'boom' END, status = 'cancelled', false,
           created, created, CASE WHEN :published THEN created END, run, fin,
           CASE WHEN status = 'retrying' THEN now() + interval '1 day' END,
           CASE WHEN status = 'running' THEN now() + interval '1 day' END, coalesce(fin, run, created),
           CASE WHEN r5 < 0.3 THEN 'http://127.0.0.1:9/hook' END
    FROM t
    RETURNING id, tenant_id, status, attempt, created_at, started_at, finished_at, webhook_url
), events AS (
    INSERT INTO job_events (job_id, type, attempt, data, created_at)
    SELECT new.id, e.type, new.attempt, '{}', e.at
    FROM new CROSS JOIN LATERAL (VALUES ('job.queued', new.created_at), ('job.started', new.started_at),
                                        ('job.' || new.status, new.finished_at)) AS e (type, at)
    WHERE e.at IS NOT NULL
)  -- a finished job with a webhook has its delivery; a few of the last day's still wait for a retry
INSERT INTO webhook_deliveries (id, tenant_id, job_id, job_attempt, event_type, url, payload, status,
                                attempts, next_attempt_at, created_at, delivered_at)
SELECT gen_random_uuid(), tenant_id, id, attempt, 'job.' || new.status, webhook_url, '{}', d.status, 1,
       CASE WHEN d.status = 'pending' THEN now() + interval '1 hour' END, finished_at,
       CASE WHEN d.status = 'succeeded' THEN finished_at END
FROM new CROSS JOIN LATERAL (
    SELECT CASE WHEN new.finished_at > now() - interval '1 day' AND random() < 0.02 THEN 'pending'
                ELSE 'succeeded' END AS status
) AS d
WHERE webhook_url IS NOT NULL AND finished_at IS NOT NULL
"""


@dataclass(frozen=True)
class Seed:
    """What ``seed`` writes: row k is created ``k * step`` seconds before ``newest``."""

    newest: datetime
    main: uuid.UUID
    others: tuple[uuid.UUID, ...]
    step: float = 3600 / JOBS_PER_HOUR
    in_flight: tuple[int, int, int] = (0, 0, 0)
    definitions: tuple[str, ...] = DEFINITIONS
    published: bool = True


def seed(conn: Any, spec: Seed, lo: int, hi: int) -> None:
    """Insert rows lo..hi-1 (90 % the main tenant, mostly finished), 2-3 events each, 30 % with webhooks."""
    queued, retrying, running = spec.in_flight
    for start in range(lo, hi, BATCH_ROWS):
        conn.execute(
            text(SEED_SQL),
            {"lo": start, "hi": min(hi, start + BATCH_ROWS), "newest": spec.newest, "step": spec.step,
             "main": str(spec.main), "others": [str(o) for o in spec.others], "queued": queued,
             "retrying": retrying, "running": running, "definitions": list(spec.definitions),
             "published": spec.published},
        )  # fmt: skip
        conn.commit()


def bulk_seed(app: Flask, spec: Seed, size: int) -> str:
    """Seed without triggers, rebuild the counters, VACUUM ANALYZE; says how long each step took."""
    from gpujobs.extensions import db
    from gpujobs.stats import compact_hours

    b2_path = ROOT / "gpujobs/migrations/versions/b2_api.py"
    migration = importlib.util.spec_from_file_location("b2_api", b2_path)
    if migration is None or migration.loader is None:
        raise RuntimeError(f"cannot load {b2_path} as a module")
    b2_api = importlib.util.module_from_spec(migration)
    migration.loader.exec_module(b2_api)
    laps = [time.perf_counter()]
    with db.engine.connect() as conn:
        conn.exec_driver_sql("SET session_replication_role = replica")
        seed(conn, spec, 0, size)
        conn.exec_driver_sql("SET session_replication_role = DEFAULT")
        laps.append(time.perf_counter())
        conn.exec_driver_sql("TRUNCATE job_counters, job_hourly, webhook_delivery_counters")
        conn.exec_driver_sql(b2_api.BACKFILL)
        conn.commit()
        compact_hours()  # as the cleanup sweep has done every 10 minutes of that history
        laps.append(time.perf_counter())
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("VACUUM ANALYZE")
        laps.append(time.perf_counter())
    insert, counters, vacuum = (b - a for a, b in itertools.pairwise(laps))
    return f"insert {insert:.1f} s, counters {counters:.1f} s, VACUUM ANALYZE {vacuum:.1f} s"


@dataclass
class Op:
    """One measured call; ``prepare`` and ``reset`` run untimed around each call."""

    name: str
    call: Callable[[], object]
    calls: int
    prepare: Callable[[], object] = lambda: None
    reset: Callable[[], object] = lambda: None
    statements: list[tuple[str, Any]] = field(default_factory=list)


@dataclass
class Watch:
    """Seconds spent waiting on PostgreSQL, and (when ``capture``) each statement with its parameters."""

    capture: bool = False
    seconds: float = 0.0
    statements: list[tuple[str, Any]] = field(default_factory=list)


@contextmanager
def watching(engine: Any, watch: Watch) -> Iterator[Watch]:
    """Time every statement the service sends inside the block (and record it when asked)."""

    def before(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, many: bool) -> None:
        conn.info["scale_started"] = time.perf_counter()
        if watch.capture and not many:
            # The statement as the service wrote it (``statement`` may be gpujobs.prepared's EXECUTE of it).
            watch.statements.append((context.statement if context is not None else statement, parameters))

    def after(conn: Any, *args: Any) -> None:
        watch.seconds += time.perf_counter() - conn.info.pop("scale_started", time.perf_counter())

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    try:
        yield watch
    finally:
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)


def measure(runs: list[tuple[Flask, Op]]) -> list[tuple[float, float, float]]:
    """p50/p99 (ms) and SQL p50 of each op, calls interleaved across sizes so machine noise hits all alike."""
    from gpujobs.extensions import db

    watches: list[Watch] = []
    times: list[list[tuple[float, float]]] = [[] for _ in runs]
    with ExitStack() as stack:
        for app, op in runs:
            with app.app_context():
                op.prepare()
                with watching(db.engine, Watch(capture=True)) as first:
                    op.call()
                op.statements = first.statements
                op.reset()
                watches.append(stack.enter_context(watching(db.engine, Watch())))
        gc.collect()
        for _ in range(runs[0][1].calls):
            for (app, op), watch, spent in zip(runs, watches, times, strict=True):
                with app.app_context():
                    op.prepare()
                    watch.seconds, started = 0.0, time.perf_counter()
                    op.call()
                    spent.append(((time.perf_counter() - started) * 1000, watch.seconds * 1000))
                    op.reset()
    return [
        (statistics.median(t for t, _ in spent), percentile([t for t, _ in spent], 0.99),
         statistics.median(s for _, s in spent))
        for spent in times
    ]  # fmt: skip


def explain(op: Op) -> list[tuple[str, str]]:
    """EXPLAIN (ANALYZE, BUFFERS) of each captured query, in a transaction that is rolled back."""
    from gpujobs.extensions import db

    plans = []
    op.prepare()
    with db.engine.connect() as conn:
        for statement, parameters in op.statements:
            if re.match(r"\s*(SELECT\b.*\bFROM|UPDATE|DELETE|WITH)\b", statement, re.S | re.I):
                rows = conn.exec_driver_sql(f"EXPLAIN (ANALYZE, BUFFERS) {statement}", parameters)
                plans.append((statement, "\n".join(row[0] for row in rows)))
        conn.rollback()
    op.call()  # leaves the state a measured call leaves (a cleanup batch removes its rows)
    op.reset()
    return plans


def operations(app: Flask, spec: Seed, key: str, calls: int) -> list[Op]:
    """The hot calls with their untimed preparation; API calls go through the app's test client."""
    from gpujobs import sweeps
    from gpujobs.api.pagination import encode_cursor
    from gpujobs.extensions import db

    client, headers = app.test_client(), {"Authorization": f"Bearer {key}"}
    batch = app.config["GPUJOBS_CLEANUP_BATCH_SIZE"]

    def get(url: str | Callable[[], str]) -> Callable[[], Any]:
        def call() -> Any:
            response = client.get(url() if callable(url) else url, headers=headers)
            assert response.status_code == 200, (url, response.status_code, response.text[:300])
            return response.json

        return call

    def sql(statement: str, **params: Any) -> Sequence[Any]:
        with db.engine.begin() as conn:
            result = conn.execute(text(statement), {"t": spec.main, **params})
            return result.all() if result.returns_rows else []

    def page_after(order: str, rows: int) -> str:
        """/v1/jobs with the cursor of the main tenant's ``rows``-th job in ``order``."""
        query = (
            f"SELECT created_at, id FROM jobs WHERE tenant_id = :t ORDER BY created_at {order}, id {order}"
        )
        [(created_at, row_id)] = sql(f"{query} OFFSET :n LIMIT 1", n=rows - 1)
        return f"/v1/jobs?cursor={encode_cursor(created_at, row_id)}"

    def seeded(rows_spec: Seed, rows: int) -> Callable[[], None]:
        def prepare() -> None:
            with db.engine.connect() as conn:
                seed(conn, rows_spec, 0, rows)

        return prepare

    def sweep(function: Callable[[], int], expected: int, *, exact: bool = True) -> Callable[[], int]:
        def call() -> int:
            done = function()
            db.session.remove()
            assert done == expected or (not exact and done > expected), (function.__name__, done)
            return done

        return call

    tenant_jobs = sql("SELECT count(*) FROM jobs WHERE tenant_id = :t")[0][0]
    sample = sql("SELECT id FROM jobs WHERE tenant_id = :t ORDER BY random() LIMIT 400")
    ids = iter([row[0] for row in sample] * (1 + 2 * calls // len(sample)))
    due = replace(spec, newest=datetime.now(UTC), step=0.001, in_flight=(DUE_JOBS,) * 3,
                  definitions=("scale.due",), published=False, others=(spec.main,))  # fmt: skip
    old = replace(spec, newest=datetime.now(UTC) - timedelta(hours=RETENTION_HOURS + 48), in_flight=(0,) * 3)
    deep = min(PAGE * 50 - 50, tenant_jobs // 4)
    return [
        Op("list first page", get("/v1/jobs"), calls),
        Op(f"list page {PAGE} (cursor)", get(page_after("DESC", deep)), calls),
        Op("list middle page (cursor)", get(page_after("DESC", tenant_jobs // 2)), calls),
        Op("list last page (cursor)", get(page_after("ASC", 51)), calls),
        Op("list status=failed", get("/v1/jobs?status=failed"), calls),
        Op("list definitionKey", get("/v1/jobs?definitionKey=encode.video"), calls),
        Op("get one job", get(lambda: f"/v1/jobs/{next(ids)}"), calls),
        Op("job events", get(lambda: f"/v1/jobs/{next(ids)}/events"), calls),
        Op("GET /v1/stats", get("/v1/stats"), calls),
        Op("GET /v1/metrics?ttl=0", get("/v1/metrics?ttl=0"), calls),
        Op("GET /v1/metrics/performance?ttl=0", get("/v1/metrics/performance?ttl=0"), calls),
        # At least the due jobs: the main tenant's seeded queued jobs go out with them (nobody consumes).
        Op(f"dispatch sweep ({DUE_JOBS} due)", sweep(sweeps.dispatch_due, DUE_JOBS, exact=False), SWEEP_CALLS,
           seeded(due, DUE_JOBS), lambda: sql("DELETE FROM jobs WHERE definition_key = 'scale.due'")),
        Op("rescue sweep (none due)", sweep(sweeps.rescue_stuck, 0), SWEEP_CALLS),
        Op(f"cleanup batch ({batch:,})", sweep(sweeps.clean_up, batch), CLEANUP_CALLS, seeded(old, batch)),
    ]  # fmt: skip


def main() -> None:
    """One PostgreSQL per size and one Redis; seed, measure every call on all sizes, print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,1000000", help="comma-separated job counts, ascending")
    parser.add_argument("--quick", action="store_true", help="10^3 and 10^5 jobs")
    parser.add_argument("--calls", type=int, default=200, help="calls per API operation")
    args = parser.parse_args()
    sizes = [1000, 100_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    began, data = time.perf_counter(), Path(tempfile.mkdtemp(prefix="gpujobs-bench-scale-"))
    # No fairness window: the sweep row times publishing all DUE_JOBS of the main tenant, which already has
    # jobs in flight (a window of 50 let 6 out). bench.starvation measures the window itself.
    os.environ.update(
        GPUJOBS_RATE_LIMIT_PER_MINUTE=str(10**9),
        GPUJOBS_RETENTION_HOURS=str(RETENTION_HOURS),
        GPUJOBS_TENANT_MAX_PUBLISHED="",
    )
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, data, ignore_errors=True)  # 10^6 jobs leave ~2.5 GB behind
        broker, apps = EmbeddedRedis(data / "redis"), []
        redis_url = broker.start()
        stack.callback(broker.stop)
        for index, size in enumerate(sizes):
            postgres = EmbeddedPostgres(data / f"postgres{index}")
            database_url = postgres.start()
            stack.callback(postgres.stop)
            apps.append(deploy(size, database_url, f"{redis_url.rsplit('/', 1)[0]}/{index}"))
        results = run(sizes, apps, args.calls)
    print_table(sizes, results, args.calls)
    print_plans(sizes[-1], [plan for *_, plans in results[sizes[-1]].values() for plan in plans])
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"\ntotal {time.perf_counter() - began:.0f} s; load at the end: {load}")


def deploy(size: int, database_url: str, redis_url: str) -> tuple[Flask, Seed, str]:
    """The app on its own database: migrated, seeded with ``size`` jobs, the queued ones published."""
    from flask_migrate import upgrade

    from gpujobs import create_app
    from gpujobs.encryption import new_key
    from gpujobs.extensions import db
    from gpujobs.sweeps import dispatch_due
    from gpujobs.tenants import create_api_key, ensure_tenant

    encryption_key = os.environ.get("GPUJOBS_ENCRYPTION_KEY") or new_key()
    app = create_app(
        {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "GPUJOBS_ENCRYPTION_KEY": encryption_key}
    )
    with app.app_context():
        upgrade()
        key = create_api_key("scale")
        others = tuple(ensure_tenant(f"scale-{n}").id for n in range(3))
        spec = Seed(datetime.now(UTC), ensure_tenant("scale").id, others, in_flight=IN_FLIGHT)
        db.session.commit()
        print(f"seeded {size:,} jobs: {bulk_seed(app, spec, size)}", flush=True)
        while dispatch_due():  # the seeded queued jobs' messages, as Redis would hold them
            db.session.remove()
    return app, spec, key


Results = dict[int, dict[str, tuple[float, float, float, bool, list[tuple[str, str, str]]]]]


def run(sizes: list[int], apps: list[tuple[Flask, Seed, str]], calls: int) -> Results:
    """Measure each operation on every size, interleaved, then EXPLAIN its SQL on each size."""
    by_size = []
    for app, spec, key in apps:
        with app.app_context():
            by_size.append(operations(app, spec, key, calls))
    results: Results = {size: {} for size in sizes}
    for same_call in zip(*by_size, strict=True):
        runs = [(app, op) for (app, _, _), op in zip(apps, same_call, strict=True)]
        for size, (app, op), (p50, p99, sql50) in zip(sizes, runs, measure(runs), strict=True):
            with app.app_context():
                plans = [(op.name, statement, plan) for statement, plan in explain(op)]
            scan = any(SEQ_SCAN.search(plan) for *_, plan in plans)
            results[size][op.name] = (p50, p99, sql50, scan, plans)
            print(f"  {size:>9,}  {op.name:34} p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  SQL p50 {sql50:6.2f} ms")
    return results


def print_table(sizes: list[int], results: Results, calls: int) -> None:
    """Smallest and largest size side by side, the ratios, and the verdict against the targets."""
    small, big = sizes[0], sizes[-1]
    print(f"\nms, in-process (test client, no HTTP); {calls} calls per API row, {SWEEP_CALLS} per sweep, "
          f"{CLEANUP_CALLS} per cleanup batch; /v1/metrics* with ttl=0 (cache bypassed)\n"
          f"| call | {small:,} p50 | p99 | {big:,} p50 | p99 | ratio p50 | ratio p99 | SQL p50 {small:,} "
          f"-> {big:,} | Seq Scan | p99 < {TARGET_MS:.0f} ms, <= {TARGET_RATIO:.0f}x |\n"
          "|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    for name, (p50_s, p99_s, sql_s, scan_s, _) in results[small].items():
        p50_b, p99_b, sql_b, scan_b, _ = results[big][name]
        r50, r99 = p50_b / p50_s, p99_b / p99_s
        ok = p99_b < TARGET_MS and max(r50, r99) <= TARGET_RATIO and not scan_b
        scan = "YES" if scan_s or scan_b else "no"
        print(f"| {name} | {p50_s:.2f} | {p99_s:.2f} | {p50_b:.2f} | {p99_b:.2f} | {r50:.2f}x | {r99:.2f}x "
              f"| {sql_s:.2f} -> {sql_b:.2f} | {scan} | {'yes' if ok else 'NO'} |")  # fmt: skip


def print_plans(size: int, plans: list[tuple[str, str, str]]) -> None:
    """Each call's plans at ``size`` jobs (shared statements once); Seq Scans on jobs/job_events marked."""
    print(f"\nEXPLAIN (ANALYZE, BUFFERS) at {size:,} jobs of the SQL each call ran (parameters as captured)")
    shown: set[tuple[str, str]] = set()
    for name, statement, plan in plans:
        key = (name if re.search(r"\b(FROM|UPDATE|JOIN) (jobs|job_events)\b", statement) else "", statement)
        if key not in shown:
            shown.add(key)
            short = re.sub(r"SELECT (?:[\w.]+(?: AS \w+)?, )+[\w.]+(?: AS \w+)? FROM", "SELECT ... FROM",
                           " ".join(statement.split()))  # fmt: skip
            flag = "   <<< SEQ SCAN" if SEQ_SCAN.search(plan) else ""
            print(
                f"\n-- {name}: {short[:240]}{flag}\n" + "\n".join(f"   {line}" for line in plan.splitlines())
            )


if __name__ == "__main__":
    main()
