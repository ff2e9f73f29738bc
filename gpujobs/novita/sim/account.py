"""What the simulated account owns beside instances: templates, registry auths, network storages, and
the CPU product list; the §2 endpoints for them, each validated and answered in Novita's shapes.

Templates and registry auths are those of the catalogue (seeded), which create-instance also reads: a
registry auth saved here is one a create can name in `imageAuthId`. Callers hold the simulator lock.

Section numbers (§) cite docs/novita-api.md.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from gpujobs.novita import spec
from gpujobs.novita.sim import seed
from gpujobs.novita.sim.catalog import Catalog
from gpujobs.novita.sim.validation import SimApiError, _integer, _string, invalid

# Network storage sizes, in GB (no source gives a limit; these keep tests honest about "may only grow").
NETWORK_STORAGE_MIN_GB = 1
NETWORK_STORAGE_MAX_GB = 102_400
# 1/100,000 USD per GB and hour, as product prices are (§4); no source gives the real figure.
NETWORK_STORAGE_PRICE_PER_GB = 10


def _query_int(query: Mapping[str, str], key: str) -> int | None:
    value = query.get(key, "")
    if value == "":
        return None
    if not value.isdigit():
        raise invalid(f"{key} must be a non-negative integer")
    return int(value)


def _page(items: list[dict[str, Any]], page_num: int | None, page_size: int | None) -> list[dict[str, Any]]:
    """One page; like the instance list, page 0 and page 1 are both the first (§7: the base is unclear)."""
    if not page_size:
        return items
    start = max((page_num or 1) - 1, 0) * page_size
    return items[start : start + page_size]


def _template_ports(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid("template.ports must be a list of {type, ports} groups")
    groups = []
    for group in value:
        if not isinstance(group, Mapping) or group.get("type") not in spec.PORT_TYPES:
            raise invalid("template.ports items need a type of tcp or http")
        ports = group.get("ports")
        if not isinstance(ports, list) or len(ports) > spec.MAX_TEMPLATE_PORTS_PER_GROUP:
            raise invalid(
                f"template.ports[].ports must be a list of at most {spec.MAX_TEMPLATE_PORTS_PER_GROUP}"
            )
        for port in ports:
            if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
                raise invalid(f"template port {port!r} must be an integer between 1 and 65535")
            if port in spec.RESERVED_PORTS:
                raise invalid(f"port {port} is reserved (2222-2224)")
        groups.append({"type": group["type"], "ports": list(ports)})
    return groups


def _template_envs(value: Any) -> list[dict[str, str]]:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > spec.MAX_ENVS:
        raise invalid(f"template.envs must be a list of at most {spec.MAX_ENVS} items")
    if not all(isinstance(env, Mapping) for env in value):
        raise invalid("template.envs items must be {key, value} objects")
    return [
        {
            "key": _string(env, "key", max_chars=spec.MAX_ENV_KEY_CHARS, required=True),
            "value": _string(env, "value", max_chars=spec.MAX_ENV_VALUE_CHARS),
        }
        for env in value
    ]


class Account:
    """Templates, registry auths and network storages; reset to the seed with the rest of the simulator."""

    def __init__(self, catalog: Catalog, clock: Callable[[], float]) -> None:
        self._catalog = catalog
        self._clock = clock
        self.reset()

    def reset(self) -> None:
        """Back to the seeded templates and auths, and no network storage."""
        self.templates: dict[str, dict[str, Any]] = {
            key: dict(value) for key, value in seed.TEMPLATES.items()
        }
        self._catalog.auths.clear()
        self._catalog.auths.update({auth["id"]: dict(auth) for auth in seed.REGISTRY_AUTHS})
        self.storages: dict[str, dict[str, Any]] = {}

    # Templates (§9) ---------------------------------------------------------------------------------------

    def get_template(self, template_id: str) -> dict[str, Any]:
        """`GET /template` body, verbatim shape (capital `Id`, `imageAuth` as an auth id)."""
        if template_id not in self.templates:
            raise SimApiError("TEMPLATE_NOT_FOUND", f"template {template_id!r} not found")
        return {"template": dict(self.templates[template_id])}

    def list_templates(self, query: Mapping[str, str]) -> dict[str, Any]:
        """`GET /templates`: `channel` and `isMyCommunity` are required (§9); the list key is singular."""
        channel = query.get("channel", "")
        if channel not in spec.TEMPLATE_CHANNELS:
            raise invalid(f"channel is required, one of {sorted(spec.TEMPLATE_CHANNELS)}")
        if query.get("isMyCommunity", "") not in ("true", "false"):
            raise invalid("isMyCommunity is required, true or false")
        page_num = _query_int(query, spec.PAGE_NUM_PARAM)
        page_size = _query_int(query, spec.PAGE_SIZE_PARAM)
        name, kind = query.get("name", "").lower(), query.get("type", "")
        matches = [
            dict(template)
            for template in self.templates.values()
            if template["channel"] == channel
            and name in template["name"].lower()
            and kind in ("", template["type"])
        ]
        return {"template": _page(matches, page_num, page_size), "total": len(matches)}

    def create_template(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """`POST /template/create {"template": {...}}` -> `{"templateId"}`; always a private template."""
        template = body.get("template")
        if not isinstance(template, Mapping):
            raise invalid("template is required")
        rootfs_size = _integer(template, "rootfsSize", required=True)
        if not spec.ROOTFS_MIN_GB <= rootfs_size <= spec.ROOTFS_MAX_GB:
            raise invalid(f"rootfsSize must be between {spec.ROOTFS_MIN_GB} and {spec.ROOTFS_MAX_GB}")
        image_auth = _string(template, "imageAuth", max_chars=255)
        if image_auth and image_auth not in self._catalog.auths:
            raise invalid(f"unknown imageAuth {image_auth!r} (a registry auth id)")
        kind = _string(template, "type", max_chars=32) or "instance"
        if kind != "instance":
            raise invalid("type must be instance")
        template_id = str(max(int(key) for key in self.templates) + 1 if self.templates else 1)
        self.templates[template_id] = {
            "Id": template_id,
            "name": _string(template, "name", max_chars=spec.MAX_NAME_CHARS, required=True),
            "readme": _string(template, "readme", max_chars=65535),
            "type": kind,
            "channel": "private",
            "image": _string(template, "image", max_chars=spec.MAX_IMAGE_URL_CHARS, required=True),
            "imageAuth": image_auth,
            "startCommand": _string(template, "startCommand", max_chars=spec.MAX_COMMAND_CHARS),
            "entrypoint": _string(template, "entrypoint", max_chars=spec.MAX_COMMAND_CHARS),
            "rootfsSize": rootfs_size,
            "ports": _template_ports(template.get("ports")),
            "envs": _template_envs(template.get("envs")),
            "tools": [],
            "createdAt": str(int(self._clock())),
            "recommendCards": [],
            "minCudaVersion": _string(template, "minCudaVersion", max_chars=16),
        }
        return {"templateId": template_id}

    def delete_template(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """`POST /template/delete {"templateId"}` -> `{"templateId"}`; only the account's own templates."""
        template_id = _string(body, spec.TEMPLATE_ID_PARAM, max_chars=255, required=True)
        template = self.templates.get(template_id)
        if template is None:
            raise SimApiError("TEMPLATE_NOT_FOUND", f"template {template_id!r} not found")
        if template["channel"] != "private":
            raise SimApiError("REQUEST", f"template {template_id!r} is not this account's to delete")
        del self.templates[template_id]
        return {"templateId": template_id}

    # Registry auths (§11) ---------------------------------------------------------------------------------

    def save_auth(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """`POST /repository/auth/save {"name","username","password"}` -> `{}`: no id comes back (§11)."""
        auth = {
            "id": secrets.token_hex(16),
            "name": _string(body, "name", max_chars=spec.MAX_AUTH_NAME_CHARS, required=True),
            "username": _string(body, "username", max_chars=spec.MAX_AUTH_USERNAME_CHARS, required=True),
            "password": _string(body, "password", max_chars=spec.MAX_AUTH_PASSWORD_CHARS, required=True),
        }
        self._catalog.auths[auth["id"]] = auth
        return {}

    def delete_auth(self, body: Mapping[str, Any], used_by_instance: Callable[[str], bool]) -> dict[str, Any]:
        """`POST /repository/auth/delete {"id"}` -> `{}`; IMAGE_AUTH_IN_USE while something uses it."""
        auth_id = _string(body, "id", max_chars=255, required=True)
        if auth_id not in self._catalog.auths:
            raise SimApiError("RESOURCE_NOT_FOUND", f"registry auth {auth_id!r} not found")
        in_templates = any(template.get("imageAuth") == auth_id for template in self.templates.values())
        if in_templates or used_by_instance(auth_id):
            raise SimApiError("IMAGE_AUTH_IN_USE", f"registry auth {auth_id!r} is in use")
        del self._catalog.auths[auth_id]
        return {}

    # Network storage (§10) --------------------------------------------------------------------------------

    def _storage(self, storage_id: str) -> dict[str, Any]:
        if storage_id not in self.storages:
            raise SimApiError("NETWORK_STORAGE_NOT_FOUND", f"network storage {storage_id!r} not found")
        return self.storages[storage_id]

    @staticmethod
    def _storage_size(body: Mapping[str, Any]) -> int:
        size = _integer(body, "storageSize", required=True)
        if not NETWORK_STORAGE_MIN_GB <= size <= NETWORK_STORAGE_MAX_GB:
            raise invalid(
                f"storageSize must be between {NETWORK_STORAGE_MIN_GB} and {NETWORK_STORAGE_MAX_GB} GB"
            )
        return size

    def list_storages(self, query: Mapping[str, str]) -> dict[str, Any]:
        """`GET /networkstorages/list?pageNo&pageSize&storageName&storageId` -> `{data, total}`."""
        page_no, page_size = _query_int(query, "pageNo"), _query_int(query, "pageSize")
        name, storage_id = query.get("storageName", "").lower(), query.get("storageId", "")
        matches = [
            dict(storage)
            for storage in self.storages.values()
            if name in storage["storageName"].lower() and storage_id in ("", storage["storageId"])
        ]
        return {"data": _page(matches, page_no, page_size), "total": len(matches)}

    def create_storage(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """`POST /networkstorage/create {clusterId, storageName, storageSize}` -> `{"storageId"}` (a UUID)."""
        cluster = self._catalog.cluster(_string(body, "clusterId", max_chars=255, required=True))
        if not cluster.supports_network_storage:
            raise SimApiError(
                "CUR_CLUSTER_NETWORK_STORAGE_NOT_SUPPORT", f"{cluster.id} has no network storage"
            )
        size = self._storage_size(body)
        storage_id = str(uuid.uuid4())
        self.storages[storage_id] = {
            "storageId": storage_id,
            "storageName": _string(body, "storageName", max_chars=spec.MAX_NAME_CHARS, required=True),
            "storageSize": size,
            "clusterId": cluster.id,
            "clusterName": cluster.name,
            "price": size * NETWORK_STORAGE_PRICE_PER_GB,
        }
        return {"storageId": storage_id}

    def update_storage(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """`POST /networkstorage/update {storageId, storageName, storageSize}`; the size may only grow."""
        storage = self._storage(_string(body, "storageId", max_chars=255, required=True))
        size = self._storage_size(body)
        if size < storage["storageSize"]:
            raise invalid(f"storageSize may only grow (now {storage['storageSize']} GB)")
        name = _string(body, "storageName", max_chars=spec.MAX_NAME_CHARS) or storage["storageName"]
        storage.update(storageName=name, storageSize=size, price=size * NETWORK_STORAGE_PRICE_PER_GB)
        return {}

    def delete_storage(
        self, body: Mapping[str, Any], used_by_instance: Callable[[str], bool]
    ) -> dict[str, Any]:
        """`POST /networkstorage/delete {storageId}`; NETWORK_STORAGE_IN_USE while an instance mounts it."""
        storage_id = self._storage(_string(body, "storageId", max_chars=255, required=True))["storageId"]
        if used_by_instance(storage_id):
            raise SimApiError("NETWORK_STORAGE_IN_USE", f"network storage {storage_id!r} is in use")
        del self.storages[storage_id]
        return {}

    # CPU products ([T] PWSDK) -----------------------------------------------------------------------------

    def cpu_products(self, query: Mapping[str, str]) -> list[dict[str, Any]]:
        """`GET /cpu/products?clusterId&productName` items; an unknown clusterId is VALIDATOR_PARAM."""
        cluster_id, name = query.get("clusterId", ""), query.get("productName", "").lower()
        code = self._catalog.cluster(cluster_id).name if cluster_id else ""
        return [
            {**product, "regions": list(product["regions"])}
            for product in seed.CPU_PRODUCTS
            if name in str(product["name"]).lower()
            and (not code or any(region.split(" ", 1)[0] == code for region in product["regions"]))
        ]
