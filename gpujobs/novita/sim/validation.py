"""Create-instance validation (§5) for the simulator, answering 400 VALIDATOR_PARAM like Novita does.

The rules come from the constants in `gpujobs.novita.spec`, so client and simulator agree on the limits.
Unknown fields are ignored (§15), and only camelCase is accepted: a snake_case `product_id` simply counts as
a missing `productId`.

Section numbers (§) cite docs/novita-api.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gpujobs.novita import spec


class SimApiError(Exception):
    """An error answer in Novita's envelope; the HTTP status comes from the documented reason table.

    Not a ``GpuJobsError``: it models what Novita answers, raised only inside the stand-in server, and
    the service meets it as an HTTP response that ``novita.errors`` classifies like the real one.
    """

    def __init__(self, reason: str, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.http_status = http_status or spec.ERROR_REASONS[reason].http_status


def invalid(message: str) -> SimApiError:
    """A 400 VALIDATOR_PARAM error."""
    return SimApiError("VALIDATOR_PARAM", message)


@dataclass(frozen=True)
class CreateParams:
    """A validated create body."""

    name: str
    product_id: str
    cluster_id: str
    gpu_num: int
    rootfs_size_gb: int
    image_url: str
    image_auth: str = field(repr=False)
    image_auth_id: str
    ports: tuple[tuple[int, str], ...]
    envs: tuple[tuple[str, str], ...] = field(repr=False)
    command: str
    entrypoint: str
    network_storage_ids: tuple[str, ...]
    kind: str
    billing_mode: str
    month: int


def _string(body: Mapping[str, Any], key: str, *, max_chars: int, required: bool = False) -> str:
    value = body.get(key, "")
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise invalid(f"{key} must be a string")
    if required and not value:
        raise invalid(f"{key} is required")
    if len(value) > max_chars:
        raise invalid(f"{key} must be at most {max_chars} characters")
    return value


def _integer(body: Mapping[str, Any], key: str, *, required: bool = False, default: int = 0) -> int:
    value = body.get(key)
    if value is None:
        if required:
            raise invalid(f"{key} is required")
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(f"{key} must be an integer")
    return value


def parse_ports(text: str) -> tuple[tuple[int, str], ...]:
    """Parse the create-instance `ports` string, e.g. "80/http, 3306/tcp" (§5, §13.4)."""
    ports = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        number, _, kind = item.partition("/")
        if not number.strip().isdigit() or kind.strip() not in spec.PORT_TYPES:
            raise invalid(f"ports entry {item!r} must look like 8080/http or 22/tcp")
        port = int(number)
        if not 1 <= port <= 65535 or port in spec.RESERVED_PORTS:
            raise invalid(f"port {port} is out of range or reserved (2222-2224)")
        ports.append((port, kind.strip()))
    return tuple(ports)


def _envs(body: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    envs = body.get("envs") or []
    if not isinstance(envs, list) or len(envs) > spec.MAX_ENVS:
        raise invalid(f"envs must be a list of at most {spec.MAX_ENVS} items")
    parsed = []
    for env in envs:
        if not isinstance(env, Mapping):
            raise invalid("envs items must be {key, value} objects")
        key = _string(env, "key", max_chars=spec.MAX_ENV_KEY_CHARS)
        value = _string(env, "value", max_chars=spec.MAX_ENV_VALUE_CHARS)
        parsed.append((key, value))
    return tuple(parsed)


def _network_storage_ids(body: Mapping[str, Any]) -> tuple[str, ...]:
    storages = body.get("networkStorages") or []
    if not isinstance(storages, list) or len(storages) > spec.MAX_NETWORK_STORAGES:
        raise invalid(f"networkStorages must be a list of at most {spec.MAX_NETWORK_STORAGES} items")
    # The key is a capital `Id` here (§13.3); a lowercase `id` is treated as missing.
    if not all(isinstance(item, Mapping) and item.get("Id") for item in storages):
        raise invalid("networkStorages items need an Id")
    return tuple(str(item["Id"]) for item in storages)


def validate_create(body: Mapping[str, Any]) -> CreateParams:
    """Check a create body against §5 and normalise it; raises SimApiError(VALIDATOR_PARAM)."""
    kind = _string(body, "kind", max_chars=3, required=True)
    if kind not in spec.INSTANCE_KINDS:
        raise invalid("kind must be gpu or cpu")
    gpu_num = _integer(body, "gpuNum", required=kind == "gpu")
    if kind == "gpu" and not spec.GPU_NUM_MIN <= gpu_num <= spec.GPU_NUM_MAX:
        raise invalid(f"gpuNum must be between {spec.GPU_NUM_MIN} and {spec.GPU_NUM_MAX}")
    rootfs_size_gb = _integer(body, "rootfsSize", required=True)
    if rootfs_size_gb > spec.ROOTFS_MAX_GB:
        raise invalid(f"rootfsSize must be at most {spec.ROOTFS_MAX_GB}")
    tools = body.get("tools") or []
    ports = parse_ports(_string(body, "ports", max_chars=1024))
    if len(ports) + (len(tools) if isinstance(tools, list) else 0) > spec.MAX_PORTS_PLUS_TOOLS:
        raise invalid(f"ports plus tools must be at most {spec.MAX_PORTS_PLUS_TOOLS}")
    image_auth = _string(body, "imageAuth", max_chars=10239)
    if image_auth and ":" not in image_auth:
        raise invalid("imageAuth must be username:password")
    billing_mode = _string(body, "billingMode", max_chars=16)
    if billing_mode and billing_mode not in spec.BILLING_MODES:
        raise invalid(f"billingMode must be one of {sorted(spec.BILLING_MODES)}")
    return CreateParams(
        name=_string(body, "name", max_chars=spec.MAX_NAME_CHARS),
        product_id=_string(body, "productId", max_chars=255, required=True),
        cluster_id=_string(body, "clusterId", max_chars=255),
        gpu_num=gpu_num,
        # Values under the minimum are raised to it rather than rejected (§5).
        rootfs_size_gb=max(rootfs_size_gb, spec.ROOTFS_MIN_GB),
        image_url=_string(body, "imageUrl", max_chars=spec.MAX_IMAGE_URL_CHARS, required=True),
        image_auth=image_auth,
        image_auth_id=_string(body, "imageAuthId", max_chars=255),
        ports=ports,
        envs=_envs(body),
        command=_string(body, "command", max_chars=spec.MAX_COMMAND_CHARS),
        entrypoint=_string(body, "entrypoint", max_chars=spec.MAX_COMMAND_CHARS),
        network_storage_ids=_network_storage_ids(body),
        kind=kind,
        billing_mode=billing_mode,
        month=_integer(body, "month"),
    )


@dataclass(frozen=True)
class EditParams:
    """A validated `POST /gpu/instance/edit` body: new ports (None: keep them), GB to add to the root disk."""

    instance_id: str
    ports: tuple[tuple[int, str], ...] | None
    expand_rootfs_gb: int


def validate_edit(body: Mapping[str, Any]) -> EditParams:
    """Check an edit body (§2): `ports` as `[{port:int, type}]` (not a string as in create, §13.4)."""
    instance_id = _string(body, spec.INSTANCE_ID_PARAM, max_chars=255, required=True)
    expand = _integer(body, "expandRootDisk")
    if expand < 0:
        raise invalid("expandRootDisk must not be negative")
    raw_ports = body.get("ports")
    if raw_ports is None:
        return EditParams(instance_id, None, expand)
    if not isinstance(raw_ports, list) or not all(isinstance(item, Mapping) for item in raw_ports):
        raise invalid("ports must be a list of {port, type} objects")
    if len(raw_ports) > spec.MAX_PORTS_PLUS_TOOLS:
        raise invalid(f"ports must be at most {spec.MAX_PORTS_PLUS_TOOLS}")
    ports = []
    for item in raw_ports:
        port, kind = item.get("port"), item.get("type")
        if isinstance(port, bool) or not isinstance(port, int) or kind not in spec.PORT_TYPES:
            raise invalid("ports items need an integer port and a type of tcp or http")
        if not 1 <= port <= 65535 or port in spec.RESERVED_PORTS:
            raise invalid(f"port {port} is out of range or reserved (2222-2224)")
        ports.append((port, str(kind)))
    return EditParams(instance_id, tuple(ports), expand)


@dataclass(frozen=True)
class UpgradeParams:
    """A validated `POST /gpu/instance/upgrade` body ([T] PWSDK): a new image, envs and command."""

    instance_id: str
    image_url: str
    envs: tuple[tuple[str, str], ...] | None = field(repr=False)
    command: str | None


def validate_upgrade(body: Mapping[str, Any]) -> UpgradeParams:
    """Check an upgrade body: `instanceId` and `imageUrl` required; absent `envs`/`command` are kept."""
    return UpgradeParams(
        instance_id=_string(body, spec.INSTANCE_ID_PARAM, max_chars=255, required=True),
        image_url=_string(body, "imageUrl", max_chars=spec.MAX_IMAGE_URL_CHARS, required=True),
        envs=_envs(body) if "envs" in body else None,
        command=_string(body, "command", max_chars=spec.MAX_COMMAND_CHARS) if "command" in body else None,
    )


def validate_months(body: Mapping[str, Any]) -> tuple[str, int]:
    """`{instanceId, month}` of renewInstance and transToMonthlyInstance ([T] PWSDK); month 1-12."""
    instance_id = _string(body, spec.INSTANCE_ID_PARAM, max_chars=255, required=True)
    month = _integer(body, "month", required=True)
    if not spec.MONTHS_MIN <= month <= spec.MONTHS_MAX:
        raise invalid(f"month must be between {spec.MONTHS_MIN} and {spec.MONTHS_MAX}")
    return instance_id, month
