"""``python -m gpujobs dev``: the whole service on one machine with nothing installed but Python.

Starts embedded PostgreSQL and Redis when ``DATABASE_URL`` / ``REDIS_URL`` are unset, the Novita
simulator when ``NOVITA_API_KEY`` is unset, applies migrations, creates a development tenant, key and
a few sample jobs, then runs the API, a job worker, a webhook worker, beat and Flower as supervised child
processes until Ctrl-C (``gpujobs.dev.supervisor``: one that dies is restarted, one that keeps dying stops
the run).
"""

from __future__ import annotations

import os
import secrets
import signal
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import requests

from gpujobs import create_app, deployment
from gpujobs.celery_settings import WEBHOOK_POOL, WEBHOOK_THREADS, WORKER_QUEUES
from gpujobs.config import load_config
from gpujobs.dev.embedded import EmbeddedPostgres, EmbeddedRedis
from gpujobs.dev.embedded_env import EMBEDDED_ENV_FILE, write_embedded_env
from gpujobs.dev.supervisor import CrashLoop, Supervisor
from gpujobs.encryption import new_key
from gpujobs.novita.simulator import run_simulator
from gpujobs.operations import JobOptions, submit
from gpujobs.tenants import create_api_key, ensure_tenant

DEV_TENANT = "dev"
SIMULATOR_API_KEY = "sk_simulator_dev"
READY_TIMEOUT_SECONDS = 60.0
ENCRYPTION_KEY_FILE = "encryption.key"


def web_command(port: int) -> list[str]:
    """The API under gunicorn with the one shared configuration (gpujobs/gunicorn_conf.py), on loopback."""
    return [sys.executable, "-m", "gunicorn", "-c", "python:gpujobs.gunicorn_conf", "-b", f"127.0.0.1:{port}"]


def worker_command(role: str = "jobs", concurrency: int = 2, hostname: str = "worker@%h") -> list[str]:
    """The Celery worker command line of a role (``WORKER_QUEUES``): it reads only that role's queues;
    the webhooks role runs threads (``WEBHOOK_POOL``)."""
    queues = ",".join(WORKER_QUEUES[role])
    celery = [sys.executable, "-m", "celery", "-A", "gpujobs.worker", "worker", "-Q", queues]
    options = ["-c", str(concurrency), "-n", hostname]  # log level: GPUJOBS_LOG_LEVEL (gpujobs.logs)
    pool = list(WEBHOOK_POOL) if role == "webhooks" else []
    return [*celery, *options, *pool, "--without-gossip", "--without-mingle"]


def run() -> None:
    """Start everything, print where it is, and stop it all on Ctrl-C or SIGTERM."""
    config = load_config()
    data_dir = Path(config["GPUJOBS_DATA_DIR"])
    data_dir.mkdir(parents=True, exist_ok=True)
    # A laptop's shape: webhooks to local receivers, and /metrics for a local Prometheus without a token.
    env = {"GPUJOBS_WEBHOOK_ALLOW_PRIVATE": "1", "GPUJOBS_METRICS_PUBLIC": "1", **os.environ}
    # Every web process must sign dashboard sessions with the same key.
    env.setdefault("GPUJOBS_SECRET_KEY", secrets.token_hex(32))
    env.setdefault("GPUJOBS_ENCRYPTION_KEY", dev_encryption_key(data_dir))
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    servers: list[EmbeddedPostgres | EmbeddedRedis] = []  # started here, so watched and started again here
    with ExitStack() as stack:
        if not os.environ.get("DATABASE_URL"):
            postgres = EmbeddedPostgres(data_dir / "postgres")
            env["DATABASE_URL"] = postgres.start()
            stack.callback(postgres.stop)
            servers.append(postgres)
        if not os.environ.get("REDIS_URL"):
            broker = EmbeddedRedis(data_dir / "redis")
            env["REDIS_URL"] = broker.start()
            stack.callback(broker.stop)
            servers.append(broker)
        shared = ("DATABASE_URL", "REDIS_URL", "GPUJOBS_ENCRYPTION_KEY")  # for the CLI in another terminal
        write_embedded_env(data_dir, {k: env[k] for k in shared})
        stack.callback(lambda: (data_dir / EMBEDDED_ENV_FILE).unlink(missing_ok=True))
        if not os.environ.get("NOVITA_API_KEY"):
            sim = stack.enter_context(run_simulator(api_key=SIMULATOR_API_KEY))
            env["NOVITA_API_KEY"], env["NOVITA_BASE_URL"] = SIMULATOR_API_KEY, sim.base_url
        os.environ.update(env)
        api_key, instance_prefix = _prepare_database()
        port = int(env.get("PORT", "5000"))
        flower_port = int(env.get("FLOWER_PORT", "5555"))
        supervisor = Supervisor(
            process_commands(port, flower_port), env, data_dir / "logs", servers=tuple(servers)
        )
        stack.callback(supervisor.stop)
        supervisor.start()
        try:
            _wait_until_ready(f"http://127.0.0.1:{port}/ready", supervisor)
            _print_banner(port, flower_port, api_key, instance_prefix, env, data_dir / "logs")
            supervisor.run()
        except KeyboardInterrupt:
            print("\nstopping...", file=sys.stderr)
        except CrashLoop as crash:
            raise SystemExit(f"\n{crash}") from None  # after the stack has stopped everything


