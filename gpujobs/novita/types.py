"""Typed, frozen results of the Novita API, normalising its quirks (§13) once at the boundary.

Numbers that arrive as strings become ints, `""` becomes None, `Id` and `id` both become `id`, template port
groups are flattened, and secrets (registry passwords, env values, SSH passwords) are either kept out of
`repr` or not kept at all. Callers never see raw JSON.

Section numbers (§) cite docs/novita-api.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gpujobs.novita import spec

Json = Mapping[str, Any]


def parse_int(value: Any) -> int | None:
    """Accept an int, a float or a numeric string (§13.2); "" and None mean unknown."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value)
    text = str(value).strip()
    if not text:
        return None
    try:
        return int(float(text))
    except ValueError:
        return None


def parse_str(value: Any) -> str | None:
    """Empty strings stand in for null (§13.15)."""
    if value is None:
        return None
    text = str(value)
    return text or None


# Past this, a "unix seconds" value is milliseconds (year 5138 in seconds; 1973 in milliseconds).
_MILLISECONDS_FROM = 100_000_000_000


def parse_unix_seconds(value: Any) -> datetime | None:
    """Timestamps are unix seconds, often as strings; "0" and "" mean "not happened". Milliseconds are
    read as such, and a value no calendar holds is None: an undocumented field (§6) must not fail the
    whole answer it came in."""
    seconds = parse_int(value)
    if not seconds:
        return None
    if abs(seconds) >= _MILLISECONDS_FROM:
        seconds //= 1000
    try:
        return datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def region_code(region: str) -> str:
    """Compare regions on the part before the first space, case-insensitively (§4: formats changed)."""
    return region.strip().split(" ", 1)[0].upper()


def _parse_bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _mapping(value: Any) -> Json:
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True)
class Cluster:
    """A Novita cluster (region); `id` is the slug to send as `clusterId`, `name` the display code."""

    id: str
    name: str
    available_gpu_types: tuple[str, ...] = ()
    supports_network_storage: bool = False
    supports_instance_network: bool = False

    @classmethod
    def from_json(cls, data: Json) -> Cluster:
        """Parse one `/clusters` item."""
        return cls(
            id=str(data.get("id") or ""),
            name=str(data.get("name") or ""),
            available_gpu_types=tuple(str(gpu) for gpu in _list(data.get("availableGpuType"))),
            supports_network_storage=bool(data.get("supportNetworkStorage")),
            supports_instance_network=bool(data.get("supportInstanceNetwork")),
        )

    @property
    def region_code(self) -> str:
        """The display code (e.g. `CN-HK-01`) that product `regions` entries refer to."""
        return region_code(self.name)


@dataclass(frozen=True)
class Product:
    """A GPU product; prices are integers in 1/100,000 USD per GPU-hour (§4)."""

    id: str
    name: str
    price_units: int
    available_deploy: bool
    regions: tuple[str, ...] = ()
    spot_price_units: int | None = None
    inventory_state: str | None = None
    can_buy: bool | None = None
    billing_methods: tuple[str, ...] = ()
    cpu_per_gpu: int | None = None
    memory_per_gpu_gb: int | None = None
    disk_per_gpu_gb: int | None = None
    min_rootfs_gb: int | None = None
    max_rootfs_gb: int | None = None
    # The `clusterId` the listing was filtered by: availability and stock then describe that cluster only.
    cluster_id: str | None = None

    @classmethod
    def from_json(cls, data: Json, *, cluster_id: str | None = None) -> Product:
        """Parse one `/products` item; `price` and `spotPrice` may be ints or strings."""
        return cls(
            id=str(data.get("id") or ""),
            name=str(data.get("name") or ""),
            price_units=parse_int(data.get("price")) or 0,
            available_deploy=bool(data.get("availableDeploy")),
            regions=tuple(str(region) for region in _list(data.get("regions"))),
            # "0" means spot is not offered.
            spot_price_units=parse_int(data.get("spotPrice")) or None,
            inventory_state=parse_str(data.get("inventoryState")),
            can_buy=_parse_bool(data.get("canBuy")),
            billing_methods=tuple(str(method) for method in _list(data.get("billingMethods"))),
            cpu_per_gpu=parse_int(data.get("cpuPerGpu")),
            memory_per_gpu_gb=parse_int(data.get("memoryPerGpu")),
            disk_per_gpu_gb=parse_int(data.get("diskPerGpu")),
            min_rootfs_gb=parse_int(data.get("minRootFS")),
            max_rootfs_gb=parse_int(data.get("maxRootFS")),
            cluster_id=cluster_id,
        )

    @property
    def price_per_hour_usd(self) -> float:
        """On-demand USD per GPU-hour, for display and price caps."""
        return self.price_units / spec.PRICE_UNITS_PER_USD

    @property
    def spot_price_per_hour_usd(self) -> float | None:
        """Spot USD per GPU-hour, or None when spot is not offered."""
        return None if self.spot_price_units is None else self.spot_price_units / spec.PRICE_UNITS_PER_USD

    @property
    def in_stock(self) -> bool:
        """Deployable now per the listing (§13.8); a create can still fail with INSUFFICIENT_RESOURCE."""
        return (
            self.available_deploy
            and self.inventory_state != spec.INVENTORY_NONE
            and self.can_buy is not False
        )

    def offered_in(self, cluster: Cluster) -> bool:
        """Whether `regions` includes the cluster; an empty list means every cluster (§4)."""
        if not self.regions:
            return True
        wanted = {cluster.region_code, cluster.id.upper()}
        return any(region_code(region) in wanted for region in self.regions)


