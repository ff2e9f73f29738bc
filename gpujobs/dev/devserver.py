"""``python -m gpujobs dev``: the whole service on one machine with nothing installed but Python.

Starts embedded PostgreSQL and Redis when ``DATABASE_URL`` / ``REDIS_URL`` are unset, the Novita
simulator when ``NOVITA_API_KEY`` is unset, applies migrations, creates a development tenant, key and
a few sample jobs, then runs the API, a worker, beat and Flower as child processes until Ctrl-C.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import requests

from gpujobs import create_app
from gpujobs.config import load_config
from gpujobs.dev.embedded import EmbeddedPostgres, EmbeddedRedis
from gpujobs.dev.embedded_env import EMBEDDED_ENV_FILE, write_embedded_env
from gpujobs.novita.simulator import run_simulator
from gpujobs.operations import JobOptions, submit
from gpujobs.tenants import create_api_key, ensure_tenant

DEV_TENANT = "dev"
SIMULATOR_API_KEY = "sk_simulator_dev"
READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 15.0


def worker_command(concurrency: int = 2, hostname: str = "worker@%h") -> list[str]:
    """The Celery worker command line: without -Q it reads every declared queue, service queues first."""
    celery = [sys.executable, "-m", "celery", "-A", "gpujobs.worker", "worker"]
    options = ["-c", str(concurrency), "-n", hostname, "--loglevel", "INFO"]
    return [*celery, *options, "--without-gossip", "--without-mingle"]


def run() -> None:
    """Start everything, print where it is, and stop it all on Ctrl-C or SIGTERM."""
    config = load_config()
    data_dir = Path(config["GPUJOBS_DATA_DIR"])
    data_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, GPUJOBS_WEBHOOK_ALLOW_PRIVATE=os.environ.get("GPUJOBS_WEBHOOK_ALLOW_PRIVATE", "1"))
    # Every web process must sign dashboard sessions with the same key.
    env.setdefault("GPUJOBS_SECRET_KEY", secrets.token_hex(32))
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    with ExitStack() as stack:
        if not os.environ.get("DATABASE_URL"):
            postgres = EmbeddedPostgres(data_dir / "postgres")
            env["DATABASE_URL"] = postgres.start()
            stack.callback(postgres.stop)
        if not os.environ.get("REDIS_URL"):
            broker = EmbeddedRedis(data_dir / "redis")
            env["REDIS_URL"] = broker.start()
            stack.callback(broker.stop)
        write_embedded_env(data_dir, {k: env[k] for k in ("DATABASE_URL", "REDIS_URL")})
        stack.callback(lambda: (data_dir / EMBEDDED_ENV_FILE).unlink(missing_ok=True))
        if not os.environ.get("NOVITA_API_KEY"):
            sim = stack.enter_context(run_simulator(api_key=SIMULATOR_API_KEY))
            env["NOVITA_API_KEY"], env["NOVITA_BASE_URL"] = SIMULATOR_API_KEY, sim.base_url
        os.environ.update(env)
        api_key = _prepare_database()
        port = int(env.get("PORT", "5000"))
        flower_port = int(env.get("FLOWER_PORT", "5555"))
        processes = _start_processes(env, data_dir, port, flower_port)
        stack.callback(_stop_processes, processes)
        _wait_until_ready(f"http://127.0.0.1:{port}/ready", processes)
        _print_banner(port, flower_port, api_key, env)
        try:
            while all(process.poll() is None for process in processes.values()):
                time.sleep(0.5)
            dead = [name for name, process in processes.items() if process.poll() is not None]
            print(f"\nstopping: {', '.join(dead)} exited", file=sys.stderr)
        except KeyboardInterrupt:
            print("\nstopping...", file=sys.stderr)


def _prepare_database() -> str:
    """Migrate, create the development tenant's key, and queue a few sample jobs to look at."""
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
    return api_key


def process_commands(data_dir: Path, port: int, flower_port: int) -> dict[str, list[str]]:
    """The child processes' command lines; the API and Flower listen on loopback only.

    Flower shows every tenant's tasks with their arguments, so it is never reachable from another
    machine here; ``FLOWER_BASIC_AUTH`` in the environment (Flower reads it) adds a password.
    """
    celery = [sys.executable, "-m", "celery", "-A", "gpujobs.worker"]
    return {
        "web": [sys.executable, "-m", "gunicorn", "-b", f"127.0.0.1:{port}", "-w", "2", "gpujobs.wsgi:app"],
        "worker": worker_command(),
        "beat": [*celery, "beat", "--loglevel", "INFO", "-s", str(data_dir / "celerybeat-schedule")],
        "flower": [*celery, "flower", f"--port={flower_port}", "--address=127.0.0.1"],
    }


def _start_processes(
    env: dict[str, str], data_dir: Path, port: int, flower_port: int
) -> dict[str, subprocess.Popen[bytes]]:
    commands = process_commands(data_dir, port, flower_port)
    return {name: subprocess.Popen(command, env=env) for name, command in commands.items()}


def _stop_processes(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    for process in processes.values():
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
    for process in processes.values():
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()


def _wait_until_ready(url: str, processes: dict[str, subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if processes["web"].poll() is not None:
            raise SystemExit("the API process exited during start-up")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not answer 200 within {READY_TIMEOUT_SECONDS:.0f} s")


def _print_banner(port: int, flower_port: int, api_key: str, env: dict[str, str]) -> None:
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
  API key    {api_key}

  curl -H "Authorization: Bearer {api_key}" http://127.0.0.1:{port}/v1/jobs
""",
        flush=True,
    )