def dev_encryption_key(data_dir: Path) -> str:
    """The key of the embedded database's secrets: made once, then kept beside the data it opens."""
    path = data_dir / ENCRYPTION_KEY_FILE
    if not path.is_file():
        path.touch(mode=0o600)
        path.write_text(new_key() + "\n")
    return path.read_text().strip()


def _prepare_database() -> tuple[str, str]:
    """Migrate, create the development tenant's key, and queue a few sample jobs to look at; returns the
    key and the deployment's instance prefix."""
    from flask_migrate import upgrade

    app = create_app()
    with app.app_context():
        upgrade()
        api_key = create_api_key(DEV_TENANT)
        tenant = ensure_tenant(DEV_TENANT)
        submit(tenant.id, "echo", 1, {"message": "hello from make run"})
        fibonacci = {"operation": "fibonacci", "numbers": [90]}
        submit(tenant.id, "compute.math", 1, fibonacci, JobOptions(priority="high"))
        submit(tenant.id, "failing", 1, {}, JobOptions(max_attempts=2, priority="low"))
        return api_key, deployment.instance_prefix()


def process_commands(port: int, flower_port: int) -> dict[str, list[str]]:
    """The child processes' command lines; the API and Flower listen on loopback only.

    Flower shows every tenant's tasks with their arguments, so it is never reachable from another
    machine here; ``FLOWER_BASIC_AUTH`` in the environment (Flower reads it) adds a password.
    """
    celery = [sys.executable, "-m", "celery", "-A", "gpujobs.worker"]
    return {
        "web": web_command(port),
        "worker": worker_command("jobs"),
        "webhooks": worker_command("webhooks", concurrency=WEBHOOK_THREADS, hostname="webhooks@%h"),
        "beat": [*celery, "beat"],
        "flower": [*celery, "flower", f"--port={flower_port}", "--address=127.0.0.1"],
    }


def _wait_until_ready(url: str, supervisor: Supervisor) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        supervisor.check()  # an API that dies during start-up is restarted, or stops the run
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not answer 200 within {READY_TIMEOUT_SECONDS:.0f} s")


def _print_banner(
    port: int, flower_port: int, api_key: str, instance_prefix: str, env: dict[str, str], log_dir: Path
) -> None:
    novita = (
        "simulator at " + env["NOVITA_BASE_URL"]
        if env.get("NOVITA_API_KEY") == SIMULATOR_API_KEY
        else "Novita"
    )
    print(
        f"""
gpujobs is running (Ctrl-C stops everything)
  API        http://127.0.0.1:{port}          (health: /health, ready: /ready, spec: /openapi.json, /docs)
  Dashboard  http://127.0.0.1:{port}/ui/      (sign in with the API key below)
  Flower     http://127.0.0.1:{flower_port}
  Novita     {novita}
  Instances  named {instance_prefix}<job id> (the reconcile sweep deletes only leaks with this prefix)
  API key    {api_key}  (tenant {DEV_TENANT}: python -m gpujobs webhooks secret --tenant {DEV_TENANT})
  Logs       {log_dir}/{{web,worker,webhooks,beat,flower}}.log

  curl -H "Authorization: Bearer {api_key}" http://127.0.0.1:{port}/v1/jobs
""",
        flush=True,
    )
