"""One thread per process that runs callbacks at their deadlines: the outbound calls' watchdog.

Every outbound call (``gpujobs.outbound.send``) needs something that ends it at its total deadline,
whatever its socket is doing. A ``threading.Timer`` per call did that at the price of a thread started
and joined per call: 6 % of a webhook worker's CPU in ``bench.pipeline``. Here one daemon thread keeps
a heap of deadlines; arming is a lock and a heap push, disarming clears the entry's action, and a
cleared entry is dropped as soon as it reaches the top of the heap. A thread that died (an action
raising something other than an Exception) is started again by the next ``arm``.

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
from typing import Any

log = logging.getLogger(__name__)


class Deadlines:
    """Run ``action`` at monotonic time ``deadline`` unless disarmed first."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._wake = threading.Condition(threading.Lock())
        # Entries are [deadline, token, action]; disarming clears the action in place.
        self._heap: list[list[Any]] = []
        self._armed: dict[int, list[Any]] = {}
        self._tokens = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, deadline: float, action: Callable[[], None]) -> int:
        """Schedule ``action``; returns the token that disarms it."""
        with self._wake:
            if self._thread is None or not self._thread.is_alive():  # none yet, or it died
                self._thread = threading.Thread(target=self._run, name="gpujobs-deadlines", daemon=True)
                self._thread.start()
            token = next(self._tokens)
            entry = [deadline, token, action]
            self._armed[token] = entry
            heapq.heappush(self._heap, entry)
            if self._heap[0] is entry:  # else the thread already sleeps until an earlier deadline
                self._wake.notify()
        return token

    def disarm(self, token: int) -> None:
        """Make sure the action of ``token`` does not run from now on (a no-op once it has run)."""
        with self._wake:
            entry = self._armed.pop(token, None)
            if entry is not None:
                entry[2] = None

    def _run(self) -> None:
        with self._wake:
            while True:
                if not self._heap:
                    self._wake.wait()
                    continue
                deadline, token, action = self._heap[0]
                wait = deadline - time.monotonic()
                if action is not None and wait > 0:
                    self._wake.wait(wait)
                    continue
                heapq.heappop(self._heap)
                if action is None:  # disarmed
                    continue
                del self._armed[token]
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
