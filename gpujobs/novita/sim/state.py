"""The simulator's mutable world: instances, their lifecycles, capacity, and the ledger of calls.

Every public method takes the one re-entrant lock, so the threaded HTTP server can serve many pollers at
once. Instances are never forgotten: after deletion they stay in the ledger (`instances_ledger`) and, for
`removed_grace_seconds`, in get/list as `removed`.
"""

from __future__ import annotations

import dataclasses
import random
import secrets
import threading
from collections.abc import Callable, Mapping
from typing import Any

from gpujobs.novita import spec
from gpujobs.novita.sim.account import Account
from gpujobs.novita.sim.catalog import Catalog
from gpujobs.novita.sim.config import SimulatorConfig
from gpujobs.novita.sim.faults import Faults
from gpujobs.novita.sim.lifecycle import Lifecycle, Phase, SimInstance
from gpujobs.novita.sim.render import instance_json
from gpujobs.novita.sim.validation import (
    SimApiError,
    invalid,
    validate_create,
    validate_edit,
    validate_months,
    validate_upgrade,
)

SPOT = "spot"
# spotStatus once a reclaim has taken the instance (§6); only such an instance can be migrated.
TERMINATED = "terminated"


class SimState:
    """Instances, capacity and ledger behind one lock; raises SimApiError for Novita-style error answers."""

    def __init__(self, config: SimulatorConfig, clock: Callable[[], float], faults: Faults) -> None:
        self.lock = threading.RLock()
        self.config = config
        self.clock = clock
        self.faults = faults
        self.catalog = Catalog(faults)
        self.account = Account(self.catalog, clock)
        self.lifecycle = Lifecycle(
            config.seconds_for, include_pending=config.include_pending, release=self._release
        )
        self.reset()

    def reset(self) -> None:
        """Back to the seed: capacity restored, no instances, empty ledger, no faults."""
        with self.lock:
            self.faults.reset(self.config.seed)
            self.catalog.reset()
            self.account.reset()
            self._instances: dict[str, SimInstance] = {}
            self._calls: list[dict[str, Any]] = []
            self._rng = random.Random(self.config.seed)

    def _release(self, instance: SimInstance) -> None:
        if instance.holds_capacity:
            self.catalog.release(instance.product.id, instance.cluster.id, instance.gpu_num)
            instance.holds_capacity = False

    def _now(self) -> float:
        # Settle every instance, not just the one asked about: a phase that ended earlier frees or takes
        # capacity at its own time, so capacity must be current before anyone reads or changes it.
        now = self.clock()
        for instance in self._instances.values():
            self.lifecycle.settle(instance, now)
        return now

    def _visible(self, instance: SimInstance, now: float) -> bool:
        removed_at = instance.removed_at
        return removed_at is None or now < removed_at + self.config.removed_grace_seconds

    def _not_found(self, instance_id: str) -> SimApiError:
        status = 404 if self.faults.not_found_status == 404 else None
        return SimApiError("RESOURCE_NOT_FOUND", f"instance {instance_id!r} not found", http_status=status)

    def _find(self, instance_id: str, now: float) -> SimInstance:
        instance = self._instances.get(instance_id)
        if instance is None or not self._visible(instance, now):
            raise self._not_found(instance_id)
        return instance

    # Instances -------------------------------------------------------------------------------------------

    def create(self, body: Mapping[str, Any]) -> str:
        """Validate, place, take capacity and start the create track; returns the new 16-hex id."""
        params = validate_create(body)
        with self.lock:
            now = self._now()
            product = self.catalog.product(params.product_id)
            if params.rootfs_size_gb > product.max_rootfs_gb:
                raise invalid(f"rootfsSize must be at most {product.max_rootfs_gb} for {product.id}")
            if params.image_auth_id and params.image_auth_id not in self.catalog.auths:
                raise invalid(f"unknown imageAuthId {params.image_auth_id!r}")
            if params.billing_mode and params.billing_mode not in product.billing_methods:
                raise SimApiError(
                    "UNSUPPORTED_BILLING_MODE", f"{product.id} has no {params.billing_mode} billing"
                )
            if params.billing_mode == SPOT and product.spot_price in ("", "0"):
                raise SimApiError("UNSUPPORTED_BILLING_MODE", f"{product.id} has no spot price")
            if params.billing_mode == SPOT and self.faults.no_spot_capacity:
                raise SimApiError("INSUFFICIENT_RESOURCE", f"no spot capacity for {product.id}")
            # An empty clusterId means Novita picks a cluster (docs/novita-api.md §5); we pick one that has
            # room.
            cluster = self.catalog.cluster(
                params.cluster_id or self._pick_cluster(product.id, params.gpu_num)
            )
            if params.network_storage_ids and not cluster.supports_network_storage:
                raise SimApiError(
                    "CUR_CLUSTER_NETWORK_STORAGE_NOT_SUPPORT", f"{cluster.id} has no network storage"
                )
            if not self.catalog.offers(product.id, cluster.id):
                raise SimApiError("INSUFFICIENT_RESOURCE", f"{product.id} is not available in {cluster.id}")
            self.catalog.acquire(product.id, cluster.id, params.gpu_num)
            pull_fails = not self.catalog.pull_succeeds(
                params.image_url, params.image_auth, params.image_auth_id
            ) or self.faults.take_pull_failure(params.image_url)
            instance = SimInstance(
                # Unique across simulator restarts, as Novita's ids are: `make run` keeps its database
                # between runs, and a seeded id would repeat one an old row already holds.
                id=secrets.token_hex(8),
                name=params.name,
                product=product,
                cluster=cluster,
                gpu_num=params.gpu_num,
                params=params,
                created_at=now,
                ssh_password=f"{self._rng.getrandbits(48):012x}",
            )
            self._instances[instance.id] = instance
            self.lifecycle.begin(instance, self.lifecycle.create_track(pull_fails=pull_fails), now)
            return instance.id

    def _pick_cluster(self, product_id: str, gpus: int) -> str:
        candidates = sorted(c for c in self.catalog.clusters if self.catalog.free_gpus(product_id, c) >= gpus)
        if not candidates:
            raise SimApiError(
                "INSUFFICIENT_RESOURCE", f"insufficient resource for {product_id} in every cluster"
            )
        return self._rng.choice(candidates)

    def get_instance(self, instance_id: str) -> dict[str, Any]:
        """`GET /gpu/instance`; with not_found_status 200 an unknown id gets an empty object (§13.11)."""
        with self.lock:
            try:
                found = self._find(instance_id, self._now())
                return instance_json(found, for_list=False, run_times=self.config.run_times)
            except SimApiError:
                if self.faults.not_found_status == 200:
                    return {}
                raise

    def list_instances(self, query: Mapping[str, str]) -> dict[str, Any]:
        """`GET /gpu/instances`: newest first, fuzzy name/productName, exact status, pageNum/pageSize (§7)."""
        page_num, page_size = (query.get(key, "") for key in (spec.PAGE_NUM_PARAM, spec.PAGE_SIZE_PARAM))
        if not page_num.isdigit() or not page_size.isdigit():
            raise invalid(
                f"{spec.PAGE_NUM_PARAM} and {spec.PAGE_SIZE_PARAM} are required non-negative integers"
            )
        name, product_name = query.get("name", "").lower(), query.get("productName", "").lower()
        status = query.get("status", "")
        with self.lock:
            now = self._now()
            matches = []
            for instance in reversed(self._instances.values()):
                if (
                    self._visible(instance, now)
                    and name in instance.name.lower()
                    and product_name in instance.product.name.lower()
                    and status in ("", instance.status)
                ):
                    matches.append(instance)
            start = max(int(page_num) - self.config.page_base, 0) * int(page_size)
            page = matches[start : start + int(page_size)]
            items = [instance_json(i, for_list=True, run_times=self.config.run_times) for i in page]
            return {"instances": items, "total": len(matches)}

    def _act(
        self, instance_id: str, allowed: frozenset[str], track: list[Phase], *, reacquire: bool = False
    ) -> SimInstance:
        with self.lock:
            now = self._now()
            instance = self._find(instance_id, now)
            if instance.status not in allowed:
                raise SimApiError("CONFLICT", spec.INVALID_STATE_CHANGE_MESSAGE)
            if reacquire and not instance.holds_capacity:
                # The GPU may have been taken while the instance was stopped (§8).
                self.catalog.acquire(instance.product.id, instance.cluster.id, instance.gpu_num)
                instance.holds_capacity = True
            self.lifecycle.begin(instance, track, now)
            return instance

    def start(self, instance_id: str) -> dict[str, Any]:
        """Start an exited instance, re-acquiring its GPU; answers like SONTL saw: {instanceId, state}."""
        instance = self._act(instance_id, spec.STOPPED_STATUSES, self.lifecycle.start_track(), reacquire=True)
        return {"instanceId": instance.id, "state": instance.status}

    def stop(self, instance_id: str) -> dict[str, Any]:
        """Stop a running instance."""
        instance = self._act(instance_id, spec.READY_STATUSES, self.lifecycle.stop_track())
        return {"instanceId": instance.id, "state": instance.status}

    def restart(self, instance_id: str) -> dict[str, Any]:
        """Restart a running instance; answers `{}` (bodies vary, §13.10)."""
        self._act(instance_id, spec.READY_STATUSES, self.lifecycle.restart_track())
        return {}

    def delete(self, instance_id: str) -> dict[str, Any]:
        """Delete an instance in any state but removal; prepaid ones refuse (§8)."""
        with self.lock:
            instance = self._find(instance_id, self._now())
            if instance.params.billing_mode == "monthly" or instance.params.month > 0:
                raise SimApiError(
                    "PREPAID_INSTANCE_NOT_SUPPORT_RELEASE", "prepaid instance cannot be released"
                )
            deletable = spec.KNOWN_STATUSES - spec.REMOVAL_STATUSES
            self._act(instance_id, deletable, self.lifecycle.delete_track())
            return {}

    def edit(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """`POST /gpu/instance/edit`: replace the ports and/or grow the root disk, up to the product's max."""
        params = validate_edit(body)
        with self.lock:
            instance = self._find(params.instance_id, self._now())
            if instance.status in spec.REMOVAL_STATUSES:
                raise SimApiError("CONFLICT", spec.INVALID_STATE_CHANGE_MESSAGE)
            rootfs_size_gb = instance.params.rootfs_size_gb + params.expand_rootfs_gb
            if rootfs_size_gb > instance.product.max_rootfs_gb:
                raise invalid(
                    f"rootfsSize would exceed {instance.product.max_rootfs_gb} for {instance.product.id}"
                )
            instance.params = dataclasses.replace(
                instance.params,
                rootfs_size_gb=rootfs_size_gb,
                ports=instance.params.ports if params.ports is None else params.ports,
            )
            return {}

    def upgrade(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """`POST /gpu/instance/upgrade`: a running instance gets a new image (envs, command) via a reset."""
        params = validate_upgrade(body)
        with self.lock:
            instance = self._act(params.instance_id, spec.READY_STATUSES, self.lifecycle.reset_track())
            instance.params = dataclasses.replace(
                instance.params,
                image_url=params.image_url,
                envs=instance.params.envs if params.envs is None else params.envs,
                command=instance.params.command if params.command is None else params.command,
            )
            return {}

    def renew(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """`POST /gpu/instance/renewInstance`: more months for a subscription instance."""
        instance_id, month = validate_months(body)
        with self.lock:
            instance = self._find(instance_id, self._now())
            if instance.status in {phase.value for phase in spec.CREATE_PHASES}:
                raise SimApiError(
                    "CREATING_INSTANCE_NOT_SUPPORT_RENEWAL", "the instance is still being created"
                )
            if not self._is_monthly(instance):
                raise SimApiError("UNSUPPORTED_BILLING_MODE", "only a subscription instance can be renewed")
            instance.params = dataclasses.replace(instance.params, month=instance.params.month + month)
            return {}

    def to_monthly(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """`POST /gpu/instance/transToMonthlyInstance`: a pay-as-you-go instance becomes a subscription."""
        instance_id, month = validate_months(body)
        with self.lock:
            instance = self._find(instance_id, self._now())
            if self._is_monthly(instance) or "monthly" not in instance.product.billing_methods:
                raise SimApiError("UNSUPPORTED_BILLING_MODE", f"{instance.id} cannot become a subscription")
            instance.params = dataclasses.replace(instance.params, billing_mode="monthly", month=month)
            return {}

    @staticmethod
    def _is_monthly(instance: SimInstance) -> bool:
        return instance.params.billing_mode == "monthly" or instance.params.month > 0

    def uses(self, *, auth_id: str = "", storage_id: str = "") -> bool:
        """Whether an instance not yet removed uses this registry auth or network storage."""
        with self.lock:
            now = self._now()
            return any(
                instance.status != spec.Status.REMOVED.value
                and self._visible(instance, now)
                and (
                    (auth_id and instance.params.image_auth_id == auth_id)
                    or (storage_id and storage_id in instance.params.network_storage_ids)
                )
                for instance in self._instances.values()
            )

    def reclaim(self, instance_id: str) -> None:
        """Spot reclaim: take a running instance away (notified -> reclaiming -> terminated, then exited)."""
        with self.lock:
            now = self._now()
            instance = self._find(instance_id, now)
            if instance.status != spec.Status.RUNNING.value:
                raise ValueError(
                    f"instance {instance_id} is {instance.status}, only running ones can be reclaimed"
                )
            self.lifecycle.begin(instance, self.lifecycle.reclaim_track(), now)

    def migrate(self, instance_id: str) -> dict[str, Any]:
        """`POST /gpu/instance/migrate`: an exited, reclaimed spot instance runs again on another node
        (the same id), or 400 MIGRATE_INSUFFICIENT_RESOURCE when no GPU is free (§8, §12)."""
        with self.lock:
            now = self._now()
            instance = self._find(instance_id, now)
            if instance.status != spec.Status.EXITED.value or instance.spot_status != TERMINATED:
                raise SimApiError("CONFLICT", spec.INVALID_STATE_CHANGE_MESSAGE)
            product, gpus = instance.product.id, instance.gpu_num
            free = [c for c in self.catalog.clusters if self.catalog.free_gpus(product, c) >= gpus]
            if self.faults.no_spot_capacity or not free:
                raise SimApiError("MIGRATE_INSUFFICIENT_RESOURCE", f"no capacity to migrate {instance_id}")
            cluster_id = instance.cluster.id if instance.cluster.id in free else sorted(free)[0]
            self.catalog.acquire(product, cluster_id, gpus)
            instance.cluster = self.catalog.cluster(cluster_id)
            instance.holds_capacity = True
            instance.spot_status = "running"
            self.lifecycle.begin(instance, self.lifecycle.migrate_track(), now)
            return {}

    def inject(self, options: Mapping[str, Any]) -> None:
        """Apply fault options plus `capacity` ([{productId, clusterId, gpus}]) and `reclaim_instances`."""
        options = dict(options)
        capacity = options.pop("capacity", [])
        reclaim_ids = options.pop("reclaim_instances", [])
        with self.lock:
            self.faults.configure(options)
            for item in capacity:
                self.set_capacity(item["productId"], item["clusterId"], int(item["gpus"]))
            for instance_id in reclaim_ids:
                self.reclaim(instance_id)

    # Catalogue -----------------------------------------------------------------------------------------

    def clusters(self) -> list[dict[str, Any]]:
        """`/clusters` items."""
        with self.lock:
            return self.catalog.clusters_json()

    def products(self, query: Mapping[str, str]) -> list[dict[str, Any]]:
        """`/products` items with stock as of now."""
        with self.lock:
            self._now()
            return self.catalog.products_json(query)

    def set_capacity(self, product_id: str, cluster_id: str, gpus: int) -> None:
        """Set the free GPUs of a product in a cluster, after settling earlier releases."""
        with self.lock:
            self._now()
            self.catalog.set_capacity(product_id, cluster_id, gpus)

    # Ledger ----------------------------------------------------------------------------------------------

    def record_call(self, entry: dict[str, Any]) -> None:
        """Append one API call to the ledger."""
        with self.lock:
            self._calls.append(entry)

    def calls(self) -> list[dict[str, Any]]:
        """Every API call so far, oldest first."""
        with self.lock:
            return [dict(entry) for entry in self._calls]

    def instances_ledger(self) -> list[dict[str, Any]]:
        """Every instance ever created, deleted ones included, oldest first; credentials left out."""
        with self.lock:
            self._now()
            ledger = []
            for instance in self._instances.values():
                ledger.append(
                    {
                        "id": instance.id,
                        "name": instance.name,
                        "productId": instance.product.id,
                        "clusterId": instance.cluster.id,
                        "gpuNum": instance.gpu_num,
                        "imageUrl": instance.params.image_url,
                        "networkStorageIds": list(instance.params.network_storage_ids),
                        "billingMode": instance.params.billing_mode,
                        "status": instance.status,
                        "spotStatus": instance.spot_status,
                        "statusError": list(instance.status_error) if instance.status_error else None,
                        "createdAt": instance.created_at,
                        "removedAt": instance.removed_at,
                        "holdsCapacity": instance.holds_capacity,
                    }
                )
            return ledger
