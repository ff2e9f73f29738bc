"""The production shape, natively: the wheel installed in a new venv, each process as on its own host.

The wheel is built from this checkout and installed with the hashed runtime lock into a venv in a temp
directory; no process has the checkout on its path. The release command migrates an empty database,
then web (gunicorn with the shared gpujobs/gunicorn_conf.py), two workers and beat start as separate
processes, each in a working directory of its own, sharing only PostgreSQL, Redis and the video
storage directory (the named volume of docker-compose.yml). A GPU job on the Novita simulator, an echo
job and a video job all succeed through the HTTP API.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psycopg2
import pytest
import requests
from sqlalchemy.engine import make_url
from support.gpu import REQUEST
from support.media import make_clip
from support.polling import wait_for

from gpujobs.dev.embedded import free_port
from gpujobs.encryption import new_key

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SIMULATOR_KEY = "sk_production_shape"
INSTALL_TIMEOUT_SECONDS = 600
JOB_TIMEOUT_SECONDS = 120


@dataclass
class Deployment:
    """The installed venv and the processes started from it; stops them all on ``close``."""

    base: Path
    venv: Path
    env: dict[str, str]
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def run(self, *command: str, cwd: Path | None = None) -> str:
        """Run one of the venv's programs to completion and return its standard output."""
        done = subprocess.run(
            [str(self.venv / "bin" / command[0]), *command[1:]],
            cwd=cwd or self.base,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, f"{command}: {done.stdout}\n{done.stderr}"
        return done.stdout

    def start(self, name: str, *command: str) -> None:
        """Start a long-running process in its own working directory, as on a host of its own."""
        home = self.base / name
        home.mkdir()
        log_path = home / "output.log"
        log: IO[bytes]
        with log_path.open("wb") as log:
            self.processes[name] = subprocess.Popen(
                [str(self.venv / "bin" / command[0]), *command[1:]],
                cwd=home,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.logs[name] = log_path

    def check_alive(self) -> bool:
        """True while every process runs; names the first one that exited (with its log) otherwise."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise AssertionError(
                    f"{name} exited with {process.returncode}:\n{self.logs[name].read_text()}"
                )
        return True

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def build_and_install(base: Path) -> Path:
    """Build the wheel of this checkout and install it with the locked runtime dependencies."""
    dist, venv = base / "dist", base / "venv"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(dist), str(ROOT)],
        check=True,
        timeout=INSTALL_TIMEOUT_SECONDS,
    )
    [wheel] = dist.glob("gpujobs-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    lock = ROOT / "requirements" / "runtime.txt"
    subprocess.run([*pip, "--require-hashes", "-r", str(lock)], check=True, timeout=INSTALL_TIMEOUT_SECONDS)
    subprocess.run([*pip, "--no-deps", str(wheel)], check=True, timeout=INSTALL_TIMEOUT_SECONDS)
    return venv


def empty_database(server_url: str, name: str) -> str:
    """A new database on the suite's PostgreSQL server, so the release command starts from nothing."""
    connection = psycopg2.connect(server_url)
    connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {name}")
    finally:
        connection.close()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture(scope="module")
def deployment(servers: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    base = tmp_path_factory.mktemp("production")
    venv = build_and_install(base)
    storage = base / "shared-storage"  # docker-compose.yml's `storage` volume
    simulator_port = free_port()
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(base),
        "LANG": "C.UTF-8",
        "DATABASE_URL": empty_database(servers["DATABASE_URL"], f"production_{secrets.token_hex(4)}"),
        # A database number of its own: the suite's workers never see these messages.
        "REDIS_URL": servers["REDIS_URL"].rsplit("/", 1)[0] + "/7",
        "GPUJOBS_SECRET_KEY": secrets.token_hex(32),
        "GPUJOBS_ENCRYPTION_KEY": new_key(),
        "GPUJOBS_STORAGE_DIR": str(storage),
        "NOVITA_API_KEY": SIMULATOR_KEY,
        "NOVITA_BASE_URL": f"http://127.0.0.1:{simulator_port}/gpu-instance/openapi/v1",
        "GPUJOBS_MONITOR_INTERVAL_SECONDS": "0.5",
        "GPUJOBS_SWEEP_INTERVAL_SECONDS": "1",
        "GPUJOBS_LOG_FORMAT": "json",
    }
    deployment = Deployment(base, venv, env)
    try:
        yield deployment
    finally:
        deployment.close()
        import redis

        redis.Redis.from_url(env["REDIS_URL"]).flushdb()


def test_the_installed_package_runs_outside_the_checkout(deployment: Deployment):
    location = deployment.run("python", "-c", "import gpujobs; print(gpujobs.__file__)")
    assert Path(location.strip()).is_relative_to(deployment.venv)
    assert "gpujobs: provision GPU instances" in deployment.run("gpujobs", "--help")


def test_web_two_workers_and_beat_from_the_wheel_run_a_gpu_an_echo_and_a_video_job(deployment: Deployment):
    # The release step, through the Flask CLI as the README documents it, then the product's own.
    deployment.run("flask", "--app", "gpujobs", "db", "upgrade")
    deployment.run("gpujobs", "migrate")
    api_key = deployment.run("gpujobs", "keys", "create", "--tenant", "production").strip()
    port = free_port()
    simulator_port = deployment.env["NOVITA_BASE_URL"].split(":")[2].split("/")[0]
    deployment.start(
        "simulator", "gpujobs", "simulator", "--port", simulator_port, "--api-key", SIMULATOR_KEY
    )
    deployment.start("web", "gunicorn", "-c", "python:gpujobs.gunicorn_conf", "-b", f"127.0.0.1:{port}")
    for index in (1, 2):
        deployment.start(
            f"worker{index}", "celery", "-A", "gpujobs.worker", "worker", "-n", f"worker{index}@%h",
            "-c", "2", "--loglevel", "INFO",
        )  # fmt: skip
    deployment.start("beat", "celery", "-A", "gpujobs.worker", "beat", "--loglevel", "INFO")
    api = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {api_key}"}
    wait_for(lambda: deployment.check_alive() and ready(api), timeout=60, interval=0.5)

    echo = post(f"{api}/v1/jobs", headers, json={"definitionKey": "echo", "params": {"message": "hi"}})["id"]
    gpu = post(f"{api}/v1/instances", headers, json=REQUEST)["jobId"]
    clip = make_clip(deployment.base / "clip.mp4")
    with clip.open("rb") as video:
        files = {"video": ("clip.mp4", video, "video/mp4")}
        data = {"format": "webm", "quality": "720p"}
        encode = post(f"{api}/v1/videos/encode", headers, files=files, data=data)["jobId"]

    for job_id in (echo, gpu, encode):
        job = wait_for(lambda j=job_id: finished(api, headers, j), timeout=JOB_TIMEOUT_SECONDS, interval=0.5)
        assert job["status"] == "succeeded", job
    download = requests.get(f"{api}/v1/videos/{encode}/download", headers=headers, timeout=30)
    assert download.status_code == 200 and len(download.content) > 1000
    # Each process used its own working directory, and none of them the checkout.
    assert {path.name for path in deployment.base.iterdir()} >= {"web", "worker1", "worker2", "beat"}
    # gunicorn opened no control socket under HOME, which two servers on one host would share.
    assert not (deployment.base / ".gunicorn").exists()
    # Beat keeps its schedule in memory: it writes nothing where it runs (a read-only container works).
    assert [path.name for path in (deployment.base / "beat").iterdir()] == ["output.log"]
    deployment.close()
    for name in ("web", "worker1", "worker2", "beat"):
        log = deployment.logs[name].read_text()
        assert log.strip(), f"{name} logged nothing"
        # Every line with content is one JSON object (Celery's shutdown prints a bare newline to the tty
        # stream, which a log collector skips).
        for line in filter(str.strip, log.splitlines()):
            assert parses_as_json(line), f"{name}: {line}\n--- whole log ---\n{log[-6000:]}"


def parses_as_json(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def ready(api: str) -> bool:
    try:
        return requests.get(f"{api}/ready", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def post(url: str, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = requests.post(url, headers=headers, timeout=30, **body)
    assert response.status_code in (201, 202), response.text
    return response.json()


def finished(api: str, headers: dict[str, str], job_id: str) -> dict[str, Any] | None:
    job = requests.get(f"{api}/v1/jobs/{job_id}", headers=headers, timeout=10).json()
    return job if job["status"] in ("succeeded", "failed", "cancelled") else None
