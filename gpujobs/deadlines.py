"""One thread per process that runs callbacks at their deadlines: the outbound calls' watchdog.

Every outbound call (``gpujobs.outbound.send``) needs something that ends it at its total deadline,
whatever its socket is doing. A ``threading.Timer`` per call did that at the price of a thread started
and joined per call: 6 % of a webhook worker's CPU in ``bench.pipeline``. Here one daemon thread keeps
a heap of deadlines; arming and disarming are a lock and a heap push. Disarmed entries stay in the heap
until their deadline comes up, then are dropped unrun.

A forked child (a Celery pool process) starts with no thread and a fresh lock: the parent's thread does
not survive a fork, and its lock may have been held at that moment.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Deadlines:
    """Run ``action`` at monotonic time ``deadline`` unless disarmed first."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._wake = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._disarmed: set[int] = set()
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float, action: Callable[[], None]) -> int:
        """Schedule ``action``; returns the token that disarms it."""
        with self._wake:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="gpujobs-deadlines", daemon=True)
                self._thread.start()
            token = next(self._tokens)
            heapq.heappush(self._heap, (deadline, token, action))
            self._wake.notify()
        return token

    def disarm(self, token: int) -> None:
        """Make sure the action of ``token`` does not run from now on (a no-op once it has run)."""
        with self._wake:
            self._disarmed.add(token)

    def _run(self) -> None:
        with self._wake:
            while True:
                while self._heap and self._heap[0][1] in self._disarmed:
                    self._disarmed.discard(heapq.heappop(self._heap)[1])
                if not self._heap:
                    self._wake.wait()
                    continue
                deadline, token, action = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._wake.wait(wait)
                    continue
                heapq.heappop(self._heap)
                self._wake.release()  # the action may take a lock of its own (a connection's)
                try:
                    action()
                except Exception:
                    log.exception("deadline action %s failed", token)
                finally:
                    self._wake.acquire()


#: The process's one instance.
DEADLINES = Deadlines()
os.register_at_fork(after_in_child=DEADLINES._reset)
