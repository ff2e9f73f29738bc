"""Instance JSON for the simulator: one builder for get and list, with the documented differences (§6).

Numbers arrive as strings where DOCS says so (`gpuNum`, `cpuNum`, `memory`); list items carry
`volumeMounts[].size` as a string and `portMappings` without `endpoint`; empty strings stand in for null.

Section numbers (§) cite docs/novita-api.md.
"""

from __future__ import annotations

import zlib
from typing import Any

from gpujobs.novita.sim.lifecycle import SimInstance

FREE_STORAGE_GB = 60
KEEP_DATA_DAYS = 15
# Public TCP ports are derived from the instance id so they stay stable across reads.
TCP_PUBLIC_PORT_BASE = 30000
TCP_PUBLIC_PORT_SPAN = 30000


def _unix(value: float | None) -> str:
    return str(int(value)) if value else ""


def _port_mapping(instance: SimInstance, port: int, kind: str, *, for_list: bool) -> dict[str, Any]:
    mapping: dict[str, Any] = {"port": port, "type": kind}
    if for_list:
        return mapping
    cluster_id = instance.cluster.id
    if kind == "http":
        mapping["endpoint"] = f"https://{instance.id}-{port}.{cluster_id}.gpu-instance.novita.ai"
    else:
        public_port = (
            TCP_PUBLIC_PORT_BASE + zlib.crc32(f"{instance.id}:{port}".encode()) % TCP_PUBLIC_PORT_SPAN
        )
        mapping["endpoint"] = f"proxy.{cluster_id}.gpu-instance.novita.ai:{public_port}"
    return mapping


def instance_json(instance: SimInstance, *, for_list: bool, run_times: bool = True) -> dict[str, Any]:
    """The superset instance object both endpoints return."""
    params = instance.params
    product = instance.product
    size_gb = params.rootfs_size_gb
    running = instance.status == "running"
    ssh_port = TCP_PUBLIC_PORT_BASE + zlib.crc32(instance.id.encode()) % TCP_PUBLIC_PORT_SPAN
    error_state, error_message = instance.status_error or ("", "")
    return {
        "id": instance.id,
        "name": instance.name,
        "clusterId": instance.cluster.id,
        "clusterName": instance.cluster.name,
        "status": instance.status,
        "statusError": {"state": error_state, "message": error_message},
        "imageUrl": params.image_url,
        "imageAuthId": params.image_auth_id,
        "command": params.command,
        "entrypoint": params.entrypoint,
        "cpuNum": str(product.cpu_per_gpu * instance.gpu_num),
        "memory": str(product.memory_per_gpu_gb * instance.gpu_num),
        "gpuNum": str(instance.gpu_num),
        "productId": product.id,
        "productName": product.name,
        "rootfsSize": size_gb,
        "kind": params.kind,
        "billingMode": params.billing_mode,
        "spotStatus": instance.spot_status,
        "spotReclaimTime": "0",
        "endTime": "-1",
        "freeStorageSize": FREE_STORAGE_GB,
        "keepDataDay": KEEP_DATA_DAYS,
        "network": {"id": "", "ip": ""},
        "portMappings": [
            _port_mapping(instance, port, kind, for_list=for_list) for port, kind in params.ports
        ],
        "volumeMounts": [
            {"type": "local", "size": str(size_gb) if for_list else size_gb, "id": "", "mountPath": "/"},
            *(
                {"type": "network", "size": "0" if for_list else 0, "id": storage_id, "mountPath": "/network"}
                for storage_id in params.network_storage_ids
            ),
        ],
        "node": [{"maxRootfsSize": product.max_rootfs_gb}],
        "jobs": [],
        "envs": [{"key": key, "value": value} for key, value in params.envs],
        "connectComponentSSH": {
            "sshCommand": f"ssh -p {ssh_port} root@proxy.{instance.cluster.id}.gpu-instance.novita.ai",
            "password": instance.ssh_password,
            "isRunning": running,
        },
        "connectComponentLog": {"systemLogAddress": "", "instanceLogAddress": "", "isRunning": running},
        "templateId": "",
    } | (
        {
            "createdAt": _unix(instance.created_at),
            "startedAt": _unix(instance.started_at),
            "stoppedAt": _unix(instance.stopped_at),
        }
        if run_times
        else {}
    )
