"""The sync rules (gateway/sync/rules.py): pure functions, no I/O."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from gateway.config import ConfigError, SyncSettings, apply_env, demo_settings, from_mapping
from gateway.sync import rules
from gateway.sync.rules import Rules
from resolvers.types import LocationRecord, LocationType


def location(loc_id: str, kind: LocationType) -> LocationRecord:
    return LocationRecord(id=loc_id, name=loc_id, type=kind, gln=None, refs=(), source="erp",
                          as_of=datetime(2026, 1, 1, tzinfo=UTC))


WH01 = location("WH01", LocationType.WAREHOUSE)
ST001 = location("ST001", LocationType.STORE)


def test_available_to_sell_subtracts_safety_stock_buffer_and_reservations() -> None:
    assert rules.available_to_sell(100, 5, 3, 2) == 90
    assert rules.available_to_sell(4, 5, 0) == 0  # never below zero
    assert rules.available_to_sell(None, 0, 0) == 0  # nobody counted it: nothing promised
    assert rules.available_to_sell(10, -3, -1, -2) == 10  # nonsense inputs hold nothing back
    assert rules.available_to_sell(2**31 - 1, 0, 0) == 2**31 - 1


def test_warehouses_fulfil_online_by_default_stores_when_listed() -> None:
    plain = Rules()
    assert rules.fulfils_online(plain, WH01)
    assert not rules.fulfils_online(plain, ST001)
    listed = Rules(online_stores=frozenset({"ST001"}), exclude_locations=frozenset({"WH01"}))
    assert rules.fulfils_online(listed, ST001)
    assert not rules.fulfils_online(listed, WH01)


def test_per_location_buffer_overrides_the_channel_buffer() -> None:
    r = Rules(buffer=2, location_buffers=(("WH02", 7),))
    assert r.buffer_at("WH01") == 2
    assert r.buffer_at("WH02") == 7


def test_the_shop_drifts_only_when_it_offers_more_than_allowed() -> None:
    assert rules.shop_drifted(11, 10)
    assert not rules.shop_drifted(10, 10)
    assert not rules.shop_drifted(9, 10)  # its own order lowered it: left alone
    assert not rules.shop_drifted(None, 10)


def test_echo_and_needs_write() -> None:
    assert rules.is_echo(7, 7)
    assert not rules.is_echo(6, 7)
    assert not rules.is_echo(7, None)
    assert rules.needs_write(None, 3)
    assert rules.needs_write(4, 3)
    assert not rules.needs_write(3, 3)


def test_item_fields_respect_ownership() -> None:
    shop = rules.item_fields("shopify", "Kettle", Decimal("19.99"))
    assert (shop.name, shop.list_price) == ("Kettle", None)  # the online price is the shop's
    till = rules.item_fields("square", "Kettle", Decimal("19.99"))
    assert (till.name, till.list_price) == ("Kettle", None)  # the shelf price is the POS's
    priced = rules.item_fields("square", "Kettle", Decimal("19.99"), pos_price_from_erp=True)
    assert (priced.name, priced.list_price) == ("Kettle", Decimal("19.99"))
    online = rules.item_fields("shopify", "Kettle", Decimal("19.99"), pos_price_from_erp=True)
    assert (online.name, online.list_price) == ("Kettle", None)  # never the shop's price
    assert rules.item_fields("epcis", "Kettle", Decimal(1)).empty


def test_backoff_grows_is_capped_jittered_and_honours_retry_after() -> None:
    low = [rules.backoff_seconds(n, 0.25, 4.0, None, lambda: 0.0) for n in range(1, 8)]
    high = [rules.backoff_seconds(n, 0.25, 4.0, None, lambda: 0.999) for n in range(1, 8)]
    assert low == [0.125, 0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
    assert all(lo < hi <= 4.0 for lo, hi in zip(low, high, strict=True))
    assert rules.backoff_seconds(1, 0.25, 4.0, 9.0, lambda: 0.0) == 9.0


def test_a_throttled_write_waits_what_the_target_asked_not_a_growing_backoff() -> None:
    assert rules.throttled_seconds(0.4, 0.25, lambda: 0.0) == 0.4
    assert rules.throttled_seconds(0.4, 0.25, lambda: 0.5) == 0.525
    assert rules.throttled_seconds(-1, 0.25, lambda: 0.0) == 0.0


def test_sync_settings_from_toml_and_env() -> None:
    settings = from_mapping({"sync": {"enabled": True, "buffer": 2, "online_stores": ["ST001"],
                                      "location_buffers": {"WH01": 5}}})
    assert settings.sync.enabled
    assert settings.sync.buffer == 2
    assert Rules.of(settings.sync).buffer_at("WH01") == 5
    apply_env(settings, {"RETAILGRAPH_SYNC_ENABLED": "false", "RETAILGRAPH_SYNC_BUFFER": "4",
                         "RETAILGRAPH_SYNC_GRACE_SECONDS": "3"})
    assert not settings.sync.enabled
    assert settings.sync.buffer == 4
    assert settings.sync_grace_seconds == 3  # a gateway setting, not the [sync] section's
    assert demo_settings(environ={}).sync.enabled  # on in the demo
    assert not SyncSettings().enabled
    with pytest.raises(ConfigError, match=r"sync\.bogus: unknown setting"):
        from_mapping({"sync": {"bogus": 1}})
    bad = demo_settings(environ={})
    bad.sync.buffer = -1
    with pytest.raises(ConfigError, match=r"sync\.buffer"):
        bad.validate()
