"""Operator-only surfaces: Flower behind basic auth (compose, Procfile) and on loopback in ``make run``.

Flower shows every tenant's tasks and their arguments, so no deployment file starts it without a
password, and the development command never exposes it beyond the machine.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest
import requests
import yaml
from support.polling import wait_for

from gpujobs.dev.devserver import process_commands

ROOT = Path(__file__).resolve().parent.parent


def test_compose_and_the_procfile_start_flower_only_with_basic_auth_and_compose_publishes_it_on_loopback():
    flower = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["flower"]
    # Flower reads FLOWER_BASIC_AUTH from its environment: the password never shows in a process list.
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
    assert not any("basic-auth" in part for part in flower["command"])
    assert flower["ports"] == ["127.0.0.1:5555:5555"]
    (line,) = [line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("flower:")]
    assert line.startswith('flower: : "${FLOWER_BASIC_AUTH:?') and "basic-auth" not in line


def test_make_run_binds_flower_and_the_api_to_loopback():
    commands = process_commands(5000, 5555)
    assert "--address=127.0.0.1" in commands["flower"]
    assert "127.0.0.1:5000" in commands["web"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow  # a real Flower process
def test_flower_with_flower_basic_auth_refuses_a_request_without_the_password(app, process_env, tmp_path):
    port = _free_port()
    command = process_commands(0, port)["flower"]
    env = dict(process_env, FLOWER_BASIC_AUTH="ops:s3cret-pass")
    flower = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"

        def status() -> int | None:
            try:
                return requests.get(url, timeout=2).status_code
            except requests.ConnectionError:
                return None

        assert wait_for(status, timeout=60, interval=0.3) == 401
        assert requests.get(url, auth=("ops", "wrong"), timeout=5).status_code == 401
        assert requests.get(url, auth=("ops", "s3cret-pass"), timeout=5).status_code == 200
    finally:
        flower.terminate()
        flower.wait(timeout=20)
