"""What a caller may ask of the GPU workflow: the params of `gpu.instance.*` jobs, validated at submit.

`CreateInstanceParams` is both the params model of `gpu.instance.create@1` and the core of the
`POST /v1/instances` body, so both doors refuse the same mistakes with the same 422. Field names are the
public camelCase ones the GPU queue this service replaced used. Limits mirror Novita's create-instance rules
(docs/novita-api.md §5), so a request Novita would refuse never gets queued.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from gpujobs.novita import spec
from gpujobs.registry import Params, RetryPolicy
from gpujobs.resources import OnExpiry

MIN_POLL_INTERVAL_MS = 500
MAX_POLL_INTERVAL_MS = 60_000
MIN_TIMEOUT_SECONDS = 10
# The job's own timeout (the rescue sweep's limit) sits above this, see JOB_TIMEOUT_SECONDS.
MAX_TIMEOUT_SECONDS = 3600
MAX_RETRY_ATTEMPTS = 10
DEFAULT_ROOTFS_GB = 60  # Novita's free container disk (§5)

# An instance's lifetime (`maxRuntimeSeconds`, and each extension) is at most 30 days: longer is not a cap.
MAX_RUNTIME_SECONDS = 30 * 24 * 3600

# A `gpu.instance.*` job's timeout (enforced by the rescue sweep) sits well above the longest monitoring
# deadline a request may ask for, so the monitor always ends the job first, with the clearer reason.
JOB_TIMEOUT_SECONDS = 2 * MAX_TIMEOUT_SECONDS
# Novita outages are short or long; a create rerun is cheap (it adopts by name), so back off to a minute.
NOVITA_RETRY = RetryPolicy(base_delay_seconds=2.0, max_delay_seconds=60.0)
# Novita's own spelling of the billing modes gpujobs offers (§5; `monthly` is a subscription, not offered).
BillingMode = Literal["onDemand", "spot"]
OnReclaim = Literal["fail", "recreate"]


class Port(Params):
    """One container port to expose; `http` ports get an https endpoint, `tcp` ones a proxy host:port."""

    port: int = Field(ge=1, le=65535)
    type: Literal["http", "tcp"] = "http"

    @field_validator("port")
    @classmethod
    def _not_reserved(cls, port: int) -> int:
        if port in spec.RESERVED_PORTS:
            raise ValueError(f"ports {sorted(spec.RESERVED_PORTS)} are reserved by Novita")
        return port


class Env(Params):
    """One container environment variable."""

    key: str = Field(min_length=1, max_length=spec.MAX_ENV_KEY_CHARS)
    value: str = Field(default="", max_length=spec.MAX_ENV_VALUE_CHARS)


class Monitoring(Params):
    """The seed's monitoring configuration, per request; unset fields take the service defaults."""

    pollIntervalMs: int | None = Field(default=None, ge=MIN_POLL_INTERVAL_MS, le=MAX_POLL_INTERVAL_MS)
    maxWaitTimeMs: int | None = Field(
        default=None, ge=MIN_TIMEOUT_SECONDS * 1000, le=MAX_TIMEOUT_SECONDS * 1000
    )
    maxRetryAttempts: int | None = Field(
        default=None,
        ge=1,
        le=MAX_RETRY_ATTEMPTS,
        description="attempts of the create step on transient errors",
    )


