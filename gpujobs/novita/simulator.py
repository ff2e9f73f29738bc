"""A local Novita GPU-instance API over real HTTP, for contract tests, end-to-end tests and benchmarks.

It follows docs/novita-api.md §15: the documented paths under `/gpu-instance/openapi/v1`, bearer auth, seeded
clusters/products/templates/registry auths, per-cluster capacity, clock-driven lifecycles, Novita's error
envelope, and failure injection. Every call and every instance ever created is kept in a ledger.

    with run_simulator(api_key="sk_test", phase_seconds=0) as sim:
        client = NovitaClient(sim.base_url, "sk_test")
        sim.inject(lose_next_creates=1)
        ...
        assert sim.count_calls("POST", "/gpu/instance/create") == 1

Standalone: `serve(host, port, api_key)` blocks; admin routes are listed in `gpujobs.novita.sim.app`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from gpujobs.novita import spec
from gpujobs.novita.sim.app import ADMIN_PREFIX, create_app
from gpujobs.novita.sim.config import SimulatorConfig
from gpujobs.novita.sim.faults import Faults
from gpujobs.novita.sim.state import SimState

# How often the server thread checks for stop(); short so each test's teardown is quick.
SHUTDOWN_POLL_SECONDS = 0.02

__all__ = ["ADMIN_PREFIX", "ManualClock", "NovitaSimulator", "SimulatorConfig", "run_simulator", "serve"]


class ManualClock:
    """A clock that only moves when told to, for deterministic lifecycle tests."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move time forward; instances settle into later phases on their next read."""
        with self._lock:
            self._now += seconds


class _QuietRequestHandler(WSGIRequestHandler):
    """Keeps werkzeug's per-request access log out of test and benchmark output; the ledger has it all."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class NovitaSimulator:
    """The simulator: state, faults, Flask app and, once started, an HTTP server in a daemon thread."""

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        clock: Callable[[], float] = time.time,
        inject: Mapping[str, Any] | None = None,
    ) -> None:
        self.config = config or SimulatorConfig()
        self.state = SimState(self.config, clock, Faults(self.config.seed))
        self.app = create_app(self.state)
        self.url: str | None = None
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None
        if inject:
            self.inject(**inject)

    def __repr__(self) -> str:
        return f"NovitaSimulator(url={self.url!r})"

    @property
    def base_url(self) -> str:
        """The API base URL to give NovitaClient: `<url>/gpu-instance/openapi/v1`."""
        if self.url is None:
            raise RuntimeError("the simulator is not serving; call start() or use run_simulator()")
        return self.url + spec.BASE_PATH

    def start(self, host: str = "127.0.0.1", port: int = 0) -> NovitaSimulator:
        """Serve in a background thread; port 0 picks a free port (see `url`)."""
        self._server = make_server(host, port, self.app, threaded=True, request_handler=_QuietRequestHandler)
        self.url = f"http://{host}:{self._server.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": SHUTDOWN_POLL_SECONDS},
            name="novita-simulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None
        self.url = None

    def inject(self, **options: Any) -> None:
        """Change failure injection at run time; options are documented in `gpujobs.novita.sim.faults`."""
        self.state.inject(options)

    def reclaim(self, instance_id: str) -> None:
        """Spot-reclaim a running instance now."""
        self.state.reclaim(instance_id)

    def set_capacity(self, product_id: str, cluster_id: str, gpus: int) -> None:
        """Set the free GPUs of a product in a cluster."""
        self.state.set_capacity(product_id, cluster_id, gpus)

    def reset(self) -> None:
        """Back to the seed: no instances, no faults, empty ledger."""
        self.state.reset()

    def ledger(self) -> list[dict[str, Any]]:
        """Every API call (method, path, endpoint, status, lost, injected, at, elapsed_ms, ...)."""
        return self.state.calls()

    def count_calls(self, method: str | None = None, endpoint: str | None = None) -> int:
        """How many API calls matched, e.g. `count_calls("POST", "/gpu/instance/create")`."""
        return sum(
            1
            for call in self.state.calls()
            if method in (None, call["method"]) and endpoint in (None, call["endpoint"])
        )

    def unknown_calls(self) -> list[dict[str, Any]]:
        """Calls to a path or with a method the API does not serve: a client bug, so tests expect none."""
        return [call for call in self.state.calls() if call["unknown"]]

    def instances(self) -> list[dict[str, Any]]:
        """Every instance ever created, deleted ones included; proves no job created two."""
        return self.state.instances_ledger()


@contextmanager
def run_simulator(
    api_key: str = "sk_test",
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    clock: Callable[[], float] = time.time,
    inject: Mapping[str, Any] | None = None,
    **config: Any,
) -> Iterator[NovitaSimulator]:
    """Serve a simulator for the duration of a `with` block.

    `config` takes the SimulatorConfig fields (phase_seconds, include_pending, run_times,
    removed_grace_seconds, page_base, seed); `inject` takes fault options applied before the first request.
    """
    simulator = NovitaSimulator(SimulatorConfig(api_key=api_key, **config), clock=clock, inject=inject)
    simulator.start(host, port)
    try:
        yield simulator
    finally:
        simulator.stop()


def serve(
    host: str = "127.0.0.1",
    port: int = 8080,
    api_key: str = "sk_test",
    *,
    phase_seconds: float | Mapping[str, float] = 1.0,
    seed: int = 0,
    inject: Mapping[str, Any] | None = None,
) -> None:
    """Serve the simulator in the foreground until interrupted (for `python -m gpujobs simulator`).

    Args:
        host: interface to bind, e.g. "127.0.0.1" or "0.0.0.0".
        port: TCP port; the API is then at http://<host>:<port>/gpu-instance/openapi/v1.
        api_key: the only key accepted as `Authorization: Bearer <api_key>`.
        phase_seconds: seconds per lifecycle phase, one number or a mapping by status name.
        seed: seeds placement choices, SSH passwords and injected errors, for reproducible runs
            (instance ids are random, unique across restarts as Novita's are).
        inject: initial fault options (see gpujobs.novita.sim.faults); change them later via /_sim/inject.
    """
    simulator = NovitaSimulator(
        SimulatorConfig(api_key=api_key, phase_seconds=phase_seconds, seed=seed), inject=inject
    )
    server = make_server(host, port, simulator.app, threaded=True, request_handler=_QuietRequestHandler)
    print(
        f"Novita simulator on http://{host}:{server.port}{spec.BASE_PATH} (admin: {ADMIN_PREFIX})", flush=True
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
