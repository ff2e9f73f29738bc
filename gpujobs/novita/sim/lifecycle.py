"""Clock-driven instance lifecycles for the simulator (docs/novita-api.md §8 "likely transitions").

An action gives an instance a *track*: transient phases with durations, ending in a steady status. Status is
settled lazily against the clock whenever the instance is read, so a manual clock makes every transition
deterministic and zero durations make an action complete at once. Each phase boundary happens at its exact
time, so timestamps (`startedAt`, ...) do not depend on when someone looked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gpujobs.novita import spec
from gpujobs.novita.sim.seed import ClusterSeed, ProductSeed
from gpujobs.novita.sim.validation import CreateParams

PULL_FAILED_MESSAGE = "pull image failed"


@dataclass(frozen=True)
class Phase:
    """One step of a track; `seconds=None` marks the steady status that ends it."""

    status: str
    seconds: float | None
    spot_status: str | None = None
    error: tuple[str, str] | None = None


@dataclass
class SimInstance:
    """Everything the simulator knows about one instance, including after its deletion."""

    id: str
    name: str
    product: ProductSeed
    cluster: ClusterSeed
    gpu_num: int
    params: CreateParams
    created_at: float
    ssh_password: str = field(repr=False, default="")
    status: str = ""
    phase_ends_at: float | None = None
    track: list[Phase] = field(default_factory=list)
    holds_capacity: bool = True
    spot_status: str = ""
    status_error: tuple[str, str] | None = None
    started_at: float | None = None
    stopped_at: float | None = None
    removed_at: float | None = None


Release = Callable[[SimInstance], None]


class Lifecycle:
    """Builds tracks from configured phase durations and advances instances along them."""

    def __init__(
        self, seconds_for: Callable[[str], float], *, include_pending: bool, release: Release
    ) -> None:
        self._seconds_for = seconds_for
        self._include_pending = include_pending
        self._release = release

    def _phases(self, statuses: Sequence[spec.Status]) -> list[Phase]:
        return [Phase(status.value, self._seconds_for(status.value)) for status in statuses]

    def create_track(self, *, pull_fails: bool) -> list[Phase]:
        """(pending) -> toCreate -> creating -> pulling -> running, or -> exited with a statusError."""
        statuses = [s for s in spec.CREATE_PHASES if self._include_pending or s is not spec.Status.PENDING]
        if pull_fails:
            end = Phase(
                spec.Status.EXITED.value, None, error=(spec.Status.PULLING.value, PULL_FAILED_MESSAGE)
            )
        else:
            end = Phase(spec.Status.RUNNING.value, None)
        return [*self._phases(statuses), end]

    def start_track(self) -> list[Phase]:
        """toStart -> starting -> running."""
        return [*self._phases(spec.START_PHASES), Phase(spec.Status.RUNNING.value, None)]

    def stop_track(self) -> list[Phase]:
        """toStop -> stopping -> exited."""
        return [*self._phases(spec.STOP_PHASES), Phase(spec.Status.EXITED.value, None)]

    def restart_track(self) -> list[Phase]:
        """toRestart -> restarting -> running."""
        return [*self._phases(spec.RESTART_PHASES), Phase(spec.Status.RUNNING.value, None)]

    def delete_track(self) -> list[Phase]:
        """toRemove -> removing -> removed."""
        return [*self._phases(spec.DELETE_PHASES), Phase(spec.Status.REMOVED.value, None)]

    def reset_track(self) -> list[Phase]:
        """Upgrade (a new image on the same GPU): toReset -> resetting -> running."""
        return [*self._phases(spec.RESET_PHASES), Phase(spec.Status.RUNNING.value, None)]

    def reclaim_track(self) -> list[Phase]:
        """Spot reclaim: spotStatus notified -> reclaiming -> terminated while running, then exited (§8)."""
        running = spec.Status.RUNNING.value
        return [
            Phase(running, self._seconds_for("notified"), spot_status="notified"),
            Phase(running, self._seconds_for("reclaiming"), spot_status="reclaiming"),
            Phase(spec.Status.EXITED.value, None, spot_status="terminated"),
        ]

    def migrate_track(self) -> list[Phase]:
        """A reclaimed spot instance moved to another node: migrating -> running (same id)."""
        return [
            Phase(spec.Status.MIGRATING.value, self._seconds_for(spec.Status.MIGRATING.value)),
            Phase(spec.Status.RUNNING.value, None),
        ]

    def begin(self, instance: SimInstance, track: list[Phase], now: float) -> None:
        """Put the instance on a new track starting now, replacing whatever it was doing."""
        instance.track = list(track)
        instance.phase_ends_at = now
        self.settle(instance, now)

    def settle(self, instance: SimInstance, now: float) -> None:
        """Advance through every phase whose end time has passed."""
        while instance.phase_ends_at is not None and instance.phase_ends_at <= now and instance.track:
            self._enter(instance, instance.track.pop(0), instance.phase_ends_at)

    def _enter(self, instance: SimInstance, phase: Phase, at: float) -> None:
        instance.status = phase.status
        instance.phase_ends_at = None if phase.seconds is None else at + phase.seconds
        if phase.spot_status is not None:
            instance.spot_status = phase.spot_status
        if phase.error is not None:
            instance.status_error = phase.error
        if phase.status == spec.Status.RUNNING.value and phase.spot_status is None:
            instance.started_at = at
            instance.status_error = None
        elif phase.status == spec.Status.EXITED.value:
            instance.stopped_at = at
            self._release(instance)
        elif phase.status == spec.Status.REMOVED.value:
            instance.removed_at = at
            self._release(instance)
