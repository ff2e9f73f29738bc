"""Billing modes gpujobs offers (Novita's `onDemand` and `spot`, §4-§5): which price a product has in each.

Pure functions of a product, so selection compares and caps candidates at the price they will be billed.
"""

from __future__ import annotations

from gpujobs.novita import Product

ON_DEMAND = "onDemand"
SPOT = "spot"


def sold_as(product: Product, billing_mode: str) -> bool:
    """Whether Novita sells the product in this mode: spot needs a spot price (`"0"` means none, §4)."""
    if billing_mode != SPOT:
        return True
    listed = not product.billing_methods or SPOT in product.billing_methods
    return listed and product.spot_price_units is not None


def unit_price(product: Product, billing_mode: str) -> int:
    """Novita units (1/100,000 USD) per GPU-hour in this mode."""
    if billing_mode == SPOT and product.spot_price_units is not None:
        return product.spot_price_units
    return product.price_units