class CreateInstanceParams(Params):
    """Params of `gpu.instance.create@1`: which GPU, where, what to run, and how long to wait for it."""

    name: str | None = Field(default=None, min_length=1, max_length=255, description="your label")
    productName: str = Field(min_length=1, max_length=200, examples=["RTX 4090 24GB"])
    region: str | None = Field(
        default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$", examples=["CN-HK-01"]
    )
    gpuNum: int = Field(default=1, ge=spec.GPU_NUM_MIN, le=spec.GPU_NUM_MAX)
    rootfsSize: int | None = Field(default=None, ge=spec.ROOTFS_MIN_GB, le=spec.ROOTFS_MAX_GB)
    templateId: str | None = Field(default=None, min_length=1, max_length=64)
    imageUrl: str | None = Field(default=None, min_length=1, max_length=spec.MAX_IMAGE_URL_CHARS)
    imageAuthId: str | None = Field(default=None, min_length=1, max_length=255)
    command: str | None = Field(default=None, max_length=spec.MAX_COMMAND_CHARS)
    ports: list[Port] = Field(default_factory=list, max_length=spec.MAX_PORTS_PLUS_TOOLS)
    envs: list[Env] = Field(default_factory=list, max_length=spec.MAX_ENVS)
    maxPricePerHour: float | None = Field(default=None, gt=0, description="USD per hour for all GPUs")
    timeoutSeconds: int | None = Field(default=None, ge=MIN_TIMEOUT_SECONDS, le=MAX_TIMEOUT_SECONDS)
    monitoring: Monitoring | None = None
    maxRuntimeSeconds: int | None = Field(
        default=None,
        ge=1,
        le=MAX_RUNTIME_SECONDS,
        description="seconds from this request until `onExpiry` is applied (default: the deployment's "
        "GPUJOBS_INSTANCE_MAX_RUNTIME_SECONDS; unset there: no limit)",
    )
    onExpiry: OnExpiry = Field(default="delete", description="what happens at the deadline")
    billingMode: BillingMode = Field(
        default="onDemand", description="spot: Novita's spot price, and Novita may reclaim the instance"
    )
    onReclaim: OnReclaim = Field(
        default="fail", description="when Novita reclaims a spot instance: fail, or recreate it (bounded)"
    )
    fallbackToOnDemand: bool = Field(
        default=False, description="spot with no spot capacity (or over the price cap): create on demand"
    )

    @model_validator(mode="after")
    def _spot_options(self) -> CreateInstanceParams:
        if self.billingMode != "spot" and (self.onReclaim != "fail" or self.fallbackToOnDemand):
            raise ValueError("onReclaim and fallbackToOnDemand apply to billingMode spot")
        return self

    @model_validator(mode="after")
    def _one_image_source(self) -> CreateInstanceParams:
        if (self.templateId is None) == (self.imageUrl is None):
            raise ValueError("give exactly one of templateId or imageUrl")
        if self.imageAuthId and not self.imageUrl:
            raise ValueError("imageAuthId goes with imageUrl; a template names its own registry auth")
        if self.timeoutSeconds and self.monitoring and self.monitoring.maxWaitTimeMs:
            raise ValueError("give timeoutSeconds or monitoring.maxWaitTimeMs, not both")
        return self

    def timeout_seconds(self, default_seconds: float) -> float:
        """How long the instance may take to run, from the request or the service default."""
        if self.timeoutSeconds:
            return float(self.timeoutSeconds)
        if self.monitoring and self.monitoring.maxWaitTimeMs:
            return self.monitoring.maxWaitTimeMs / 1000
        return min(default_seconds, MAX_TIMEOUT_SECONDS)

    def poll_interval_seconds(self, default_seconds: float) -> float:
        """Seconds between status reads, from the request or the service default."""
        if self.monitoring and self.monitoring.pollIntervalMs:
            return self.monitoring.pollIntervalMs / 1000
        return default_seconds


class MonitorInstanceParams(Params):
    """Params of `gpu.instance.monitor@1`: a Novita instance gpujobs did not create, and how to watch it."""

    novitaInstanceId: str = Field(min_length=1, max_length=90, pattern=r"^[A-Za-z0-9._-]+$")
    pollIntervalMs: int | None = Field(default=None, ge=MIN_POLL_INTERVAL_MS, le=MAX_POLL_INTERVAL_MS)
    maxWaitTimeMs: int | None = Field(
        default=None, ge=MIN_TIMEOUT_SECONDS * 1000, le=MAX_TIMEOUT_SECONDS * 1000
    )

    def timeout_seconds(self, default_seconds: float) -> float:
        """How long the instance may take to run, from the request or the service default."""
        return self.maxWaitTimeMs / 1000 if self.maxWaitTimeMs else min(default_seconds, MAX_TIMEOUT_SECONDS)

    def poll_interval_seconds(self, default_seconds: float) -> float:
        """Seconds between status reads, from the request or the service default."""
        return self.pollIntervalMs / 1000 if self.pollIntervalMs else default_seconds


class InstanceActionParams(Params):
    """Params of `gpu.instance.stop@1`, `start@1` and `delete@1`: the instance (our id, not Novita's)."""

    instanceId: uuid.UUID


def monitoring_defaults(config: dict[str, Any], max_attempts: int) -> dict[str, int]:
    """The service's monitoring configuration in the seed's names (`GET /v1/instances/monitoring`)."""
    return {
        "pollIntervalMs": round(config["GPUJOBS_MONITOR_INTERVAL_SECONDS"] * 1000),
        "maxWaitTimeMs": round(min(config["GPUJOBS_MONITOR_TIMEOUT_SECONDS"], MAX_TIMEOUT_SECONDS) * 1000),
        "maxRetryAttempts": max_attempts,
    }
