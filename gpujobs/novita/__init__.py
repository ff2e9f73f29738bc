"""Novita.ai GPU-instance API: a typed client, its error classes, and (in `simulator`) a local imitation."""

from __future__ import annotations

from gpujobs.novita.client import NovitaClient
from gpujobs.novita.create_request import CreateInstanceRequest, NetworkStorageMount
from gpujobs.novita.errors import (
    AccountLimitError,
    ClusterUnavailableError,
    CreateOutcomeUnknownError,
    InsufficientResourceError,
    InvalidRequestError,
    InvalidStateError,
    NovitaAuthError,
    NovitaConnectionError,
    NovitaError,
    NovitaNotFoundError,
    NovitaPermanentError,
    NovitaProtocolError,
    NovitaServerError,
    NovitaTransientError,
    PlacementError,
    RateLimitedError,
)
from gpujobs.novita.types import (
    Cluster,
    EnvVar,
    Instance,
    PortMapping,
    PortSpec,
    Product,
    RegistryAuth,
    StatusError,
    Template,
)

__all__ = [
    "AccountLimitError",
    "Cluster",
    "ClusterUnavailableError",
    "CreateInstanceRequest",
    "CreateOutcomeUnknownError",
    "EnvVar",
    "Instance",
    "InsufficientResourceError",
    "InvalidRequestError",
    "InvalidStateError",
    "NetworkStorageMount",
    "NovitaAuthError",
    "NovitaClient",
    "NovitaConnectionError",
    "NovitaError",
    "NovitaNotFoundError",
    "NovitaPermanentError",
    "NovitaProtocolError",
    "NovitaServerError",
    "NovitaTransientError",
    "PlacementError",
    "PortMapping",
    "PortSpec",
    "Product",
    "RateLimitedError",
    "RegistryAuth",
    "StatusError",
    "Template",
]