@dataclass(frozen=True)
class PortSpec:
    """One exposed container port; `type` is `http` or `tcp`."""

    port: int
    type: str = "http"

    def __str__(self) -> str:
        return f"{self.port}/{self.type}"


@dataclass(frozen=True)
class EnvVar:
    """One container environment variable; values often hold tokens, so they stay out of repr."""

    key: str
    value: str = field(repr=False)


@dataclass(frozen=True)
class PortMapping:
    """A port of a running instance; `endpoint` is absent in list answers (§6)."""

    port: int
    type: str
    endpoint: str | None = None


@dataclass(frozen=True)
class StatusError:
    """Novita's failure detail (`statusError`); there is no `failed` status (§8)."""

    state: str | None
    message: str


@dataclass(frozen=True)
class Instance:
    """A GPU instance as seen by get or list; `status` is a plain str so unknown values survive (§13.9)."""

    id: str
    name: str
    status: str
    cluster_id: str | None = None
    cluster_name: str | None = None
    product_id: str | None = None
    product_name: str | None = None
    gpu_num: int | None = None
    cpu_num: int | None = None
    memory_gb: int | None = None
    image_url: str | None = None
    rootfs_size_gb: int | None = None
    billing_mode: str | None = None
    spot_status: str | None = None
    port_mappings: tuple[PortMapping, ...] = ()
    status_error: StatusError | None = None
    ssh_command: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    stopped_at: datetime | None = None

    @classmethod
    def from_json(cls, data: Json) -> Instance:
        """Parse a get or list item; passwords in the connect components are deliberately dropped."""
        error = _mapping(data.get("statusError"))
        ssh = _mapping(data.get("connectComponentSSH"))
        return cls(
            id=str(data.get("id") or ""),
            name=str(data.get("name") or ""),
            status=str(data.get("status") or ""),
            cluster_id=parse_str(data.get("clusterId")),
            cluster_name=parse_str(data.get("clusterName")),
            product_id=parse_str(data.get("productId")),
            product_name=parse_str(data.get("productName")),
            gpu_num=parse_int(data.get("gpuNum")),
            cpu_num=parse_int(data.get("cpuNum")),
            memory_gb=parse_int(data.get("memory")),
            image_url=parse_str(data.get("imageUrl")),
            rootfs_size_gb=parse_int(data.get("rootfsSize")),
            billing_mode=parse_str(data.get("billingMode")),
            spot_status=parse_str(data.get("spotStatus")),
            port_mappings=tuple(
                PortMapping(
                    port=parse_int(item.get("port")) or 0,
                    type=str(item.get("type") or ""),
                    endpoint=parse_str(item.get("endpoint")),
                )
                for item in _list(data.get("portMappings"))
                if isinstance(item, Mapping)
            ),
            status_error=(
                StatusError(state=parse_str(error.get("state")), message=str(error["message"]))
                if error.get("message")
                else None
            ),
            # DOCS spells it `sshCommand`; another client of the live API reads `command`.
            ssh_command=parse_str(ssh.get("sshCommand")) or parse_str(ssh.get("command")),
            created_at=parse_unix_seconds(data.get("createdAt")),
            # The latest start and stop (the cost sweep bounds charges by them): `lastStartedAt` and
            # `lastStoppedAt` where Novita gives them (undocumented, §6), else `startedAt`/`stoppedAt`.
            started_at=parse_unix_seconds(data.get("lastStartedAt"))
            or parse_unix_seconds(data.get("startedAt")),
            stopped_at=parse_unix_seconds(data.get("lastStoppedAt"))
            or parse_unix_seconds(data.get("stoppedAt")),
        )

    @property
    def is_known_status(self) -> bool:
        """False for statuses outside §8; callers should treat those as transient."""
        return self.status in spec.KNOWN_STATUSES

    @property
    def is_running(self) -> bool:
        """Ready to serve."""
        return self.status in spec.READY_STATUSES

    @property
    def is_exited(self) -> bool:
        """Stopped (by request, by a failed pull, or by a spot reclaim)."""
        return self.status in spec.STOPPED_STATUSES

    @property
    def is_being_removed(self) -> bool:
        """Deleted or on the way to it; do not reuse such an instance."""
        return self.status in spec.REMOVAL_STATUSES

    @property
    def is_gone(self) -> bool:
        """Removed for good (§13.11 lists the other ways "gone" shows up, which raise NotFound)."""
        return self.status in spec.GONE_STATUSES

    @property
    def has_failed(self) -> bool:
        """A non-empty `statusError` is Novita's only failure signal."""
        return self.status_error is not None

    def endpoint_for(self, port: int) -> str | None:
        """The public endpoint of a container port, once Novita has assigned one."""
        return next((m.endpoint for m in self.port_mappings if m.port == port and m.endpoint), None)


