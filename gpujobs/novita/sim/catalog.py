"""The simulator's catalogue: clusters, products with per-cluster GPU capacity, and registry auths.

Capacity is counted in GPUs per (product, cluster). `/products` derives `availableDeploy` and
`inventoryState` from it (docs/novita-api.md §15), creates and starts acquire it, and entering `exited` or
`removed` frees it. Callers hold the simulator lock; this class does no locking of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gpujobs.novita import spec
from gpujobs.novita.sim import seed
from gpujobs.novita.sim.faults import Faults
from gpujobs.novita.sim.validation import SimApiError, invalid

# inventoryState thresholds, in free GPUs.
INVENTORY_LOW_MAX_GPUS = 2
INVENTORY_NORMAL_MAX_GPUS = 8


def inventory_state(free_gpus: int) -> str:
    """Map free GPUs to Novita's coarse stock levels."""
    if free_gpus <= 0:
        return spec.INVENTORY_NONE
    if free_gpus <= INVENTORY_LOW_MAX_GPUS:
        return "low"
    return "normal" if free_gpus <= INVENTORY_NORMAL_MAX_GPUS else "high"


class Catalog:
    """Seed data plus mutable capacity."""

    def __init__(self, faults: Faults) -> None:
        self._faults = faults
        self.clusters = {cluster.id: cluster for cluster in seed.CLUSTERS}
        self.products = {product.id: product for product in seed.PRODUCTS}
        self.auths: dict[str, Mapping[str, str]] = {auth["id"]: auth for auth in seed.REGISTRY_AUTHS}
        self.reset()

    def reset(self) -> None:
        """Restore the seeded capacity."""
        self._free = {
            (product.id, cluster_id): gpus
            for product in seed.PRODUCTS
            for cluster_id, gpus in product.capacity_gpus.items()
        }

    def free_gpus(self, product_id: str, cluster_id: str) -> int:
        """Free GPUs now; zero in an injected out-of-stock cluster."""
        if cluster_id in self._faults.out_of_stock_clusters:
            return 0
        return self._free.get((product_id, cluster_id), 0)

    def offers(self, product_id: str, cluster_id: str) -> bool:
        """Whether the product exists in the cluster at all (free or not)."""
        return (product_id, cluster_id) in self._free

    def set_capacity(self, product_id: str, cluster_id: str, gpus: int) -> None:
        """Set free GPUs, e.g. to exhaust a cluster in a test."""
        if product_id not in self.products or cluster_id not in self.clusters:
            raise ValueError(f"unknown product {product_id!r} or cluster {cluster_id!r}")
        self._free[(product_id, cluster_id)] = gpus

    def acquire(self, product_id: str, cluster_id: str, gpus: int) -> None:
        """Take GPUs or answer 400 INSUFFICIENT_RESOURCE."""
        if self.free_gpus(product_id, cluster_id) < gpus:
            raise SimApiError(
                "INSUFFICIENT_RESOURCE", f"insufficient resource for {product_id} in cluster {cluster_id}"
            )
        self._free[(product_id, cluster_id)] -= gpus

    def release(self, product_id: str, cluster_id: str, gpus: int) -> None:
        """Give GPUs back."""
        self._free[(product_id, cluster_id)] += gpus

    def product(self, product_id: str) -> seed.ProductSeed:
        """A product by id, or 400 VALIDATOR_PARAM."""
        if product_id not in self.products:
            raise invalid(f"unknown productId {product_id!r}")
        return self.products[product_id]

    def cluster(self, cluster_id: str) -> seed.ClusterSeed:
        """A cluster by id, or 400 VALIDATOR_PARAM."""
        if cluster_id not in self.clusters:
            raise invalid(f"unknown clusterId {cluster_id!r}")
        return self.clusters[cluster_id]

    def clusters_json(self) -> list[dict[str, Any]]:
        """`/clusters` items."""
        return [
            {
                "id": cluster.id,
                "name": cluster.name,
                "availableGpuType": sorted(
                    {p.name for p in self.products.values() if self.offers(p.id, cluster.id)}
                ),
                "supportNetworkStorage": cluster.supports_network_storage,
                "supportInstanceNetwork": False,
            }
            for cluster in self.clusters.values()
        ]

    def _regions(self, product: seed.ProductSeed) -> list[str]:
        clusters = [self.clusters[cluster_id] for cluster_id in product.capacity_gpus]
        if product.region_style == "all":
            return []
        if product.region_style == "code":
            return [cluster.name for cluster in clusters]
        if product.region_style == "id":
            return [cluster.id for cluster in clusters]
        return [f"{cluster.name} ({cluster.city})" for cluster in clusters]

    def products_json(self, query: Mapping[str, str]) -> list[dict[str, Any]]:
        """`/products` items, filtered by productName (fuzzy), clusterId, gpuNum and billingMethod (§4)."""
        name = query.get("productName", "").lower()
        cluster_id = query.get("clusterId", "")
        billing_method = query.get("billingMethod", "")
        gpu_num = query.get("gpuNum", "")
        if gpu_num and not gpu_num.isdigit():
            raise invalid("gpuNum must be an integer")
        wanted_gpus = max(int(gpu_num or 1), 1)
        items = []
        for product in self.products.values():
            scope = [cluster_id] if cluster_id else list(product.capacity_gpus)
            if name not in product.name.lower() or not any(self.offers(product.id, c) for c in scope):
                continue
            if billing_method and billing_method not in product.billing_methods:
                continue
            most_free = max(self.free_gpus(product.id, c) for c in scope)
            items.append(self._product_json(product, most_free, deployable=most_free >= wanted_gpus))
        return items

    def _product_json(self, product: seed.ProductSeed, free_gpus: int, *, deployable: bool) -> dict[str, Any]:
        return {
            "id": product.id,
            "name": product.name,
            "cpuPerGpu": product.cpu_per_gpu,
            "memoryPerGpu": product.memory_per_gpu_gb,
            "diskPerGpu": product.disk_per_gpu_gb,
            "availableDeploy": deployable,
            "canBuy": deployable,
            "minRootFS": product.min_rootfs_gb,
            "maxRootFS": product.max_rootfs_gb,
            "minLocalStorage": 1,
            "maxLocalStorage": product.disk_per_gpu_gb,
            "regions": self._regions(product),
            "price": product.price,
            "monthlyPrice": [dict(item) for item in product.monthly_price],
            "billingMethods": list(product.billing_methods),
            "spotPrice": product.spot_price,
            "inventoryState": inventory_state(free_gpus),
        }

    def auths_json(self) -> list[dict[str, Any]]:
        """`/repository/auths` items, password in plaintext as in the official example (§11)."""
        return [dict(auth) for auth in self.auths.values()]

    def pull_succeeds(self, image_url: str, image_auth: str, image_auth_id: str) -> bool:
        """A private image pulls only with its registry auth, by id or as "username:password"."""
        for prefix, auth_id in seed.PRIVATE_IMAGE_PREFIXES.items():
            if image_url.startswith(prefix):
                auth = self.auths[auth_id]
                return image_auth_id == auth_id or image_auth == f"{auth['username']}:{auth['password']}"
        return True
