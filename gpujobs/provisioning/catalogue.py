"""Novita's clusters and products, remembered for a short while by each worker process.

Every create step reads both lists before it creates. Clusters almost never change and stock moves
by the minute, while Novita's answer to the create itself is the final word on stock: a refused
candidate is skipped and its cluster's list forgotten, and a search that finds nothing in remembered
lists is run again on fresh ones before the job fails. So a process reuses each list for
``GPUJOBS_NOVITA_CATALOGUE_SECONDS``, which saves two of the create step's four Novita calls (and
their latency, and the account's rate limit) for every instance after the first. 0 turns it off; a
request with a price cap always reads fresh lists.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from flask import current_app

from gpujobs.novita import Cluster, NovitaClient, Product

T = TypeVar("T")

# Product names come from requests, so the memory is bounded: past this many lists, stale ones go.
MAX_LISTS = 256

_lock = threading.Lock()
_remembered: dict[tuple[Any, ...], tuple[float, Any]] = {}


class Catalogue:
    """The listing calls of one client, answered from memory while fresh."""

    def __init__(self, client: NovitaClient, *, fresh: bool = False) -> None:
        self._client = client
        self._keep = current_app.config["GPUJOBS_NOVITA_CATALOGUE_SECONDS"]
        self._max_age = 0.0 if fresh else self._keep
        self.remembered = False  # whether a product list came from memory rather than from Novita

    def list_clusters(self) -> list[Cluster]:
        """Novita's clusters (regions)."""
        return self._remember(("clusters",), self._client.list_clusters)[0]

    def list_products(self, product_name: str, cluster_id: str, *, gpu_num: int) -> list[Product]:
        """The products named so in one cluster, with that cluster's stock."""
        products, remembered = self._remember(
            ("products", cluster_id, product_name, gpu_num),
            lambda: self._client.list_products(product_name, cluster_id, gpu_num=gpu_num),
        )
        self.remembered |= remembered
        return products

    def forget_products(self, cluster_id: str) -> None:
        """Drop a cluster's product lists: Novita just refused a create there, so its stock was stale."""
        with _lock:
            prefix = (self._client.base_url, "products", cluster_id)
            for key in [key for key in _remembered if key[:3] == prefix]:
                del _remembered[key]

    def _remember(self, what: tuple[Any, ...], fetch: Callable[[], T]) -> tuple[T, bool]:
        """The answer, and whether it came from memory."""
        key = (self._client.base_url, *what)
        now = time.monotonic()
        with _lock:
            kept = _remembered.get(key)
        if kept is not None and now - kept[0] < self._max_age:
            return kept[1], True
        value = fetch()
        with _lock:
            if len(_remembered) >= MAX_LISTS:  # stale by the configured age, whatever this caller asked
                for stale in [k for k, (at, _) in _remembered.items() if now - at >= self._keep]:
                    del _remembered[stale]
                if len(_remembered) >= MAX_LISTS:
                    _remembered.clear()
            _remembered[key] = (now, value)
        return value, False
