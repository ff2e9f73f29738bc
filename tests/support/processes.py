"""Real ``celery -A gpujobs.worker ...`` subprocesses (workers, beat, Flower) with their output in a file."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from gpujobs.definitions.video import dies_with_this_process


class CeleryProcess:
    """One Celery program of the service under test, started in a session of its own."""

    def __init__(self, command: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # A pytest killed outright (a CI timeout) leaves no process behind to reconnect for ever to
            # whatever next listens on its Redis port and take another run's messages.
            preexec_fn=dies_with_this_process(),
        )

    def log(self) -> str:
        """Everything the process printed so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Warm shutdown, then kill the whole session if it lingers."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self._log.close()


def sigint_by_default() -> None:
    """``preexec_fn`` of a child a test stops with SIGINT (as Ctrl-C does): a shell runs its background
    jobs with SIGINT ignored and children inherit that, so a suite started with ``&`` would otherwise
    send a signal its children never see."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
