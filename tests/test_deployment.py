"""The shipped deployment files agree with the package: docker-compose.yml, the Procfile, the Dockerfile.

Docker is not on the development machines, so the compose file is checked here by reading it: every
service's command must be one the package runs, every variable one it reads, every volume where it
writes. tests/test_production_shape.py runs the same processes natively from a wheel.
"""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from gpujobs import gunicorn_conf
from gpujobs.cli import main as cli
from gpujobs.config import SETTINGS
from gpujobs.novita.spec import BASE_PATH

ROOT = Path(__file__).resolve().parent.parent
IMAGE = "gpujobs:local"
# Read by other programs in the image, not by gpujobs' configuration.
OTHER_VARIABLES = {"FLOWER_BASIC_AUTH"}
REQUIRED = {"DATABASE_URL", "REDIS_URL", "GPUJOBS_SECRET_KEY"}
# ${NAME}, ${NAME:-default}, ${NAME:?message}
INTERPOLATION = re.compile(r"\$\{(?P<name>\w+)(?::(?P<op>[-?])(?P<arg>[^}]*))?\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def ours(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services that run this package's image (not PostgreSQL or Redis)."""
    return {name: service for name, service in services.items() if service.get("image") == IMAGE}


def default_of(value: str) -> str:
    """The value compose gives ``${NAME:-default}`` when NAME is unset."""
    match = INTERPOLATION.fullmatch(value)
    assert match and match["op"] == "-", value
    return match["arg"]


def dockerfile_env() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(pair.split("=", 1) for pair in shlex.split(line[4:]))
    return env


def procfile() -> dict[str, list[str]]:
    lines = (ROOT / "Procfile").read_text().splitlines()
    return {name: shlex.split(command) for name, command in (line.split(":", 1) for line in lines if line)}


def test_one_image_is_built_once_and_runs_every_process_of_the_service(services):
    built = [name for name, service in services.items() if "build" in service]
    assert built == ["migrate"]
    assert set(ours(services)) == {"migrate", "web", "worker", "webhooks", "beat", "flower", "simulator"}
    assert all(service.get("pull_policy") == "never" for service in ours(services).values())


def test_every_command_is_one_the_package_runs(services):
    for name, service in ours(services).items():
        program, *args = service["command"]
        if program == "gunicorn":
            assert args == ["-c", "python:gpujobs.gunicorn_conf"], name
            module, attribute = gunicorn_conf.wsgi_app.split(":")
            assert importlib.util.find_spec(module) is not None and attribute == "app"
        elif program == "celery":
            assert args[:2] == ["-A", "gpujobs.worker"] and args[2] in {"worker", "beat", "flower"}, name
        else:
            assert program == "gpujobs", name
            command = cli.commands[args[0]]
            command.make_context(args[0], args[1:])  # raises on an unknown option or a bad value


def test_every_variable_is_a_setting_and_the_required_ones_are_demanded(services):
    known = {setting.name for setting in SETTINGS} | OTHER_VARIABLES
    for name, service in ours(services).items():
        if name == "simulator":  # the Novita API stand-in reads no setting
            assert "environment" not in service
            continue
        environment = service["environment"]
        assert set(environment) <= known, name
        assert set(environment) >= REQUIRED, name
        secret = INTERPOLATION.fullmatch(environment["GPUJOBS_SECRET_KEY"])
        assert secret and secret["op"] == "?", "the secret key has no default"
    flower_auth = INTERPOLATION.fullmatch(services["flower"]["environment"]["FLOWER_BASIC_AUTH"])
    assert flower_auth and flower_auth["op"] == "?", "Flower never runs without a password"


def test_the_api_and_the_workers_share_one_storage_volume_where_the_image_puts_storage(compose, services):
    storage = dockerfile_env()["GPUJOBS_STORAGE_DIR"]
    for name in ("web", "worker"):
        assert f"storage:{storage}" in services[name]["volumes"], name
    assert "storage" in compose["volumes"]


def test_docker_waits_longer_than_the_processes_take_to_stop(services):
    shutdown = next(s for s in SETTINGS if s.name == "GPUJOBS_SHUTDOWN_TIMEOUT_SECONDS")
    assert seconds(services["worker"]["stop_grace_period"]) > float(shutdown.default or 0)
    assert seconds(services["web"]["stop_grace_period"]) > gunicorn_conf.graceful_timeout


def seconds(duration: str) -> float:
    assert duration.endswith("s"), duration
    return float(duration[:-1])


def test_web_and_worker_have_health_checks(services):
    port = gunicorn_conf.bind[0].rsplit(":", 1)[1]
    assert port == "5000" and "5000:5000" in services["web"]["ports"]
    assert "http://127.0.0.1:5000/ready" in " ".join(services["web"]["healthcheck"]["test"])
    worker_check = " ".join(services["worker"]["healthcheck"]["test"])
    assert "celery -A gpujobs.worker inspect ping" in worker_check


def test_the_simulator_profile_runs_the_simulator_the_default_novita_settings_point_at(services):
    simulator = services["simulator"]
    assert simulator["profiles"] == ["simulator"]
    args = simulator["command"]
    options = dict(zip(args[2::2], args[3::2], strict=True))
    environment = services["web"]["environment"]
    assert default_of(environment["NOVITA_API_KEY"]) == options["--api-key"]
    base_url = f"http://simulator:{options['--port']}{BASE_PATH}"
    assert default_of(environment["NOVITA_BASE_URL"]) == base_url
    assert options["--host"] == "0.0.0.0"


def test_postgres_prices_random_reads_for_ssds(services):
    assert services["db"]["command"] == ["postgres", "-c", "random_page_cost=1.1"]


def test_the_procfile_runs_what_compose_runs(services):
    processes = procfile()
    assert processes["release"] == ["python", "-m", "gpujobs", "migrate"]
    assert services["migrate"]["command"] == ["gpujobs", "migrate"]  # the console script of the same CLI
    for name in ("web", "worker"):
        assert processes[name] == services[name]["command"], name
    assert services["beat"]["command"][: len(processes["beat"])] == processes["beat"]
    # The Procfile's Flower first checks that FLOWER_BASIC_AUTH is set (Flower reads it from there).
    guard, flower = " ".join(processes["flower"]).split(" && ", 1)
    assert guard.startswith(": ${FLOWER_BASIC_AUTH:?")
    assert flower.split()[:4] == services["flower"]["command"][:4]


def test_the_image_installs_the_hashed_lock_runs_as_its_own_user_and_probes_ready(services):
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --no-cache-dir --require-hashes -r /tmp/runtime.txt" in dockerfile
    assert "COPY requirements/runtime.txt" in dockerfile
    assert re.search(r"^USER gpujobs$", dockerfile, re.M)
    assert "chown -R" not in dockerfile and "gcc" not in dockerfile
    assert "/ready" in dockerfile.split("HEALTHCHECK", 1)[1].split("\n\n")[0]
    cmd = re.search(r"^CMD (.+)$", dockerfile, re.M)
    assert cmd and yaml.safe_load(cmd[1]) == services["web"]["command"]
    assert dockerfile_env()["GPUJOBS_LOG_FORMAT"] == "json"


def test_the_build_context_leaves_out_the_repository_the_venv_and_local_data():
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if not line.startswith("#")]
    assert lines[0] == "*"  # everything is left out, then only what the build reads is let back in
    let_in = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert let_in == {"pyproject.toml", "README.md", "requirements", "gpujobs"}
