"""The command line every job benchmark shares (``bench.echo``, ``bench.pipeline``): one parser, one run."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable
from typing import TypeVar

Result = TypeVar("Result")


def job_bench_parser(doc: str, *, jobs: int, waits_for: str) -> argparse.ArgumentParser:
    """``--jobs``, ``--threads``, ``--timeout`` and ``--count-sql``; each benchmark adds its own options."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=jobs)
    parser.add_argument("--threads", type=int, default=8, help="client threads submitting")
    parser.add_argument("--timeout", type=float, default=600, help=f"seconds to wait for {waits_for}")
    parser.add_argument("--count-sql", action="store_true", help="log and count every SQL statement")
    return parser


def run_once(
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace], Result],
    report: Callable[[argparse.Namespace, Result], None],
) -> None:
    """Run the benchmark and print its figures; a SIGTERM still stops the deployment it started."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    report(args, run(args))
