"""Supervision of ``make run``'s processes: a child that dies is restarted, a crash loop stops the run.

Only the dev server uses it. Production leaves restarts to the platform's supervisor (compose
``restart:``, a Procfile platform), which also owns logs and health checks there.

Each child runs in its own session, so Ctrl-C reaches only the supervisor, which then stops every child
in order (SIGTERM, then SIGKILL of what is left of its process group). Each child's output goes to the
terminal, every line prefixed with its name, and to ``<log_dir>/<name>.log``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol, TextIO

# A child that exits this many times within the window stops the whole run: restarting it again would
# only hide the error scrolling past in its log.
MAX_CRASHES = 5
CRASH_WINDOW_SECONDS = 60.0
# The wait before a restart doubles with each crash still inside the window (1, 2, 4, 8 s): a child
# that fails at once is not restarted in a tight loop, one that crashed an hour ago starts at once.
FIRST_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 16.0
STOP_TIMEOUT_SECONDS = 15.0
POLL_SECONDS = 0.2


class CrashLoop(Exception):
    """A child kept exiting, or a server could not start again; the message says which and why."""


class Server(Protocol):
    """A server the run started itself (the embedded PostgreSQL and Redis): watched, started again."""

    name: str

    def alive(self) -> bool: ...

    def restart(self) -> None: ...


@dataclass
class Child:
    """One supervised command and the process running it now."""

    name: str
    command: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    crashes: deque[float] = field(default_factory=deque)
    restart_at: float | None = None


class Supervisor:
    """Starts named commands, restarts one that exits (with backoff), and stops them all."""

    def __init__(
        self,
        commands: Mapping[str, list[str]],
        env: Mapping[str, str],
        log_dir: Path,
        *,
        out: TextIO | None = None,
        max_crashes: int = MAX_CRASHES,
        crash_window_seconds: float = CRASH_WINDOW_SECONDS,
        first_backoff_seconds: float = FIRST_BACKOFF_SECONDS,
        servers: tuple[Server, ...] = (),
    ) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.children = {
            name: Child(name, command, log_dir / f"{name}.log") for name, command in commands.items()
        }
        # Unbuffered, so a child's lines reach its log before it dies, not with the next 8 KiB.
        self.env = dict(env, PYTHONUNBUFFERED="1")
        self.out = out or sys.stdout
        self.max_crashes, self.crash_window_seconds = max_crashes, crash_window_seconds
        self.first_backoff_seconds = first_backoff_seconds
        self.servers = servers
        self._write_lock = threading.Lock()
        self._readers: list[threading.Thread] = []

    def start(self) -> None:
        """Start every child."""
        for child in self.children.values():
            self._spawn(child)

    def pids(self) -> dict[str, int | None]:
        """The PID of each child's current process (None while it waits to be restarted)."""
        return {
            name: child.process.pid if child.process and child.process.poll() is None else None
            for name, child in self.children.items()
        }

    def run(self) -> None:
        """Supervise until Ctrl-C (KeyboardInterrupt, left to the caller) or a crash loop (CrashLoop)."""
        while True:
            self.check()
            time.sleep(POLL_SECONDS)

    def check(self) -> None:
        """One round: start again a server that stopped, notice children that exited, restart those whose
        backoff is over."""
        for server in self.servers:
            if not server.alive():
                self._revive(server)
        now = time.monotonic()
        for child in self.children.values():
            if child.process is not None and child.process.poll() is not None:
                self._exited(child, now)
            if child.restart_at is not None and now >= child.restart_at:
                child.restart_at = None
                self._spawn(child)
                self.say(f"{child.name} restarted (pid {child.process.pid})")  # type: ignore[union-attr]

    def stop(self) -> None:
        """SIGTERM every child, wait for them together, then SIGKILL whatever is left of each group."""
        running = [child.process for child in self.children.values() if child.process is not None]
        for process in running:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        for process in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            _kill_group(process)
            process.wait()
        for child in self.children.values():
            child.process, child.restart_at = None, None
        for reader in self._readers:
            reader.join(timeout=5)

    def say(self, message: str) -> None:
        """A supervisor line on the terminal, among the children's."""
        self._write(f"supervisor | {message}\n")

    def _revive(self, server: Server) -> None:
        """Start a stopped server again at once: every child needs it, and they reconnect by themselves."""
        self.say(f"{server.name} stopped; starting it again")
        try:
            server.restart()
        except Exception as exc:  # whatever the server's start raises, the run cannot go on without it
            raise CrashLoop(f"stopping: {server.name} stopped and could not start again ({exc})") from exc
        self.say(f"{server.name} is back")

    def _exited(self, child: Child, now: float) -> None:
        process = child.process
        assert process is not None
        why = _why(process.returncode)
        _kill_group(process)  # a SIGKILLed worker leaves its pool processes behind
        process.wait()
        child.process = None
        child.crashes.append(now)
        while child.crashes and child.crashes[0] < now - self.crash_window_seconds:
            child.crashes.popleft()
        if len(child.crashes) >= self.max_crashes:
            raise CrashLoop(
                f"stopping: {child.name} {why}, {len(child.crashes)} exits within "
                f"{self.crash_window_seconds:.0f} s; see its log: {child.log_path}"
            )
        backoff = min(MAX_BACKOFF_SECONDS, self.first_backoff_seconds * 2 ** (len(child.crashes) - 1))
        child.restart_at = now + backoff
        self.say(
            f"{child.name} (pid {process.pid}) {why}; restarting in {backoff:g} s "
            f"({len(child.crashes)} of {self.max_crashes} exits allowed in {self.crash_window_seconds:.0f} s)"
        )

    def _spawn(self, child: Child) -> None:
        child.log_path.touch()  # there from the start, before the child's first line
        child.process = subprocess.Popen(
            child.command,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert child.process.stdout is not None
        reader = threading.Thread(
            target=self._copy, args=(child.name, child.process.stdout, child.log_path), daemon=True
        )
        reader.start()
        self._readers = [thread for thread in self._readers if thread.is_alive()] + [reader]

    def _copy(self, name: str, stream: IO[bytes], log_path: Path) -> None:
        """Each line of a child's output to its log file and, prefixed with its name, to the terminal."""
        with stream, open(log_path, "ab") as log:
            for line in stream:
                log.write(line)
                log.flush()
                self._write(f"{name:10} | {line.decode(errors='replace')}")

    def _write(self, text: str) -> None:
        with self._write_lock:
            self.out.write(text)
            self.out.flush()


def _why(returncode: int) -> str:
    """How a process ended, in words: a negative return code is the signal that killed it."""
    if returncode < 0:
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"exited with code {returncode}"


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
