"""The outbound calls' watchdog: one thread per process runs each armed action at its deadline."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest

from gpujobs.deadlines import DEADLINES, Deadlines

SLACK_SECONDS = 1.0  # how late a loaded machine may run an action; never early


def test_an_armed_action_runs_at_its_deadline_not_before() -> None:
    deadlines, ran = Deadlines(), threading.Event()
    ran_at: list[float] = []
    due = time.monotonic() + 0.2
    deadlines.arm(due, lambda: (ran_at.append(time.monotonic()), ran.set()))
    assert ran.wait(SLACK_SECONDS + 0.2)
    assert due <= ran_at[0] <= due + SLACK_SECONDS


def test_a_disarmed_action_never_runs_and_the_others_still_do() -> None:
    deadlines, ran = Deadlines(), threading.Event()
    order: list[str] = []
    now = time.monotonic()
    kept = deadlines.arm(now + 0.3, lambda: (order.append("later"), ran.set()))
    dropped = deadlines.arm(now + 0.1, lambda: order.append("disarmed"))
    deadlines.disarm(dropped)
    assert ran.wait(SLACK_SECONDS + 0.3)
    assert order == ["later"]
    deadlines.disarm(kept)  # after it ran: nothing to do
    assert order == ["later"]


def test_an_earlier_deadline_armed_later_wakes_the_thread_and_runs_first() -> None:
    deadlines, done = Deadlines(), threading.Event()
    order: list[str] = []
    now = time.monotonic()
    deadlines.arm(now + 60, lambda: order.append("in a minute"))  # the thread now sleeps for a minute
    deadlines.arm(now + 0.3, lambda: (order.append("second"), done.set()))
    deadlines.arm(now + 0.2, lambda: order.append("first"))
    assert done.wait(SLACK_SECONDS + 0.3)
    assert order == ["first", "second"]


def _end_the_thread() -> None:
    raise SystemExit  # not an Exception: it ends the thread that runs it


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the SystemExit
def test_a_thread_ended_by_an_action_is_started_again_by_the_next_arm() -> None:
    deadlines, ran = Deadlines(), threading.Event()
    deadlines.arm(time.monotonic(), _end_the_thread)
    first = deadlines._thread
    assert first is not None
    first.join(timeout=SLACK_SECONDS)
    assert not first.is_alive()
    deadlines.arm(time.monotonic() + 0.05, ran.set)
    assert ran.wait(SLACK_SECONDS)


def _arm_in_child(queue: multiprocessing.Queue) -> None:
    DEADLINES.arm(time.monotonic() + 0.1, lambda: queue.put("ran in the child"))
    time.sleep(SLACK_SECONDS + 0.1)


def test_a_forked_child_gets_its_own_thread() -> None:
    """A Celery pool process is forked from a parent whose thread (if any) does not survive the fork."""
    ran = threading.Event()
    DEADLINES.arm(time.monotonic() + 0.05, ran.set)  # the parent's thread exists before the fork
    assert ran.wait(SLACK_SECONDS)
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_arm_in_child, args=(queue,))
    child.start()
    assert queue.get(timeout=SLACK_SECONDS + 5) == "ran in the child"
    child.join(timeout=5)
    assert child.exitcode == 0
