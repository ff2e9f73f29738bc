"""Product selection against the simulator's catalogue: region order, stock, price, clear refusals."""

from __future__ import annotations

import pytest

from gpujobs.exceptions import PermanentError
from gpujobs.novita import Cluster, Product
from gpujobs.provisioning.selection import Search, regions_in_order

FALLBACK = ["CN-HK-01", "AS-SGP-02", "US-CA-06", "EU-DE-01"]


def places(novita, search: Search, region: str | None = "CN-HK-01") -> list[tuple[str, str, float]]:
    clusters = regions_in_order(region, FALLBACK, novita.list_clusters())
    return [(c.product.id, c.region, c.price_per_hour) for c in search.candidates(novita, clusters)]


def test_the_requested_region_comes_first_then_the_fallback_order_cheapest_first_within_each(novita):
    assert places(novita, Search("RTX 4090 24GB", 1, 60), "US-CA-06") == [
        ("4090.hd.16c62g", "US-CA-06", 0.28),
        ("4090.16c62g", "US-CA-06", 0.35),
        ("4090.16c62g", "CN-HK-01", 0.35),
        ("26", "CN-HK-01", 0.67),
        ("4090.16c62g", "AS-SGP-02", 0.35),
    ]


def test_regions_map_to_clusters_through_novita_and_unknown_fallbacks_are_skipped(novita):
    clusters = regions_in_order("cn-hk-01", FALLBACK, novita.list_clusters())
    assert [cluster.id for cluster in clusters] == ["cn-hongkong-1", "as-sgp-2", "us-ca-6"]
    with pytest.raises(PermanentError, match="unknown region 'XX-01': Novita's regions are AS-SGP-02, "):
        regions_in_order("XX-01", FALLBACK, novita.list_clusters())


def test_with_no_region_requested_every_cluster_follows_the_fallback_ones_whatever_their_names():
    """`/clusters` names are undocumented (NOVITA_API.md §3, §16): a Novita whose names are none of the
    configured codes still places instances, the configured ones first."""
    clusters = [Cluster("us-ca-2", "US-CA-02"), Cluster("as-sgp-2", "as-sgp-2"), Cluster("hk", "CN-HK-01")]
    assert [c.id for c in regions_in_order(None, FALLBACK, clusters)] == ["hk", "us-ca-2", "as-sgp-2"]
    assert [c.id for c in regions_in_order(None, [], clusters)] == ["us-ca-2", "as-sgp-2", "hk"]
    # A region asked for is the caller's choice: it and the fallback ones only. An id names one too.
    assert [c.id for c in regions_in_order("us-ca-2", FALLBACK, clusters)] == ["us-ca-2", "hk"]
    assert [c.id for c in regions_in_order("AS-SGP-2", [], clusters)] == ["as-sgp-2"]


class ListedForTheCluster:
    """Products as `/products?clusterId=` lists them, whatever their `regions` strings say."""

    def __init__(self, *products: Product) -> None:
        self.products = list(products)

    def list_products(self, product_name: str, cluster_id: str, *, gpu_num: int) -> list[Product]:
        return self.products


def test_products_listed_for_a_cluster_whose_regions_name_it_in_another_format_are_still_offered():
    cluster = Cluster("us-ca-2", "US California 2")
    elsewhere = Product("4090.a", "RTX 4090 24GB", 35000, True, regions=("US-CA-02 (California)",))
    found = [
        c.product.id
        for c in Search("RTX 4090 24GB", 1, 60).candidates(ListedForTheCluster(elsewhere), [cluster])
    ]
    assert found == ["4090.a"]
    # When some product does name the cluster, the ones naming only others are left out.
    here = Product("4090.b", "RTX 4090 24GB", 40000, True, regions=("us-ca-2",))
    both = ListedForTheCluster(elsewhere, here)
    assert [c.product.id for c in Search("RTX 4090 24GB", 1, 60).candidates(both, [cluster])] == ["4090.b"]


def test_a_price_cap_counts_every_gpu_and_never_lets_a_dearer_product_through(novita):
    search = Search("RTX 4090 24GB", 2, 60, max_price_per_hour=0.6)
    assert places(novita, search) == [("4090.hd.16c62g", "US-CA-06", 0.56)]
    assert search.over_cap


def test_out_of_stock_and_unknown_products_fail_with_their_own_reasons(novita, sim):
    sold_out = Search("RTX 5090 32GB", 1, 60)
    assert places(novita, sold_out, None) == []
    assert str(sold_out.failure()) == (
        "out of stock: no RTX 5090 32GB x1 could be placed in CN-HK-01, AS-SGP-02, US-CA-06, EU-GER-02 "
        "(tried in this order)"
    )
    unknown = Search("RTX 9090", 1, 60)
    assert places(novita, unknown) == []
    assert str(unknown.failure()) == "no product named 'RTX 9090' is offered in CN-HK-01, AS-SGP-02, US-CA-06"
