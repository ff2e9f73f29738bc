"""`make run`'s supervisor with real children: a killed one comes back, a crash loop stops the run."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import redis
import sqlalchemy
from support.polling import wait_for
from support.processes import sigint_by_default

from gpujobs.dev.embedded import EmbeddedPostgres, EmbeddedRedis
from gpujobs.dev.supervisor import CrashLoop, Supervisor

SLEEPER = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(600)"]
FAILING = [sys.executable, "-c", "print('cannot start: no such setting'); raise SystemExit(3)"]


@pytest.fixture
def supervise(tmp_path: Path) -> Iterator[Callable[..., Supervisor]]:
    """Factory: a started Supervisor of ``commands`` logging to tmp_path/logs, stopped after the test."""
    made: list[Supervisor] = []

    def start(commands: dict[str, list[str]], out: io.StringIO, first_backoff_seconds: float) -> Supervisor:
        made.append(
            Supervisor(
                commands, os.environ, tmp_path / "logs", out=out, first_backoff_seconds=first_backoff_seconds
            )
        )
        made[-1].start()
        return made[-1]

    yield start
    for supervisor in made:
        supervisor.stop()


def test_a_killed_child_is_restarted_with_a_new_pid_and_the_others_keep_theirs(supervise, tmp_path):
    out = io.StringIO()
    commands = {name: SLEEPER for name in ("web", "worker", "beat")}
    supervisor = supervise(commands, out, first_backoff_seconds=0.1)
    logs = tmp_path / "logs"
    wait_for(lambda: all((logs / f"{name}.log").read_text() == "up\n" for name in commands))
    before = supervisor.pids()
    os.kill(before["worker"], signal.SIGKILL)

    def restarted() -> bool:
        supervisor.check()
        return supervisor.pids()["worker"] not in (None, before["worker"])

    wait_for(restarted, timeout=10)
    after = supervisor.pids()
    assert after["web"] == before["web"] and after["beat"] == before["beat"]
    assert f"worker (pid {before['worker']}) was killed by SIGKILL; restarting in 0.1 s" in out.getvalue()
    assert f"worker restarted (pid {after['worker']})" in out.getvalue()
    wait_for(lambda: (logs / "worker.log").read_text() == "up\nup\n")  # both lives, one log


def test_a_child_that_keeps_exiting_stops_the_run_with_a_message_that_points_at_its_log(supervise, tmp_path):
    out = io.StringIO()
    commands = {"web": SLEEPER, "worker": FAILING}
    supervisor = supervise(commands, out, first_backoff_seconds=0.01)
    web = supervisor.pids()["web"]
    with pytest.raises(CrashLoop) as crash:
        supervisor.run()
    log = tmp_path / "logs" / "worker.log"
    assert str(crash.value) == f"stopping: worker exited with code 3, 5 exits within 60 s; see its log: {log}"
    assert out.getvalue().count("worker (pid") == 4  # four restarts, then the fifth exit stops the run
    assert log.read_text().count("cannot start: no such setting") == 5
    supervisor.stop()
    assert not psutil.pid_exists(web)


def test_ctrl_c_stops_every_child_and_the_supervisor(tmp_path):
    script = textwrap.dedent(
        f"""
        import json, os, sys
        from pathlib import Path
        from gpujobs.dev.supervisor import Supervisor

        supervisor = Supervisor({{"a": {SLEEPER!r}, "b": {SLEEPER!r}}}, os.environ, Path({str(tmp_path)!r}))
        supervisor.start()
        print(json.dumps(supervisor.pids()), file=sys.stderr, flush=True)
        try:
            supervisor.run()
        except KeyboardInterrupt:
            supervisor.stop()
        """
    )
    command = [sys.executable, "-c", script]
    with subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=sigint_by_default
    ) as process:
        assert process.stderr is not None
        pids = json.loads(process.stderr.readline())
        logs = [tmp_path / "a.log", tmp_path / "b.log"]
        wait_for(lambda: all(log.read_text() == "up\n" for log in logs))
        process.send_signal(
            signal.SIGINT
        )  # what Ctrl-C sends the foreground process; children have their own
        assert process.wait(timeout=20) == 0
    assert not any(psutil.pid_exists(pid) for pid in pids.values())


@pytest.mark.slow  # starts a PostgreSQL server of its own
def test_an_embedded_server_that_dies_is_started_again_on_the_same_url_with_its_data(tmp_path):
    """``make run``'s own PostgreSQL and Redis: killed, each comes back where the children look for it."""
    postgres, broker = EmbeddedPostgres(tmp_path / "postgres"), EmbeddedRedis(tmp_path / "redis")
    database_url, redis_url = postgres.start(), broker.start()
    out = io.StringIO()
    supervisor = Supervisor({}, os.environ, tmp_path / "logs", out=out, servers=(postgres, broker))
    try:
        engine = sqlalchemy.create_engine(database_url, poolclass=sqlalchemy.pool.NullPool)
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)"))
        with redis.Redis.from_url(redis_url) as client:
            client.set("kept", "7")
        postmaster = postgres._server.get_pid()
        os.kill(broker._process.pid, signal.SIGKILL)
        os.kill(postmaster, signal.SIGKILL)
        wait_for(lambda: not postgres.alive() and not broker.alive())  # the postmaster once init reaped it
        supervisor.check()
        assert postgres.alive() and broker.alive() and postgres._server.get_pid() != postmaster
        with engine.begin() as connection:
            assert connection.execute(sqlalchemy.text("SELECT n FROM kept")).scalar_one() == 7
        with redis.Redis.from_url(redis_url) as client:
            assert client.get("kept") == b"7"  # the append-only file kept it
        said = out.getvalue()
        assert "postgres stopped; starting it again" in said and "redis stopped; starting it again" in said
        assert said.count(" is back") == 2
    finally:
        broker.stop()
        postgres.stop()


def test_a_server_that_cannot_start_again_stops_the_run_saying_which(tmp_path):
    class Gone:
        name = "redis"

        def alive(self) -> bool:
            return False

        def restart(self) -> None:
            raise RuntimeError("redis-server exited with code 1")

    supervisor = Supervisor({}, os.environ, tmp_path / "logs", out=io.StringIO(), servers=(Gone(),))
    with pytest.raises(CrashLoop, match=r"redis stopped and could not start again \(redis-server exited"):
        supervisor.check()
