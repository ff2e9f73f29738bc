"""Seed data for the simulator, drawn from real values (§14) and shaped to exercise the client's quirks.

Chosen on purpose: several products share the name "RTX 4090 24GB" at different prices and in different
clusters; RTX 5090 is always out of stock; H100 exists in one cluster only; RTX 3090 has an empty `regions`
list (meaning every cluster); `regions` entries come in the display, bare-code and bare-id formats; one
price is a string; one template needs a private registry auth.

Section numbers (§) cite docs/novita-api.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any


@dataclass(frozen=True)
class ClusterSeed:
    """A cluster: `id` is the slug sent as clusterId, `name` the display code products refer to."""

    id: str
    name: str
    city: str
    supports_network_storage: bool = True


@dataclass(frozen=True)
class ProductSeed:
    """A product and its GPU capacity per cluster id; an empty `regions` listing means every cluster."""

    id: str
    name: str
    # Sent exactly as stored: an int, or a string where Novita was seen sending one (§4).
    price: int | str
    spot_price: str
    capacity_gpus: Mapping[str, int]
    # How `regions` is rendered: "display" ("CN-HK-01 (Hong Kong)"), "code" ("CN-HK-01"), "id", "all" ([]).
    region_style: str = "display"
    billing_methods: tuple[str, ...] = ("onDemand", "spot", "monthly")
    cpu_per_gpu: int = 16
    memory_per_gpu_gb: int = 62
    disk_per_gpu_gb: int = 500
    min_rootfs_gb: int = 10
    max_rootfs_gb: int = 1000
    monthly_price: tuple[Mapping[str, int], ...] = ()


CLUSTERS = (
    ClusterSeed("as-sgp-2", "AS-SGP-02", "Singapore"),
    ClusterSeed("us-ca-6", "US-CA-06", "California"),
    ClusterSeed("cn-hongkong-1", "CN-HK-01", "Hong Kong", supports_network_storage=False),
    ClusterSeed("eu-ger-2", "EU-GER-02", "Germany"),
)

_EVERY_CLUSTER = {cluster.id: 2 for cluster in CLUSTERS}

PRODUCTS = (
    ProductSeed(
        "4090.16c62g",
        "RTX 4090 24GB",
        35000,
        "18000",
        {"as-sgp-2": 4, "us-ca-6": 4, "cn-hongkong-1": 2},
        monthly_price=({"price": 22680000, "month": 1}, {"price": 18900000, "month": 12}),
    ),
    ProductSeed(
        "4090.hd.16c62g",
        "RTX 4090 24GB",
        "28000",
        "0",
        {"us-ca-6": 2, "eu-ger-2": 2},
        billing_methods=("onDemand",),
    ),
    ProductSeed("26", "RTX 4090 24GB", 67000, "0", {"eu-ger-2": 4, "cn-hongkong-1": 4}, region_style="code"),
    ProductSeed("5090.16c120g", "RTX 5090 32GB", 50000, "25000", {"as-sgp-2": 0, "us-ca-6": 0}),
    ProductSeed(
        "H100-80GB.16c128g",
        "H100 SXM 80GB",
        145000,
        "73000",
        {"us-ca-6": 8},
        cpu_per_gpu=16,
        memory_per_gpu_gb=128,
    ),
    ProductSeed("3090.16c92g", "RTX 3090 24GB", 21000, "0", _EVERY_CLUSTER, region_style="all"),
    ProductSeed(
        "L40S.28c125g", "L40S 48GB", 55000, "0", {"eu-ger-2": 2, "cn-hongkong-1": 2}, region_style="id"
    ),
)

REGISTRY_AUTH_ID = "75irlsvvsehnqdajg2r481mjk54ecodc"
REGISTRY_AUTHS = (
    MappingProxyType(
        {"id": REGISTRY_AUTH_ID, "name": "acme", "username": "acme-bot", "password": "acme-registry-pw"}
    ),
)

# Images under this prefix only pull with the matching registry auth (by id or as "username:password").
PRIVATE_IMAGE_PREFIXES = MappingProxyType({"registry.example.com/acme/": REGISTRY_AUTH_ID})

PUBLIC_TEMPLATE_ID = "1"
PRIVATE_TEMPLATE_ID = "2"

TEMPLATES: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        PUBLIC_TEMPLATE_ID: {
            "Id": PUBLIC_TEMPLATE_ID,
            "name": "pytorch-jupyter",
            "readme": "PyTorch with Jupyter",
            "type": "instance",
            "channel": "official",
            "image": "pytorch/pytorch:2.3.0-cuda12.1-cudnn8-runtime",
            "imageAuth": "",
            "startCommand": "",
            "entrypoint": "",
            "rootfsSize": 30,
            "ports": [{"type": "http", "ports": [8888, 8000]}, {"type": "tcp", "ports": [22]}],
            "envs": [{"key": "JUPYTER_TOKEN", "value": "novita"}],
            "tools": [
                {"name": "Jupyter", "describe": "Start Jupyter Notebook", "port": 8888, "type": "http"}
            ],
            "createdAt": "1713162260",
            "recommendCards": [{"gpuSpecId": "4090.18c.60g", "cardNum": "1"}],
            "minCudaVersion": "12.1",
        },
        PRIVATE_TEMPLATE_ID: {
            "Id": PRIVATE_TEMPLATE_ID,
            "name": "acme-worker",
            "readme": "",
            "type": "instance",
            "channel": "private",
            "image": "registry.example.com/acme/worker:1.0",
            "imageAuth": REGISTRY_AUTH_ID,
            "startCommand": "python -m worker",
            "entrypoint": "",
            "rootfsSize": 40,
            "ports": [{"type": "http", "ports": [8080]}],
            "envs": [],
            "tools": [],
            "createdAt": "1713162300",
            "recommendCards": [{"gpuSpecId": "4090.18c.60g", "cardNum": "2"}],
            "minCudaVersion": "",
        },
    }
)

# `GET /cpu/products` items ([T] PWSDK: the shape is not documented; fields follow the GPU products').
CPU_PRODUCTS: tuple[Mapping[str, Any], ...] = (
    MappingProxyType(
        {
            "id": "cpu.4c8g",
            "name": "CPU 4 vCPU 8GB",
            "cpuNum": 4,
            "memorySize": 8,
            "price": 4000,
            "regions": ["AS-SGP-02 (Singapore)", "US-CA-06 (California)"],
            "availableDeploy": True,
        }
    ),
    MappingProxyType(
        {
            "id": "cpu.16c32g",
            "name": "CPU 16 vCPU 32GB",
            "cpuNum": 16,
            "memorySize": 32,
            "price": 16000,
            "regions": ["US-CA-06 (California)"],
            "availableDeploy": True,
        }
    ),
)
