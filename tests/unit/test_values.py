"""Vendors' decimal strings are checked before anything converts them (resolvers/values.py),
on every path that reads one: Square quantities (webhooks and polled counts), ERP prices
(webhooks and polled items) and Shopify prices (polled listings). The webhook paths are
probed end to end in tests/e2e/test_hostile.py."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from resolvers.connectors.commerce import CommerceConnector
from resolvers.connectors.erp import Payload, parse_item
from resolvers.connectors.pos import counts_to_views
from resolvers.errors import BackendProtocolError
from resolvers.identity import SQUARE_LOCATION, SQUARE_VARIATION, IdentityMap
from resolvers.settings import BackendSettings
from resolvers.values import plain_decimal

NOT_DECIMALS = ["1e30", "1e100000", "1E5", "NaN", "nan", "-Infinity", "sNaN", " 5", "5 ",
                "5\n", "+5", "1_000", "0x10", "\u0663", "\uff15", "1.5e3", "", "-", ".", "5.",
                ".5", "--5", "9" * 21, "1." + "0" * 13]


def test_plain_decimals_only() -> None:
    for bad in NOT_DECIMALS:
        assert plain_decimal(bad) is None, repr(bad)
    for not_text in (None, 5, 5.0, True, b"5", ["5"]):
        assert plain_decimal(not_text) is None, repr(not_text)
    assert plain_decimal("1.000001", places=5) is None
    fine = {"0": 0, "-3": -3, "007": 7, "19.99": Decimal("19.99"), "9" * 20: 10**20 - 1,
            "2.50000": Decimal("2.5"), "-0": 0, "1." + "0" * 12: 1}
    for text, value in fine.items():
        assert plain_decimal(text) == value, text


def _square_count(quantity: Any) -> dict[str, Any]:
    return {"catalog_object_id": "VAR1", "location_id": "LOC1", "state": "IN_STOCK",
            "quantity": quantity, "calculated_at": "2025-06-01T10:00:00Z"}


def test_square_counts_polled_or_pushed() -> None:
    identity = IdentityMap()
    identity.add_sku(SQUARE_VARIATION, "VAR1", "SKU-1")
    identity.add_location(SQUARE_LOCATION, "LOC1", "ST001")
    for bad in [*NOT_DECIMALS, "1.000001", "1.5", 7]:
        with pytest.raises(BackendProtocolError, match="quantity") as refused:
            counts_to_views([_square_count(bad)], identity, "pos")
        assert len(str(refused.value)) < 200
    [view] = counts_to_views([_square_count("7.00000")], identity, "pos")
    assert view.quantities.available == 7


def _erp_item(**changes: Any) -> dict[str, Any]:
    return {"sku": "SKU-1", "itemNumber": "100001", "description": "Mug", "category": "Kitchen",
            "listPrice": "10.00", "cost": "4.50", "currency": "NOK", "safetyStock": 1,
            "updatedAt": "2025-06-01T10:00:00+00:00", **changes}


def test_erp_prices() -> None:
    for key in ("listPrice", "cost"):
        for bad in NOT_DECIMALS:
            with pytest.raises(BackendProtocolError, match=key):
                parse_item(Payload("erp", "item", _erp_item(**{key: bad})), IdentityMap())
    item = parse_item(Payload("erp", "item", _erp_item(listPrice="12.3400")), IdentityMap())
    assert item.list_price == Decimal("12.34")


async def test_shopify_prices() -> None:
    connector = CommerceConnector(BackendSettings(name="commerce", format="shopify",
                                                  base_url="http://unused"), IdentityMap())
    variant = {"id": "gid://shopify/ProductVariant/11", "sku": "SKU-1",
               "title": "Default Title", "inventoryItem": {"id": "gid://shopify/InventoryItem/21"},
               "updatedAt": "2025-06-01T10:00:00Z",
               "product": {"id": "gid://shopify/Product/1", "title": "Mug", "status": "ACTIVE"}}
    try:
        for bad in [*NOT_DECIMALS, None, True, 1e30, float("nan")]:
            with pytest.raises(BackendProtocolError, match="price"):
                connector._listing(variant | {"price": bad}, "NOK")
        listing = connector._listing(variant | {"price": "19.90"}, "NOK")
        assert listing.price == Decimal("19.90")
    finally:
        await connector.aclose()
