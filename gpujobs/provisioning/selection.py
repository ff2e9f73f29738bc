"""Product selection with multi-region fallback: which (product, cluster) to try, in which order, and why not.

The requested region comes first, then `GPUJOBS_REGION_FALLBACK` in its order (with no region requested,
then every other cluster). In each region only products
whose name matches exactly, that Novita lists as deployable with stock, that fit the disk and that cost at
most the caller's cap are tried, cheapest first. Regions are Novita display codes (`CN-HK-01`) or cluster
ids; they map to `clusterId`s only through `/clusters`, never by formula (docs/novita-api.md §3, §13.6).
Products are listed per cluster, lazily, so the common case costs one catalogue call. A search remembers
what it passed over, so the failure names the real reason: the price cap, no stock, or no such product.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from gpujobs.exceptions import PermanentError
from gpujobs.novita import Cluster, Product, spec
from gpujobs.provisioning import billing


class ProductSource(Protocol):
    """Where products are listed: a NovitaClient, or a Catalogue that remembers its answers."""

    def list_products(self, product_name: str, cluster_id: str, *, gpu_num: int) -> list[Product]: ...


@dataclass(frozen=True)
class Candidate:
    """One place to try: a product in a cluster, and what the whole instance would cost."""

    product: Product
    cluster: Cluster
    gpu_num: int
    billing_mode: str = billing.ON_DEMAND

    @property
    def region(self) -> str:
        """The region's display code, e.g. CN-HK-01."""
        return self.cluster.region_code

    @property
    def price_units(self) -> int:
        """Novita units (1/100,000 USD) per hour for every GPU of the instance (prices are per GPU, §4)."""
        return billing.unit_price(self.product, self.billing_mode) * self.gpu_num

    @property
    def price_per_hour(self) -> float:
        """USD per hour for the whole instance."""
        return self.price_units / spec.PRICE_UNITS_PER_USD


def regions_in_order(requested: str | None, fallback: list[str], clusters: list[Cluster]) -> list[Cluster]:
    """The clusters to try: the requested region, then the fallback order; with no region requested, then
    every other cluster Novita lists.

    A region is a cluster's display code (from its `name`) or its `id`, case aside. The fallback orders a
    preference; it does not bound a request for anywhere: `/clusters` names are undocumented (§3, §16),
    and a Novita whose names are none of the configured codes must still place instances. A requested
    region is the caller's choice: only it and the fallback regions are tried then.
    """
    by_key: dict[str, Cluster] = {}
    for cluster in clusters:
        by_key.setdefault(cluster.region_code, cluster)
    for cluster in clusters:
        by_key.setdefault(cluster.id.upper(), cluster)
    if requested and requested.upper() not in by_key:
        known = ", ".join(sorted({cluster.region_code for cluster in clusters})) or "none"
        raise PermanentError(f"unknown region {requested!r}: Novita's regions are {known}")
    keys = [key.upper() for key in ([requested] if requested else []) + fallback]
    ordered = [by_key[key] for key in keys if key in by_key] + ([] if requested else clusters)
    return list({cluster.id: cluster for cluster in ordered}.values())  # each once, where first named


@dataclass
class Search:
    """One search for `product_name`; iterate `candidates`, report refusals, and ask `failure` at the end."""

    product_name: str
    gpu_num: int
    rootfs_gb: int
    max_price_per_hour: float | None = None
    regions: list[str] = field(default_factory=list)
    out_of_stock: list[str] = field(default_factory=list)
    over_cap: list[Candidate] = field(default_factory=list)
    refused: list[Candidate] = field(default_factory=list)
    # (product id, cluster id) pairs Novita refused earlier in this create step: not asked again.
    refused_before: frozenset[tuple[str, str]] = frozenset()
    # `spot` offers only products Novita sells as spot, compared and capped at their spot price.
    billing_mode: str = billing.ON_DEMAND

    def candidates(self, client: ProductSource, clusters: list[Cluster]) -> Iterator[Candidate]:
        """Candidates region by region, cheapest first within a region; lists a region only when reached."""
        cap_units = (
            None
            if self.max_price_per_hour is None
            else round(self.max_price_per_hour * spec.PRICE_UNITS_PER_USD)
        )
        for cluster in clusters:
            self.regions.append(cluster.region_code)
            listed = client.list_products(self.product_name, cluster.id, gpu_num=self.gpu_num)
            wanted = [product for product in listed if self._wanted(product)]
            # Listed for this cluster (`clusterId`, §4), yet none of them names it in `regions`: their
            # region strings follow another format than the cluster's name and id (§16); the filter decides.
            offered = [product for product in wanted if product.offered_in(cluster)] or wanted
            in_stock = sorted(
                (p for p in offered if p.in_stock),
                key=lambda p: (billing.unit_price(p, self.billing_mode), p.id),
            )
            if offered and not in_stock:
                self.out_of_stock.append(cluster.region_code)
            for product in in_stock:
                candidate = Candidate(product, cluster, self.gpu_num, self.billing_mode)
                if (product.id, cluster.id) in self.refused_before:
                    self.refused.append(candidate)
                elif cap_units is not None and candidate.price_units > cap_units:
                    self.over_cap.append(candidate)
                else:
                    yield candidate

    def refuse(self, candidate: Candidate) -> None:
        """Note that Novita refused a candidate at create time (INSUFFICIENT_RESOURCE or a sick cluster)."""
        self.refused.append(candidate)

    def _wanted(self, product: Product) -> bool:
        # productName is a fuzzy filter at Novita (§4): "RTX 4090 24GB" must not match "... (High frequency)".
        fits_disk = product.max_rootfs_gb is None or self.rootfs_gb <= product.max_rootfs_gb
        return (
            product.name.casefold() == self.product_name.casefold()
            and fits_disk
            and billing.sold_as(product, self.billing_mode)
        )

    def failure(self) -> PermanentError:
        """Why nothing could be created, as one sentence a caller can act on."""
        spot = " (spot)" if self.billing_mode == billing.SPOT else ""
        wanted = f"{self.product_name} x{self.gpu_num}{spot}"
        where = ", ".join(self.regions) or "no region (none of the configured regions exist at Novita)"
        if self.over_cap:
            cheapest = min(self.over_cap, key=lambda c: c.price_units)
            return PermanentError(
                f"price cap: no {wanted} at or below ${self.max_price_per_hour:.2f}/h in {where}; "
                f"the cheapest in stock is ${cheapest.price_per_hour:.2f}/h "
                f"({cheapest.product.id} in {cheapest.region})"
            )
        if self.refused or self.out_of_stock:
            return PermanentError(
                f"out of stock: no {wanted} could be placed in {where} (tried in this order)"
            )
        return PermanentError(f"no product named {self.product_name!r} is offered in {where}")
