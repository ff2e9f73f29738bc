"""The create-instance request (§5), built from typed fields and serialised with Novita's exact quirks.

Quirks handled here so no caller has to remember them: `ports` is a comma string, `imageAuth` is
`"username:password"` while a registry-auth *id* goes in `imageAuthId`, network storages use a capital
`Id`, and `kind` is always sent. Registry credentials and env values are kept out of `repr`.

Section numbers (§) cite docs/novita-api.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gpujobs.novita.types import EnvVar, PortSpec, Template


@dataclass(frozen=True)
class NetworkStorageMount:
    """A network storage to mount; it must live in the instance's cluster."""

    id: str
    mount_point: str = "/network"


@dataclass(frozen=True)
class CreateInstanceRequest:
    """Everything `POST /gpu/instance/create` needs; set `cluster_id`, as empty means a random cluster."""

    name: str
    product_id: str
    image_url: str
    rootfs_size_gb: int
    gpu_num: int = 1
    cluster_id: str | None = None
    # "username:password" for a private registry; prefer image_auth_id when an auth is stored at Novita.
    image_auth: str | None = field(default=None, repr=False)
    image_auth_id: str | None = None
    ports: tuple[PortSpec, ...] = ()
    envs: tuple[EnvVar, ...] = field(default=(), repr=False)
    command: str | None = None
    entrypoint: str | None = None
    kind: str = "gpu"
    billing_mode: str = "onDemand"
    min_cuda_version: str | None = None
    network_storages: tuple[NetworkStorageMount, ...] = ()

    @classmethod
    def from_template(
        cls,
        template: Template,
        *,
        name: str,
        product_id: str,
        cluster_id: str,
        gpu_num: int = 1,
        rootfs_size_gb: int | None = None,
        image_auth: str | None = None,
    ) -> CreateInstanceRequest:
        """Map a template to a create request (§9); its `imageAuth` is an auth id, sent as `imageAuthId`."""
        return cls(
            name=name,
            product_id=product_id,
            cluster_id=cluster_id,
            gpu_num=gpu_num,
            image_url=template.image,
            rootfs_size_gb=rootfs_size_gb or template.rootfs_size_gb or 0,
            # A resolved "user:pass" makes the auth id redundant; sending both would be ambiguous.
            image_auth=image_auth,
            image_auth_id=None if image_auth else template.image_auth_id,
            ports=template.ports,
            envs=template.envs,
            command=template.start_command,
            entrypoint=template.entrypoint,
            min_cuda_version=template.min_cuda_version,
        )

    def to_json(self) -> dict[str, Any]:
        """The camelCase body; optional fields are omitted rather than sent empty."""
        body: dict[str, Any] = {
            "name": self.name,
            "productId": self.product_id,
            "imageUrl": self.image_url,
            "rootfsSize": self.rootfs_size_gb,
            "kind": self.kind,
            "billingMode": self.billing_mode,
        }
        if self.kind == "gpu":
            body["gpuNum"] = self.gpu_num
        optional = {
            "clusterId": self.cluster_id,
            "imageAuth": self.image_auth,
            "imageAuthId": self.image_auth_id,
            "ports": ",".join(str(port) for port in self.ports),
            "envs": [{"key": env.key, "value": env.value} for env in self.envs],
            "command": self.command,
            "entrypoint": self.entrypoint,
            "minCudaVersion": self.min_cuda_version,
            "networkStorages": [
                {"Id": mount.id, "mountPoint": mount.mount_point} for mount in self.network_storages
            ],
        }
        body.update({key: value for key, value in optional.items() if value})
        return body
