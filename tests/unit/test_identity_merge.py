"""Identity resolution (resolvers/identity.py) and merge rules (resolvers/merge.py), on
hand-built records.

GS1 values are the published examples (GS1 General Specifications, EPC Tag Data Standard),
not values computed with the code under test.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from resolvers import merge
from resolvers.identity import (
    ERP_ITEM,
    GLN,
    GTIN,
    SHOPIFY_INVENTORY_ITEM,
    SHOPIFY_LOCATION,
    SHOPIFY_VARIANT,
    SQUARE_LOCATION,
    SQUARE_VARIATION,
    IdentityMap,
    gln_from_sgln,
    gtin_from_epc,
    normalize_gtin,
)
from resolvers.types import (
    ExternalRef,
    LocationRecord,
    LocationType,
    MasterItem,
    NativeLocation,
    OnlineListing,
    Quantities,
    StockView,
    StoreListing,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


# -- builders ------------------------------------------------------------------------------------

def item(sku: str, gtin14: str | None, safety: int = 0, number: str = "") -> MasterItem:
    return MasterItem(sku=sku, item_number=number or f"IN-{sku}", gtin14=gtin14,
                      name=f"Item {sku}", category="Home", list_price=Decimal("10.00"),
                      cost=Decimal("4.50"), currency="NOK", safety_stock=safety, source="erp",
                      as_of=T0)


def location(code: str, kind: LocationType, gln: str | None = None,
             *refs: ExternalRef) -> LocationRecord:
    return LocationRecord(id=code, name=f"Location {code}", type=kind, gln=gln, refs=refs,
                          source="erp", as_of=T0)


def online(sku: str, variant: str, inventory_item: str,
           barcode: str | None = None) -> OnlineListing:
    return OnlineListing(sku=sku, product_id="p" + variant, variant_id=variant,
                         inventory_item_id=inventory_item, title=sku, price=Decimal("9.99"),
                         currency="NOK", status="active", barcode=barcode, source="commerce",
                         as_of=T0)


def store(sku: str | None, variation: str, upc: str | None = None) -> StoreListing:
    return StoreListing(sku=sku, catalog_object_id=variation, upc=upc, name="v",
                        price=Decimal("10.00"), currency="NOK", source="pos", as_of=T0)


def view(sku: str, loc: str, source: str, as_of: datetime = T0, **quantities: int) -> StockView:
    return StockView(sku=sku, location_id=loc, source=source,
                     quantities=Quantities(**quantities), as_of=as_of)


# -- GTINs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("raw", "gtin14"), [
    ("4006381333931", "04006381333931"),  # EAN-13
    ("036000291452", "00036000291452"),  # UPC-A (GTIN-12)
    ("96385074", "00000096385074"),  # EAN-8
    ("80614141123458", "80614141123458"),  # GTIN-14 with indicator digit 8
    (" 4006381333931\n", "04006381333931"),  # surrounding whitespace
    ("urn:epc:idpat:sgtin:0614141.812345.*", "80614141123458"),  # EPC class pattern
    ("urn:epc:id:sgtin:0614141.812345.6789", "80614141123458"),  # serialised EPC
])
def test_gtin_normalised_to_14_digits(raw: str, gtin14: str) -> None:
    assert normalize_gtin(raw) == gtin14


@pytest.mark.parametrize("raw", [
    "4006381333932",  # wrong check digit
    "036000291453",  # wrong check digit (UPC-A)
    "96385075",  # wrong check digit (EAN-8)
    "40063813339",  # 11 digits: no GTIN has that length
    "400638133393100",  # 15 digits
    "40063813339X",
    "",
    "urn:epc:idpat:sgtin:0614141.81234.*",  # company prefix + item ref is not 13 digits
    "urn:epc:id:sgln:0614141.12345.0",  # a location, not an item
])
def test_invalid_gtins_are_rejected(raw: str) -> None:
    assert normalize_gtin(raw) is None


def test_epc_class_forms_give_the_same_gtin() -> None:
    forms = ["urn:epc:idpat:sgtin:0614141.812345.*", "urn:epc:class:lgtin:0614141.812345.LOT7",
             "urn:epc:id:sgtin:0614141.812345.6789"]
    assert {gtin_from_epc(f) for f in forms} == {"80614141123458"}
    assert gtin_from_epc("urn:epc:idpat:sgtin:06141A1.812345.*") is None
    assert gtin_from_epc("urn:epc:idpat:sscc:0614141.1234567890") is None


def test_sgln_gives_the_gln() -> None:
    # TDS example: (414) 0614141123452 (254) 5678 = urn:epc:id:sgln:0614141.12345.5678
    assert gln_from_sgln("urn:epc:id:sgln:0614141.12345.5678") == "0614141123452"
    assert gln_from_sgln("urn:epc:id:sgln:0614141.12345.0") == "0614141123452"
    assert gln_from_sgln("urn:epc:id:sgln:0614141.1234.0") is None  # 11 digits
    assert gln_from_sgln("urn:epc:id:sgtin:0614141.812345.6789") is None
    assert gln_from_sgln("0614141123452") is None


# -- identity map --------------------------------------------------------------------------------

def learned() -> IdentityMap:
    identity = IdentityMap()
    identity.learn_master(
        [item("SKU-1", "04006381333931", number="1001"),
         item("SKU-2", "00036000291452", number="1002")],
        [location("ST1", LocationType.STORE, "0614141123452",
                  ExternalRef("square", "location_id", "SQ-ST1")),
         location("WH1", LocationType.WAREHOUSE, "7012340009004",
                  ExternalRef("shopify", "location_id", "7000"))])
    return identity


def test_every_systems_identifiers_resolve_to_one_sku_and_location() -> None:
    identity = learned()
    identity.learn_online([online("SKU-1", "45001", "47001")])
    # The POS variation has no SKU, only the UPC: it is found through the normalised GTIN.
    identity.learn_store([store(None, "SQVAR2", upc="036000291452")])
    assert identity.sku(ERP_ITEM, "1001") == "SKU-1"
    assert identity.sku(GTIN, "04006381333931") == "SKU-1"
    assert identity.sku(SHOPIFY_INVENTORY_ITEM, "47001") == "SKU-1"
    assert identity.sku(SHOPIFY_VARIANT, "45001") == "SKU-1"
    assert identity.sku(SQUARE_VARIATION, "SQVAR2") == "SKU-2"
    assert identity.location(GLN, "0614141123452") == "ST1"
    assert identity.location(SQUARE_LOCATION, "SQ-ST1") == "ST1"
    assert identity.location(SHOPIFY_LOCATION, "7000") == "WH1"
    # And back to each system's own id, for the batch calls.
    assert identity.native_sku(SQUARE_VARIATION, "SKU-2") == "SQVAR2"
    assert identity.native_sku(SHOPIFY_INVENTORY_ITEM, "SKU-1") == "47001"
    assert identity.native_location(SQUARE_LOCATION, "ST1") == "SQ-ST1"
    assert identity.unmapped == {}


def test_unknown_identifiers_are_reported_not_dropped() -> None:
    identity = learned()
    identity.learn_online([online("GIFTCARD-500", "45999", "47999")])
    identity.learn_store([store(None, "GIFTWRAP")])
    assert identity.sku(SQUARE_VARIATION, "NOPE", seen_in="pos") is None
    assert identity.location(SQUARE_LOCATION, "SQ-ELSEWHERE", seen_in="pos") is None
    reported = identity.unmapped
    assert set(reported) == {
        ("shopify", "variant_id", "45999"), ("square", "catalog_object_id", "GIFTWRAP"),
        ("square", "catalog_object_id", "NOPE"), ("square", "location_id", "SQ-ELSEWHERE")}
    assert "GIFTCARD-500" in reported["shopify", "variant_id", "45999"].reason
    assert reported["square", "catalog_object_id", "NOPE"].seen_in == "pos"
    # The gift card's inventory item maps to nothing either: never guessed onto a SKU.
    assert identity.sku(SHOPIFY_INVENTORY_ITEM, "47999") is None


def test_conflicting_claims_are_reported_and_the_first_kept() -> None:
    identity = learned()
    identity.learn_online([online("SKU-1", "45001", "47001"), online("SKU-2", "45002", "47001")])
    conflict = identity.unmapped["shopify", "inventory_item_id", "47001"]
    assert "SKU-1" in conflict.reason
    assert "SKU-2" in conflict.reason
    assert identity.sku(SHOPIFY_INVENTORY_ITEM, "47001") == "SKU-1"
    identity.add_location(GLN, "0614141123452", "WH1")
    assert "ST1" in identity.unmapped["gs1", "gln", "0614141123452"].reason


def test_native_locations_are_checked_against_the_cross_references() -> None:
    identity = learned()
    identity.check_locations([
        NativeLocation("square", "SQ-ST1", "Store 1"),
        NativeLocation("shopify", "7000", "Warehouse 1"),
        # The WMS keys its sites by GLN: known through the ERP's GLN, so not unmapped.
        NativeLocation("epcis", "7012340009004", "Warehouse 1"),
        NativeLocation("square", "SQ-POPUP", "Pop-up store"),
        NativeLocation("epcis", "7012340009998", "Overflow warehouse"),
    ])
    assert set(identity.unmapped) == {("square", "location_id", "SQ-POPUP"),
                                      ("epcis", "location_id", "7012340009998")}
    assert identity.unmapped["square", "location_id", "SQ-POPUP"].seen_in == "Pop-up store"


def test_mapping_file_links_what_no_catalog_does(tmp_path: Path) -> None:
    mapping = tmp_path / "mapping.toml"
    mapping.write_text('[skus]\n"square:catalog_object_id:GIFTWRAP" = "SKU-2"\n'
                       '[locations]\n"square:location_id:SQ-POPUP" = "ST1"\n')
    identity = IdentityMap()
    identity.load_mapping_file(str(mapping))
    identity.learn_master([item("SKU-2", None)], [location("ST1", LocationType.STORE)])
    identity.learn_store([store(None, "GIFTWRAP")])  # no SKU, no UPC: only the file links it
    identity.check_locations([NativeLocation("square", "SQ-POPUP", "Pop-up store")])
    assert identity.sku(SQUARE_VARIATION, "GIFTWRAP") == "SKU-2"
    assert identity.location(SQUARE_LOCATION, "SQ-POPUP") == "ST1"
    assert identity.native_location(SQUARE_LOCATION, "ST1") == "SQ-POPUP"
    assert identity.unmapped == {}


def test_mapping_file_that_contradicts_a_catalog_is_reported(tmp_path: Path) -> None:
    mapping = tmp_path / "mapping.toml"
    mapping.write_text('[skus]\n"erp:item_number:1001" = "SKU-2"\n')
    identity = IdentityMap()
    identity.load_mapping_file(str(mapping))
    identity.learn_master([item("SKU-1", None, number="1001"), item("SKU-2", None)], [])
    assert "SKU-1" in identity.unmapped["erp", "item_number", "1001"].reason


# -- merge rules ---------------------------------------------------------------------------------

STORE = location("ST1", LocationType.STORE)
STORE2 = location("ST2", LocationType.STORE)
WH1 = location("WH1", LocationType.WAREHOUSE)
WH2 = location("WH2", LocationType.WAREHOUSE)
LOCATIONS = {loc.id: loc for loc in (STORE, STORE2, WH1, WH2)}


def test_on_hand_is_the_sum_of_its_parts_when_the_source_does_not_say() -> None:
    # Square has no on-hand count: it is derived from the states it has.
    level = merge.stock_level(view("SKU-1", "ST1", "pos", available=7, committed=2,
                                   quality_control=1, damaged=3, incoming=5), STORE, 0)
    assert level.on_hand == 7 + 2 + 1 + 3
    assert (level.available, level.committed, level.incoming) == (7, 2, 5)
    assert (level.quality_control, level.damaged) == (1, 3)


def test_on_hand_reported_by_the_source_is_kept() -> None:
    level = merge.stock_level(view("SKU-1", "WH1", "wms", on_hand=50, available=40,
                                   committed=6, quality_control=3, damaged=1), WH1, 2)
    assert level.on_hand == 50
    assert level.on_hand == level.available + level.committed + level.quality_control + \
        level.damaged


def test_missing_quantities_count_as_zero() -> None:
    level = merge.stock_level(view("SKU-1", "ST1", "pos", available=4), STORE, 0)
    assert (level.on_hand, level.committed, level.incoming, level.damaged) == (4, 0, 0, 0)


def test_safety_stock_holds_back_warehouse_stock_only() -> None:
    wh = merge.stock_level(view("SKU-1", "WH1", "wms", on_hand=5, available=5), WH1, 3)
    st = merge.stock_level(view("SKU-1", "ST1", "pos", available=5), STORE, 3)
    assert (wh.safety_stock, wh.sellable) == (3, 2)
    assert (st.safety_stock, st.sellable) == (0, 5)
    low = merge.stock_level(view("SKU-1", "WH1", "wms", on_hand=2, available=2), WH1, 3)
    assert low.sellable == 0


def test_levels_keep_source_and_as_of_and_are_filtered_and_ordered() -> None:
    later = T0 + timedelta(minutes=5)
    views = [view("SKU-1", "WH2", "wms", later, on_hand=1, available=1),
             view("SKU-1", "ST1", "pos", T0, available=2),
             view("SKU-1", "WH1", "wms", T0, on_hand=3, available=3),
             view("SKU-1", "XX9", "wms", T0, on_hand=3, available=3)]  # not in the master
    levels = merge.levels_for(views, LOCATIONS, 0)
    assert [(lv.location.id, lv.source, lv.as_of) for lv in levels] == [
        ("ST1", "pos", T0), ("WH1", "wms", T0), ("WH2", "wms", later)]
    only = merge.levels_for(views, LOCATIONS, 0, location_ids=["WH2", "ST1"],
                            stale_sources={"wms"})
    assert [(lv.location.id, lv.stale) for lv in only] == [("ST1", False), ("WH2", True)]


def test_online_availability_is_warehouse_available_minus_safety_stock() -> None:
    later = T0 + timedelta(hours=1)
    views = [view("SKU-1", "WH1", "wms", T0, on_hand=20, available=10, committed=4,
                  quality_control=5, damaged=1),
             view("SKU-1", "WH2", "wms", later, on_hand=2, available=2),  # below safety stock
             view("SKU-1", "ST1", "pos", later, available=100)]  # stores do not ship online
    levels = merge.levels_for(views, LOCATIONS, 3)
    online_ = merge.availability(merge.Channel.ONLINE, levels)
    assert online_.available == max(0, 10 - 3) + max(0, 2 - 3)
    assert [lv.location.id for lv in online_.by_location] == ["WH1", "WH2"]
    assert online_.sources == ["wms"]
    assert online_.as_of == later


def test_store_availability_is_the_sum_of_store_available() -> None:
    views = [view("SKU-1", "ST1", "pos", T0, available=4, committed=2),
             view("SKU-1", "ST2", "pos", T0, available=0),
             view("SKU-1", "WH1", "wms", T0, on_hand=50, available=50)]
    levels = merge.levels_for(views, LOCATIONS, 3)
    stores = merge.availability(merge.Channel.STORE, levels)
    assert stores.available == 4
    assert [lv.location.id for lv in stores.by_location] == ["ST1", "ST2"]
    assert stores.sources == ["pos"]


def test_availability_of_nothing_is_zero() -> None:
    result = merge.availability(merge.Channel.ONLINE, [])
    assert (result.available, result.by_location, result.sources, result.as_of) == (0, [], [],
                                                                                     None)


def test_systems_of_record() -> None:
    assert merge.STOCK_SYSTEM_OF_RECORD == {LocationType.STORE: "square",
                                            LocationType.WAREHOUSE: "epcis"}
    assert merge.CHANNEL_LOCATIONS == {merge.Channel.ONLINE: LocationType.WAREHOUSE,
                                       merge.Channel.STORE: LocationType.STORE}
