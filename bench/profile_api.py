"""Where ``POST /v1/jobs`` spends its CPU: cProfile over N submissions through the app, in this process.

python -m bench.profile_api --requests 500 [--sort tottime] [--top 30] [--endpoint instances]

``--endpoint instances`` submits ``POST /v1/instances`` instead (a GPU job's submit: its instance row
too; no Novita call is made, the job is only queued).

Real servers (embedded PostgreSQL and Redis), the production app (auth, rate limit, validation, the
submit transaction, the publish, JSON), called through Flask's test client: no HTTP server, so what it
shows is the application's own cost per request (CPU of this process, measured first without the
profiler). Also counts the SQL statements and the Redis round trips
each request makes (SQLAlchemy's ``before_cursor_execute``; Redis ``INFO commandstats``).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis
from sqlalchemy import event

from gpujobs.dev.embedded import EmbeddedPostgres, EmbeddedRedis

BODIES: dict[str, dict[str, Any]] = {
    "jobs": {"definitionKey": "echo", "params": {"message": "bench"}},
    "instances": {"productName": "RTX 3090 24GB", "region": "CN-HK-01", "imageUrl": "ubuntu:22.04"},
}


def main() -> None:
    """Start the servers, warm up, profile, print the top of the profile and the round trips."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--sort", default="cumulative", help="pstats sort key (cumulative, tottime)")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--endpoint", choices=sorted(BODIES), default="jobs", help="POST /v1/<endpoint>")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="gpujobs-bench-profile-"))
    postgres, redis_server = EmbeddedPostgres(data_dir / "postgres"), EmbeddedRedis(data_dir / "redis")
    try:
        database_url, redis_url = postgres.start(), redis_server.start()
        profile(args, database_url, redis_url)
    finally:
        redis_server.stop()
        postgres.stop()


def profile(args: argparse.Namespace, database_url: str, redis_url: str) -> None:
    """Run the submissions under cProfile; print what they cost."""
    from flask_migrate import upgrade

    from gpujobs import create_app
    from gpujobs.encryption import new_key
    from gpujobs.extensions import db
    from gpujobs.tenants import create_api_key

    app = create_app(
        {
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "GPUJOBS_ENCRYPTION_KEY": new_key(),
            "GPUJOBS_RATE_LIMIT_PER_MINUTE": 1_000_000,
            "GPUJOBS_TENANT_MAX_INSTANCES": None,  # no GPU quota: every submit is queued
            "GPUJOBS_TENANT_MAX_PUBLISHED": None,  # no window: every submit is sent, as in bench.api
        }
    )
    with app.app_context():
        upgrade()
        key = create_api_key("profile")
        statements: Counter[str] = Counter()

        def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            statements[" ".join(statement.split()[:3])[:60]] += 1

        engine = db.engine
    client, headers = app.test_client(), {"Authorization": f"Bearer {key}"}
    path, body = f"/v1/{args.endpoint}", BODIES[args.endpoint]
    for _ in range(50):  # warm up: imports, pools, prepared caches
        assert client.post(path, json=body, headers=headers).status_code == 202
    cpu = time.process_time()
    for _ in range(args.requests):  # first without the profiler: its overhead would swamp the figure
        client.post(path, json=body, headers=headers)
    plain_cpu = (time.process_time() - cpu) * 1000 / args.requests
    commands = _redis_calls(redis_url)
    event.listen(engine, "before_cursor_execute", count)
    profiler = cProfile.Profile()
    started, cpu = time.perf_counter(), time.process_time()
    profiler.enable()
    for _ in range(args.requests):
        client.post(path, json=body, headers=headers)
    profiler.disable()
    cpu, seconds = time.process_time() - cpu, time.perf_counter() - started
    event.remove(engine, "before_cursor_execute", count)
    commands = _redis_calls(redis_url) - commands
    n = args.requests
    print(f"{n} POST {path} in-process: {plain_cpu:.2f} ms CPU per request of this process (the app; "
          f"{cpu * 1000 / n:.2f} ms under cProfile, {seconds * 1000 / n:.2f} ms wall)")  # fmt: skip
    print(
        f"SQL statements per request {sum(statements.values()) / n:.2f}: "
        + ", ".join(f"{k} {v / n:.2f}" for k, v in statements.most_common())
    )
    print(
        f"Redis commands per request {sum(commands.values()) / n:.2f}: "
        + ", ".join(f"{k} {v / n:.2f}" for k, v in commands.most_common())
    )
    pstats.Stats(profiler).strip_dirs().sort_stats(args.sort).print_stats(args.top)


def _redis_calls(url: str) -> Counter[str]:
    stats = redis.Redis.from_url(url).info("commandstats")
    return Counter({name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()})


if __name__ == "__main__":
    main()
