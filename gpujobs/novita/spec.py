"""One description of the Novita GPU-instance API, shared by the client and the simulator.

Everything here is taken from docs/novita-api.md (its section numbers in comments). The client
and the simulator both import these names, so a path, a status or an error reason cannot drift between
the code that speaks the API and the code that imitates it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import MappingProxyType

# §1: every endpoint lives under this prefix.
BASE_PATH = "/gpu-instance/openapi/v1"
PRODUCTION_BASE_URL = "https://api.novita.ai" + BASE_PATH

# §2: endpoint paths, relative to BASE_PATH. Reads are GET, every mutation is POST with a JSON body.
CLUSTERS_PATH = "/clusters"
PRODUCTS_PATH = "/products"
INSTANCE_CREATE_PATH = "/gpu/instance/create"
INSTANCE_PATH = "/gpu/instance"
INSTANCES_PATH = "/gpu/instances"
INSTANCE_START_PATH = "/gpu/instance/start"
INSTANCE_STOP_PATH = "/gpu/instance/stop"
INSTANCE_RESTART_PATH = "/gpu/instance/restart"
INSTANCE_DELETE_PATH = "/gpu/instance/delete"
INSTANCE_MIGRATE_PATH = "/gpu/instance/migrate"
TEMPLATE_PATH = "/template"
REGISTRY_AUTHS_PATH = "/repository/auths"
CPU_PRODUCTS_PATH = "/cpu/products"
INSTANCE_EDIT_PATH = "/gpu/instance/edit"
# §2: [T] paths from PWSDK; bodies {instanceId, imageUrl, envs?, command?} and {instanceId, month}.
INSTANCE_UPGRADE_PATH = "/gpu/instance/upgrade"
INSTANCE_RENEW_PATH = "/gpu/instance/renewInstance"
INSTANCE_TO_MONTHLY_PATH = "/gpu/instance/transToMonthlyInstance"
TEMPLATES_PATH = "/templates"
TEMPLATE_CREATE_PATH = "/template/create"
TEMPLATE_DELETE_PATH = "/template/delete"
REGISTRY_AUTH_SAVE_PATH = "/repository/auth/save"
REGISTRY_AUTH_DELETE_PATH = "/repository/auth/delete"
# §10: [T] paths from PWSDK and MCP (CNOVITA lists at `/networkstorages`; the sources conflict).
NETWORK_STORAGES_PATH = "/networkstorages/list"
NETWORK_STORAGE_CREATE_PATH = "/networkstorage/create"
NETWORK_STORAGE_UPDATE_PATH = "/networkstorage/update"
NETWORK_STORAGE_DELETE_PATH = "/networkstorage/delete"

# §2, §7, §9: query and body parameter names that differ between sources; these are the documented ones.
INSTANCE_ID_PARAM = "instanceId"
TEMPLATE_ID_PARAM = "templateId"
PAGE_NUM_PARAM = "pageNum"
PAGE_SIZE_PARAM = "pageSize"

# §4: prices are integers in 1/100,000 USD per hour (35000 == $0.35/h), per GPU.
PRICE_UNITS_PER_USD = 100_000

# §5: create-instance constraints. The simulator enforces them; the real API is the authority.
GPU_NUM_MIN = 1
GPU_NUM_MAX = 8
ROOTFS_MIN_GB = 10
ROOTFS_MAX_GB = 6144
RESERVED_PORTS = frozenset({2222, 2223, 2224})
MAX_PORTS_PLUS_TOOLS = 15
MAX_ENVS = 100
MAX_ENV_KEY_CHARS = 511
MAX_ENV_VALUE_CHARS = 4095
MAX_NAME_CHARS = 255
MAX_IMAGE_URL_CHARS = 500
MAX_COMMAND_CHARS = 2047
MAX_NETWORK_STORAGES = 30
PORT_TYPES = frozenset({"tcp", "http"})
INSTANCE_KINDS = frozenset({"gpu", "cpu"})
BILLING_MODES = frozenset({"onDemand", "monthly", "spot"})
# §5: `autoRenewMonth` and the months a subscription is bought or renewed for.
MONTHS_MIN = 1
MONTHS_MAX = 12

# §9: template channels, and the most ports one template port group holds.
TEMPLATE_CHANNELS = frozenset({"official", "community", "private"})
MAX_TEMPLATE_PORTS_PER_GROUP = 10
# §11 (MCP caps): registry-auth field lengths.
MAX_AUTH_NAME_CHARS = 255
MAX_AUTH_USERNAME_CHARS = 511
MAX_AUTH_PASSWORD_CHARS = 1024

# §4: inventoryState is `none` (out of stock), `low`, `normal` or `high`.
INVENTORY_NONE = "none"


class Status(enum.StrEnum):
    """Instance status values (§8). `pending` is undocumented but observed; others may appear."""

    PENDING = "pending"
    TO_CREATE = "toCreate"
    CREATING = "creating"
    PULLING = "pulling"
    RUNNING = "running"
    TO_START = "toStart"
    STARTING = "starting"
    TO_STOP = "toStop"
    STOPPING = "stopping"
    EXITED = "exited"
    TO_RESTART = "toRestart"
    RESTARTING = "restarting"
    TO_REMOVE = "toRemove"
    REMOVING = "removing"
    REMOVED = "removed"
    TO_RESET = "toReset"
    RESETTING = "resetting"
    MIGRATING = "migrating"
    FREEZING = "freezing"


KNOWN_STATUSES = frozenset(status.value for status in Status)
READY_STATUSES = frozenset({Status.RUNNING.value})
STOPPED_STATUSES = frozenset({Status.EXITED.value})
# Once an instance is in one of these it is on its way out; `removed` is terminal (§7, §8).
REMOVAL_STATUSES = frozenset({Status.TO_REMOVE.value, Status.REMOVING.value, Status.REMOVED.value})
GONE_STATUSES = frozenset({Status.REMOVED.value})

# §8 "likely transitions": the transient phases each action walks through before its steady status.
CREATE_PHASES = (Status.PENDING, Status.TO_CREATE, Status.CREATING, Status.PULLING)
START_PHASES = (Status.TO_START, Status.STARTING)
STOP_PHASES = (Status.TO_STOP, Status.STOPPING)
RESTART_PHASES = (Status.TO_RESTART, Status.RESTARTING)
DELETE_PHASES = (Status.TO_REMOVE, Status.REMOVING)
RESET_PHASES = (Status.TO_RESET, Status.RESETTING)

# §8, §13: the message Novita answers a start/stop in the wrong state with; the reason is unknown.
INVALID_STATE_CHANGE_MESSAGE = "invalid state change"


class ErrorKind(enum.Enum):
    """How a caller should react to an error reason; the client maps each kind to one exception class."""

    AUTH = "auth"
    RATE_LIMIT = "rate_limit"
    SERVER = "server"
    NOT_FOUND = "not_found"
    INVALID_REQUEST = "invalid_request"
    INVALID_STATE = "invalid_state"
    INSUFFICIENT_RESOURCE = "insufficient_resource"
    CLUSTER_UNAVAILABLE = "cluster_unavailable"
    ACCOUNT_LIMIT = "account_limit"


@dataclass(frozen=True)
class ErrorReason:
    """A documented `reason` value: the HTTP status it comes with and how to react to it."""

    http_status: int
    kind: ErrorKind


def _reasons(http_status: int, kind: ErrorKind, *names: str) -> dict[str, ErrorReason]:
    return {name: ErrorReason(http_status, kind) for name in names}


# §12: the GPU error table, plus INVALID_API_KEY which Novita's other APIs answer on a bad key.
ERROR_REASONS = MappingProxyType(
    {
        **_reasons(401, ErrorKind.AUTH, "UNAUTHORIZED"),
        **_reasons(403, ErrorKind.AUTH, "FORBIDDEN", "INVALID_API_KEY"),
        **_reasons(429, ErrorKind.RATE_LIMIT, "RATE_LIMIT_EXCEEDED"),
        **_reasons(500, ErrorKind.SERVER, "UNKNOWN"),
        **_reasons(400, ErrorKind.NOT_FOUND, "RESOURCE_NOT_FOUND", "TEMPLATE_NOT_FOUND"),
        **_reasons(
            400,
            ErrorKind.INVALID_REQUEST,
            "VALIDATOR_PARAM",
            "REQUEST",
            "INVALID_COMMAND_PARAM",
            "UNSUPPORTED_BILLING_MODE",
            "IMAGE_NOT_FOUND",
            "NETWORK_NOT_FOUND",
            "NETWORK_STORAGE_NOT_FOUND",
            "CUR_CLUSTER_NETWORK_STORAGE_NOT_SUPPORT",
            "TEMPLATE_IS_PRIVATE",
        ),
        **_reasons(
            400,
            ErrorKind.INVALID_STATE,
            "CONFLICT",
            "DEPENDENT_RESOURCE_STATE",
            "PREPAID_INSTANCE_NOT_SUPPORT_RELEASE",
            "CREATING_INSTANCE_NOT_SUPPORT_RENEWAL",
            "NETWORK_STORAGE_IN_USE",
            "IMAGE_AUTH_IN_USE",
        ),
        **_reasons(
            400, ErrorKind.INSUFFICIENT_RESOURCE, "INSUFFICIENT_RESOURCE", "MIGRATE_INSUFFICIENT_RESOURCE"
        ),
        **_reasons(400, ErrorKind.CLUSTER_UNAVAILABLE, "CLUSTER_STATUS", "NODE_STATUS"),
        **_reasons(
            400,
            ErrorKind.ACCOUNT_LIMIT,
            "OPERATION_LIMIT",
            "BALANCE_NOT_ENOUGH",
            "EXPIRED_OR_BALANCE_NOT_ENOUGH",
            "CREATE_INSTANCE_LIMIT",
        ),
    }
)

# §12: statuses worth retrying; 400/401/403 never are.
RETRYABLE_HTTP_STATUSES = frozenset({429, 500, 502, 503, 504})
