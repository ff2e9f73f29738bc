"""Contract tests for the catalogue endpoints: clusters, products, templates and registry auths."""

from __future__ import annotations

import pytest

from gpujobs.novita import CreateInstanceRequest, NovitaClient, NovitaNotFoundError, PortSpec
from gpujobs.novita.sim import seed
from gpujobs.novita.simulator import NovitaSimulator


def test_list_clusters_returns_slug_ids_and_display_codes(novita: NovitaClient) -> None:
    clusters = {cluster.id: cluster for cluster in novita.list_clusters()}

    assert set(clusters) == {"as-sgp-2", "us-ca-6", "cn-hongkong-1", "eu-ger-2"}
    assert clusters["cn-hongkong-1"].name == "CN-HK-01"
    assert clusters["cn-hongkong-1"].region_code == "CN-HK-01"
    assert "H100 SXM 80GB" in clusters["us-ca-6"].available_gpu_types
    assert clusters["cn-hongkong-1"].supports_network_storage is False


def test_product_prices_given_as_ints_or_strings_parse_to_integer_units(novita: NovitaClient) -> None:
    products = {product.id: product for product in novita.list_products()}

    assert products["4090.16c62g"].price_units == 35000
    assert products["4090.16c62g"].price_per_hour_usd == pytest.approx(0.35)
    # Sent as the string "28000" by the simulator, as Novita was seen doing.
    assert products["4090.hd.16c62g"].price_units == 28000
    assert products["4090.hd.16c62g"].price_per_hour_usd == pytest.approx(0.28)
    assert products["4090.16c62g"].spot_price_units == 18000
    assert products["4090.16c62g"].spot_price_per_hour_usd == pytest.approx(0.18)


def test_spot_price_of_zero_means_spot_is_not_offered(novita: NovitaClient) -> None:
    product = next(p for p in novita.list_products() if p.id == "4090.hd.16c62g")

    assert product.spot_price_units is None
    assert product.spot_price_per_hour_usd is None
    assert product.billing_methods == ("onDemand",)


def test_products_sharing_a_name_are_distinct_offers_at_different_prices(novita: NovitaClient) -> None:
    rtx4090 = novita.list_products(product_name="4090")

    assert {p.name for p in rtx4090} == {"RTX 4090 24GB"}
    assert sorted(p.price_units for p in rtx4090) == [28000, 35000, 67000]
    assert len({p.id for p in rtx4090}) == 3


def test_out_of_stock_product_is_reported_unavailable_with_inventory_none(novita: NovitaClient) -> None:
    rtx5090 = novita.list_products(product_name="5090")[0]

    assert rtx5090.available_deploy is False
    assert rtx5090.inventory_state == "none"
    assert rtx5090.in_stock is False


def test_product_in_one_cluster_only_is_absent_from_other_clusters(novita: NovitaClient) -> None:
    assert [p.id for p in novita.list_products(product_name="H100", cluster_id="us-ca-6")] == [
        "H100-80GB.16c128g"
    ]
    assert novita.list_products(product_name="H100", cluster_id="as-sgp-2") == []


def test_stock_filtered_by_cluster_describes_that_cluster(novita: NovitaClient, sim: NovitaSimulator) -> None:
    sim.set_capacity("4090.16c62g", "as-sgp-2", 0)

    in_singapore = novita.list_products(product_name="4090", cluster_id="as-sgp-2")[0]
    in_california = next(p for p in novita.list_products(cluster_id="us-ca-6") if p.id == "4090.16c62g")

    assert (in_singapore.cluster_id, in_singapore.in_stock) == ("as-sgp-2", False)
    assert (in_california.cluster_id, in_california.in_stock) == ("us-ca-6", True)


def test_region_strings_in_every_format_match_their_clusters(novita: NovitaClient) -> None:
    clusters = {cluster.id: cluster for cluster in novita.list_clusters()}
    products = {product.id: product for product in novita.list_products()}

    # "AS-SGP-02 (Singapore)" display strings.
    assert products["4090.16c62g"].offered_in(clusters["as-sgp-2"])
    assert not products["4090.16c62g"].offered_in(clusters["eu-ger-2"])
    # Bare display codes ("EU-GER-02"), bare cluster ids ("eu-ger-2"), and an empty list meaning everywhere.
    assert products["26"].offered_in(clusters["eu-ger-2"])
    assert products["L40S.28c125g"].offered_in(clusters["eu-ger-2"])
    assert not products["L40S.28c125g"].offered_in(clusters["us-ca-6"])
    assert products["3090.16c92g"].regions == ()
    assert all(products["3090.16c92g"].offered_in(cluster) for cluster in clusters.values())


def test_get_template_reads_the_capital_id_and_flattens_port_groups(novita: NovitaClient) -> None:
    template = novita.get_template(seed.PUBLIC_TEMPLATE_ID)

    assert template.id == seed.PUBLIC_TEMPLATE_ID
    assert template.image.startswith("pytorch/pytorch")
    assert template.ports == (PortSpec(8888, "http"), PortSpec(8000, "http"), PortSpec(22, "tcp"))
    assert template.image_auth_id is None
    assert template.created_at is not None and template.created_at.year == 2024


def test_private_template_image_auth_is_an_auth_id_sent_as_image_auth_id(novita: NovitaClient) -> None:
    template = novita.get_template(seed.PRIVATE_TEMPLATE_ID)
    request = CreateInstanceRequest.from_template(
        template, name="from-template", product_id="4090.16c62g", cluster_id="as-sgp-2"
    )

    assert template.image_auth_id == seed.REGISTRY_AUTH_ID
    body = request.to_json()
    assert body["imageAuthId"] == seed.REGISTRY_AUTH_ID
    assert "imageAuth" not in body
    assert body["ports"] == "8080/http"
    assert body["command"] == "python -m worker"
    assert body["rootfsSize"] == 40


def test_get_unknown_template_raises_not_found(novita: NovitaClient) -> None:
    with pytest.raises(NovitaNotFoundError) as caught:
        novita.get_template("999")

    assert caught.value.reason == "TEMPLATE_NOT_FOUND"


def test_registry_credential_helper_returns_username_colon_password(novita: NovitaClient) -> None:
    auths = novita.list_registry_auths()

    assert [auth.id for auth in auths] == [seed.REGISTRY_AUTH_ID]
    assert novita.get_registry_auth_credential(seed.REGISTRY_AUTH_ID) == "acme-bot:acme-registry-pw"


def test_registry_credential_helper_raises_not_found_for_an_unknown_id(novita: NovitaClient) -> None:
    with pytest.raises(NovitaNotFoundError):
        novita.get_registry_auth_credential("no-such-auth")
