"""Product selection against the simulator's catalogue: region order, stock, price, clear refusals."""

from __future__ import annotations

import pytest

from gpujobs.exceptions import PermanentError
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


def test_a_price_cap_counts_every_gpu_and_never_lets_a_dearer_product_through(novita):
    search = Search("RTX 4090 24GB", 2, 60, max_price_per_hour=0.6)
    assert places(novita, search) == [("4090.hd.16c62g", "US-CA-06", 0.56)]
    assert search.over_cap


def test_out_of_stock_and_unknown_products_fail_with_their_own_reasons(novita, sim):
    sold_out = Search("RTX 5090 32GB", 1, 60)
    assert places(novita, sold_out, None) == []
    assert str(sold_out.failure()) == (
        "out of stock: no RTX 5090 32GB x1 could be placed in CN-HK-01, AS-SGP-02, US-CA-06 "
        "(tried in this order)"
    )
    unknown = Search("RTX 9090", 1, 60)
    assert places(novita, unknown) == []
    assert str(unknown.failure()) == "no product named 'RTX 9090' is offered in CN-HK-01, AS-SGP-02, US-CA-06"
