"""The procrastinate app of ``bench.peer_procrastinate``: its worker process imports it by name.

A module of its own because procrastinate warns about an app defined in ``__main__``. The connection
string comes from ``PROCRASTINATE_BENCH_DSN``; the publisher uses ``app.with_connector``.
"""

from __future__ import annotations

import os

import procrastinate

QUEUE = "bench"
DSN_ENV = "PROCRASTINATE_BENCH_DSN"

app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=os.environ.get(DSN_ENV, "")))


@app.task(name="bench.noop", queue=QUEUE)
async def noop(t0: float, left: int) -> None:
    """A step: the last one (``left`` 0) does nothing, the others defer the next step."""
    if left:
        await noop.defer_async(t0=t0, left=left - 1)
