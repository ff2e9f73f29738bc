"""Faults made on purpose, shared by the tests and ``bench/faults.py``.

A Sentinel deployment on loopback whose primary can be killed: a primary, a replica and three
Sentinels, every one the same ``redis-server`` binary (the Sentinels started with ``--sentinel``), with
passwords on both the data nodes and the Sentinels. And a job's message deleted from its queue, as a
flush or a failover that dropped the last writes would.
"""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import cast

import redis

from gpujobs.broker import job_id_of_message
from gpujobs.dev.embedded import free_port, redis_server_executable
from gpujobs.dev.polling import wait_for

MASTER = "mymaster"
REDIS_PASSWORD = "data-node-secret"
SENTINEL_PASSWORD = "sentinel-secret"
START_TIMEOUT_SECONDS = 20.0


@dataclass
class SentinelDeployment:
    """A primary, a replica and three Sentinels watching them, all real ``redis-server`` processes."""

    base: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)

    def start(self) -> None:
        """Start every node and wait until the replica is in sync and the Sentinels know each other."""
        self.ports = {name: free_port() for name in ("primary", "replica", "s1", "s2", "s3")}
        data = ["--requirepass", REDIS_PASSWORD, "--masterauth", REDIS_PASSWORD, "--appendonly", "yes"]
        self._run("primary", [*data, "--port", str(self.ports["primary"])])
        replica_of = ["--replicaof", "127.0.0.1", str(self.ports["primary"])]
        self._run("replica", [*data, "--port", str(self.ports["replica"]), *replica_of])
        for name in ("s1", "s2", "s3"):
            conf = self.base / f"{name}.conf"
            conf.write_text(
                f"port {self.ports[name]}\nbind 127.0.0.1\ndir {self.base}\n"
                f"requirepass {SENTINEL_PASSWORD}\nsentinel sentinel-pass {SENTINEL_PASSWORD}\n"
                f"sentinel monitor {MASTER} 127.0.0.1 {self.ports['primary']} 2\n"
                f"sentinel auth-pass {MASTER} {REDIS_PASSWORD}\n"
                # Short timings, so a failover takes seconds here (production keeps the defaults).
                f"sentinel down-after-milliseconds {MASTER} 1000\n"
                f"sentinel failover-timeout {MASTER} 5000\n"
            )
            self._run(name, [str(conf), "--sentinel"], config_first=True)
        replica = self.node("replica")
        wait_for(lambda: replica.info("replication")["master_link_status"] == "up", START_TIMEOUT_SECONDS)
        for name in ("s1", "s2", "s3"):
            wait_for(partial(_knows_its_peers, self.node(name, SENTINEL_PASSWORD)), START_TIMEOUT_SECONDS)

    def _run(self, name: str, args: list[str], config_first: bool = False) -> None:
        common = ["--bind", "127.0.0.1", "--dir", str(self.base), "--logfile", str(self.base / f"{name}.log")]
        if not config_first:
            common += ["--save", "", "--appendfilename", f"{name}.aof"]
        command = [redis_server_executable(), *args, *common]
        self.processes[name] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self._answers(name), START_TIMEOUT_SECONDS, interval=0.05)

    def _answers(self, name: str) -> bool:
        if self.processes[name].poll() is not None:
            raise RuntimeError(f"{name} exited:\n{(self.base / f'{name}.log').read_text()}")
        password = SENTINEL_PASSWORD if name.startswith("s") else REDIS_PASSWORD
        try:
            return bool(self.node(name, password).ping())
        except redis.RedisError:
            return False

    def node(self, name: str, password: str = REDIS_PASSWORD) -> redis.Redis:
        """A direct client of one node."""
        return redis.Redis(port=self.ports[name], password=password, socket_timeout=2)

    @property
    def url(self) -> str:
        """``REDIS_URL`` as Celery users write it for Sentinel."""
        return ";".join(f"sentinel://127.0.0.1:{self.ports[name]}" for name in ("s1", "s2", "s3"))

    @property
    def env(self) -> dict[str, str]:
        """The settings that point a process (or ``create_app``) at this deployment."""
        return {
            "REDIS_URL": self.url,
            "GPUJOBS_REDIS_PASSWORD": REDIS_PASSWORD,
            "GPUJOBS_REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
        }

    def master_port(self) -> int:
        """The port the Sentinels name as the master right now."""
        address = cast(
            tuple[str, int], self.node("s1", SENTINEL_PASSWORD).sentinel_get_master_addr_by_name(MASTER)
        )
        return int(address[1])

    def stop(self) -> None:
        """Stop every node still running."""
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
            process.wait()


def _knows_its_peers(sentinel: redis.Redis) -> bool:
    """A Sentinel that sees the two others and the replica: the deployment can fail over."""
    master = cast(dict[str, str], sentinel.sentinel_master(MASTER))
    return (
        int(master["num-other-sentinels"]) == 2
        and len(cast(list[object], sentinel.sentinel_slaves(MASTER))) == 1
    )


def lose_message(redis_url: str, job_id: uuid.UUID, queue: str = "normal") -> None:
    """Delete a job's message from its Redis queue, as a flush or a failover that dropped it would."""
    store = redis.Redis.from_url(redis_url)
    messages = cast(list[bytes], store.lrange(queue, 0, -1))
    [raw] = [raw for raw in messages if job_id_of_message(raw) == job_id]
    assert store.lrem(queue, 1, raw) == 1  # type: ignore[arg-type]  # the stubs say str; bytes go as they are
