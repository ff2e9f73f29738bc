"""Simulator settings fixed for its lifetime; faults, which change at run time, live in faults.py."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_PHASE_SECONDS = 1.0


@dataclass(frozen=True)
class SimulatorConfig:
    """How the simulated Novita behaves; the defaults suit a human watching a standalone server."""

    api_key: str = field(default="sk_test", repr=False)
    # Seconds each transient phase lasts: one number for all, or a mapping by status name ("pending",
    # "toCreate", "creating", "pulling", "toStart", ..., plus "notified"/"reclaiming" for spot reclaims and
    # "default" for the rest). Zero makes every action complete at once (benchmarks).
    phase_seconds: float | Mapping[str, float] = DEFAULT_PHASE_SECONDS
    # Novita reports an undocumented `pending` right after create (docs/novita-api.md §8); off to model only
    # the documented enum.
    include_pending: bool = True
    # Novita's undocumented `createdAt`, `startedAt` and `stoppedAt` (§6); off to model a server written
    # from the public reference alone, which sends none of them.
    run_times: bool = True
    # How long a deleted instance stays listed as `removed` before it is gone (§7, §15).
    removed_grace_seconds: float = 30.0
    # Whether pageNum counts from 0 or 1 is undocumented (§7); with 1, pageNum 0 is answered as page 1.
    page_base: int = 1
    seed: int = 0

    def seconds_for(self, phase: str) -> float:
        """Duration of one transient phase."""
        if isinstance(self.phase_seconds, Mapping):
            default = self.phase_seconds.get("default", DEFAULT_PHASE_SECONDS)
            return float(self.phase_seconds.get(phase, default))
        return float(self.phase_seconds)
