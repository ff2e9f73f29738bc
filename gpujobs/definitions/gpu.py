"""GPU instance definitions: the provisioning workflow and the instance actions (see gpujobs.provisioning).

`gpu.instance.create@1` is the create step of the create -> monitor -> webhook chain: its handler hands
the running job to the monitor task, which ends it. Each job's timeout (enforced by the rescue sweep)
sits well above the longest monitoring deadline a request may ask for, so the monitor always ends the
job first, with the clearer reason.

The handlers import `gpujobs.provisioning` when they run, not here: the engine (`gpujobs.jobs`) imports
this package, and the provisioning code imports the engine.
"""

from __future__ import annotations

from typing import Any

from gpujobs.definitions.registry import Handoff, JobContext, RetryPolicy, job_definition
from gpujobs.provisioning.params import MAX_TIMEOUT_SECONDS, CreateInstanceParams, InstanceActionParams

JOB_TIMEOUT_SECONDS = 2 * MAX_TIMEOUT_SECONDS
# Novita outages are short or long; a create rerun is cheap (it adopts by name), so back off to a minute.
NOVITA_RETRY = RetryPolicy(base_delay_seconds=2.0, max_delay_seconds=60.0)


def settle_created_instance(ctx: JobContext, params: dict[str, Any]) -> None:
    """on_end: a create job that ended in its handler (refused, failed, cancelled) says so on its instance."""
    from gpujobs.provisioning import create

    create.on_end(ctx, params)


def settle_acted_instance(ctx: JobContext, params: dict[str, Any]) -> None:
    """on_end: an action job that ended in its handler settles the instance it took (not one refused)."""
    from gpujobs.provisioning import actions

    actions.on_end(ctx, params)


ACTION_OPTIONS: dict[str, Any] = {
    "params_model": InstanceActionParams,
    "max_attempts": 3,
    "timeout_seconds": JOB_TIMEOUT_SECONDS,
    "retry": NOVITA_RETRY,
    "on_end": settle_acted_instance,
}


@job_definition(
    "gpu.instance.create",
    1,
    params_model=CreateInstanceParams,
    max_attempts=3,
    timeout_seconds=JOB_TIMEOUT_SECONDS,
    retry=NOVITA_RETRY,
    on_end=settle_created_instance,
    description="Provision a Novita GPU instance: select, create or adopt, wait until running, notify.",
)
def create_instance(ctx: JobContext, params: dict[str, Any]) -> Handoff:
    """Adopt or create the job's instance, then hand the job to the monitor."""
    from gpujobs.provisioning import create

    return create.provision(ctx, params)


@job_definition(
    "gpu.instance.stop", 1, description="Stop an instance; wait until it exited.", **ACTION_OPTIONS
)
def stop_instance(ctx: JobContext, params: dict[str, Any]) -> Handoff:
    """Stop the instance, then hand the job to the monitor."""
    from gpujobs.provisioning import actions

    return actions.stop(ctx, params)


@job_definition(
    "gpu.instance.start",
    1,
    description="Start an instance; wait until it runs (its GPU may be gone).",
    **ACTION_OPTIONS,
)
def start_instance(ctx: JobContext, params: dict[str, Any]) -> Handoff:
    """Start the instance, then hand the job to the monitor."""
    from gpujobs.provisioning import actions

    return actions.start(ctx, params)


@job_definition(
    "gpu.instance.delete", 1, description="Delete an instance; wait until it is gone.", **ACTION_OPTIONS
)
def delete_instance(ctx: JobContext, params: dict[str, Any]) -> Handoff | dict[str, Any]:
    """Delete the instance, then hand the job to the monitor (or end it, if it never reached Novita)."""
    from gpujobs.provisioning import actions

    return actions.delete(ctx, params)