@dataclass(frozen=True)
class Template:
    """A template; in Novita's JSON `Id` is capitalised and `imageAuth` is a registry-auth *id* (§9)."""

    id: str
    name: str
    image: str
    image_auth_id: str | None = None
    start_command: str | None = None
    entrypoint: str | None = None
    rootfs_size_gb: int | None = None
    ports: tuple[PortSpec, ...] = ()
    envs: tuple[EnvVar, ...] = field(default=(), repr=False)
    min_cuda_version: str | None = None
    channel: str | None = None
    created_at: datetime | None = None

    @classmethod
    def from_json(cls, data: Json) -> Template:
        """Parse the `template` object of `GET /template`, flattening its `{type, ports:[...]}` groups."""
        return cls(
            id=str(data.get("Id") or data.get("id") or ""),
            name=str(data.get("name") or ""),
            image=str(data.get("image") or ""),
            image_auth_id=parse_str(data.get("imageAuth")),
            start_command=parse_str(data.get("startCommand")),
            entrypoint=parse_str(data.get("entrypoint")),
            rootfs_size_gb=parse_int(data.get("rootfsSize")),
            ports=tuple(
                PortSpec(port=parse_int(port) or 0, type=str(group.get("type") or "http"))
                for group in _list(data.get("ports"))
                if isinstance(group, Mapping)
                for port in _list(group.get("ports"))
            ),
            envs=tuple(
                EnvVar(key=str(env.get("key") or ""), value=str(env.get("value") or ""))
                for env in _list(data.get("envs"))
                if isinstance(env, Mapping)
            ),
            min_cuda_version=parse_str(data.get("minCudaVersion")),
            channel=parse_str(data.get("channel")),
            created_at=parse_unix_seconds(data.get("createdAt")),
        )


@dataclass(frozen=True)
class RegistryAuth:
    """Container registry credentials; Novita returns the password in plaintext, so it stays out of repr."""

    id: str
    name: str
    username: str
    password: str = field(repr=False)

    @classmethod
    def from_json(cls, data: Json) -> RegistryAuth:
        """Parse one `/repository/auths` item."""
        return cls(
            id=str(data.get("id") or ""),
            name=str(data.get("name") or ""),
            username=str(data.get("username") or ""),
            password=str(data.get("password") or ""),
        )

    @property
    def credential(self) -> str:
        """The `username:password` form that create-instance wants in `imageAuth` (§13.1)."""
        return f"{self.username}:{self.password}"
